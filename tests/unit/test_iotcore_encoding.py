import json
import math

from edge_gateway.buffer.base import Record
from edge_gateway.model import Quality, Reading
from edge_gateway.publish.encode.iotcore import encode_batch

T0 = 1_750_000_000_000_000_000


def rec(seq: int, source: str, point: str, value: object, *, q: Quality = Quality.GOOD, dt_ms: int = 0) -> Record:
    status = None if q is Quality.GOOD else 0x80000000
    return Record(seq, Reading(source, point, value, q, T0 + dt_ms * 1_000_000, None, status))  # type: ignore[arg-type]


def test_one_message_per_source_grouped_by_alias_with_offsets() -> None:
    records = [
        rec(1, "a", "a.c", 1, dt_ms=0),
        rec(2, "b", "b.t", 2.5, dt_ms=3),
        rec(3, "a", "a.c", 2, dt_ms=10),
        rec(4, "a", "a.s", "RUN", q=Quality.BAD, dt_ms=11),
    ]
    msgs = encode_batch(records, thing="gw1", topic_template="dt/{thing}/{source}", max_bytes=128_000)
    assert [m.topic for m in msgs] == ["dt/gw1/a", "dt/gw1/b"]
    a = json.loads(msgs[0].payload)
    assert a == {
        "v": 1,
        "gw": "gw1",
        "src": "a",
        "seq": [1, 4],
        "n": 3,
        "t0": T0 // 1_000_000,
        "p": {"a.c": [[0, 1], [10, 2]], "a.s": [[11, "RUN", "BAD", 0x80000000]]},
    }
    assert (msgs[0].first_seq, msgs[0].last_seq, msgs[0].points) == (1, 4, 3)
    assert json.loads(msgs[1].payload)["p"] == {"b.t": [[0, 2.5]]}


def test_messages_never_exceed_the_limit_and_keep_every_point_in_order() -> None:
    records = [rec(i, "s", f"s.p{i % 7}", i * 1.5, dt_ms=i) for i in range(1, 20_001)]
    msgs = encode_batch(records, thing="gw", topic_template="dt/{thing}/{source}", max_bytes=4000)
    assert len(msgs) > 10
    assert all(len(m.payload) <= 4000 for m in msgs)
    seen: list[int] = []
    for m in msgs:
        doc = json.loads(m.payload)
        assert doc["n"] == m.points
        for entries in doc["p"].values():
            seen.extend(doc["t0"] + dt for dt, _ in entries)
    assert sorted(seen) == [T0 // 1_000_000 + i for i in range(1, 20_001)]
    assert sum(m.points for m in msgs) == 20_000


def test_full_messages_are_close_to_the_limit() -> None:
    records = [rec(i, "s", "s.x", i, dt_ms=i) for i in range(1, 50_001)]
    msgs = encode_batch(records, thing="gw", topic_template="t/{source}", max_bytes=126_000)
    assert all(120_000 < len(m.payload) <= 126_000 for m in msgs[:-1])


def test_non_finite_floats_and_oversized_values_stay_valid_json() -> None:
    records = [
        rec(1, "s", "s.nan", math.nan),
        rec(2, "s", "s.inf", -math.inf),
        rec(3, "s", "s.big", "x" * 5000),
    ]
    msgs = encode_batch(records, thing="gw", topic_template="t/{source}", max_bytes=2000)
    assert all(len(m.payload) <= 2000 for m in msgs)
    doc = {"p": {k: v for m in msgs for k, v in json.loads(m.payload)["p"].items()}}
    assert doc["p"]["s.nan"] == [[0, "NaN"]]
    assert doc["p"]["s.inf"] == [[0, "-Infinity"]]
    assert doc["p"]["s.big"][0][1:3] == [None, "BAD"]
    assert "too large" in doc["p"]["s.big"][0][3]


def test_fast_number_path_is_exact_json() -> None:
    values = [0, -1, 2**53 + 1, 0.1, -0.0, 1e16, 1.5e-7, 123456789.123456, True, False, None, 'a"b\\c']
    records = [rec(i + 1, "s", f"s.v{i}", v, dt_ms=i) for i, v in enumerate(values)]
    (msg,) = encode_batch(records, thing="gw", topic_template="t/{source}", max_bytes=128_000)
    doc = json.loads(msg.payload)
    decoded = [doc["p"][f"s.v{i}"][0][1] for i in range(len(values))]
    assert decoded == values
    assert [type(v) for v in decoded] == [type(v) for v in values]


def test_non_ascii_strings_never_push_a_message_over_the_limit() -> None:
    # "°C" and CJK text are 2-3 bytes per character in UTF-8; a string that was not UTF-8 at the PLC
    # arrives with lone surrogates (asyncua decodes with surrogateescape) and must not fail the batch.
    not_utf8 = b"Temp \xb0C".decode("utf-8", errors="surrogateescape")
    values = ["温度 °C 压力" * 20, not_utf8]
    records = [rec(i, "s", f"s.t{i % 3}", values[i % 2], dt_ms=i) for i in range(1, 3001)]
    msgs = encode_batch(records, thing="gw", topic_template="dt/{thing}/{source}", max_bytes=8000)
    assert all(len(m.payload) <= 8000 for m in msgs)
    got = [v for m in msgs for entries in json.loads(m.payload)["p"].values() for _, v in entries]
    assert sorted(got) == sorted(values[i % 2] for i in range(1, 3001))
    assert all(m.payload.isascii() for m in msgs)
