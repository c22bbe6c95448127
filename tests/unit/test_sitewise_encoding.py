import enum
import json
import math
import re
from collections import Counter, defaultdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_gateway.buffer.base import Record
from edge_gateway.model import Quality, Reading
from edge_gateway.publish.encode.iotcore import Message
from edge_gateway.publish.encode.sitewise import (
    MAX_PAST_NS,
    SiteWiseBatch,
    encode_batch,
    topic_rule_payload,
)

NOW = 1_750_000_000_000_000_000
DAY = 86_400 * 10**9
MINUTE = 60 * 10**9
ENTRY_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def rec(
    seq: int,
    point: str,
    value: object,
    *,
    source: str = "press",
    q: Quality = Quality.GOOD,
    dt_ns: int = 0,
) -> Record:
    status = None if q is Quality.GOOD else "timeout"
    return Record(seq, Reading(source, point, value, q, NOW + dt_ns, None, status))  # type: ignore[arg-type]


def encode(records: list[Record], **kw: Any) -> SiteWiseBatch:
    return encode_batch(records, thing="gw1", now_ns=NOW, **kw)


def doc(msg: Message) -> Any:
    return json.loads(msg.payload)


def tqvs(msg: Message) -> list[tuple[str, int, dict[str, Any], str]]:
    """(alias, timestamp ns, value object, quality) of every value, in payload order."""
    return [
        (
            e["propertyAlias"],
            v["timestamp"]["timeInSeconds"] * 10**9 + v["timestamp"]["offsetInNanos"],
            v["value"],
            v["quality"],
        )
        for e in doc(msg)["entries"]
        for v in e["propertyValues"]
    ]


def only_value(batch: SiteWiseBatch) -> dict[str, Any]:
    (msg,) = batch.messages
    ((_, _, value, _),) = tqvs(msg)
    return value


def reason(batch: SiteWiseBatch) -> str:
    assert not batch.messages
    ((_, why),) = batch.rejected
    return why


def test_small_batch_exact_json() -> None:
    records = [
        rec(1, "line1.temp", 21.5, dt_ns=-1_500_000_000),
        Record(2, Reading("press", "line1.temp", 21.75, Quality.GOOD, NOW, NOW - 400_000_123)),
        rec(3, "line1.count", 7, q=Quality.UNCERTAIN),
        rec(4, "line1.run", value=True),
        rec(5, "line1.state", None, q=Quality.BAD),
        rec(6, "line1.temp", -0.0, q=Quality.BAD, dt_ns=1),
    ]
    batch = encode(records)
    double, integer, boolean = batch.messages
    assert double.topic == "$aws/rules/edge_sitewise_double/gw1/press"
    assert double.payload == (
        b'{"entries":[{"entryId":"1","propertyAlias":"/gw1/press/line1.temp","propertyValues":['
        b'{"timestamp":{"timeInSeconds":1749999998,"offsetInNanos":500000000},"quality":"GOOD",'
        b'"value":{"doubleValue":21.5}},'
        b'{"timestamp":{"timeInSeconds":1749999999,"offsetInNanos":599999877},"quality":"GOOD",'
        b'"value":{"doubleValue":21.75}},'
        b'{"timestamp":{"timeInSeconds":1750000000,"offsetInNanos":1},"quality":"BAD",'
        b'"value":{"doubleValue":-0.0}}]}]}'
    )
    assert (double.first_seq, double.last_seq, double.points) == (1, 6, 3)
    assert integer.topic == "$aws/rules/edge_sitewise_integer/gw1/press"
    assert doc(integer) == {
        "entries": [
            {
                "entryId": "3",
                "propertyAlias": "/gw1/press/line1.count",
                "propertyValues": [
                    {
                        "timestamp": {"timeInSeconds": 1_750_000_000, "offsetInNanos": 0},
                        "quality": "UNCERTAIN",
                        "value": {"integerValue": 7},
                    }
                ],
            }
        ]
    }
    assert (boolean.topic, tqvs(boolean)) == (
        "$aws/rules/edge_sitewise_boolean/gw1/press",
        [("/gw1/press/line1.run", NOW, {"booleanValue": True}, "GOOD")],
    )
    assert [(r.seq, why) for r, why in batch.rejected] == [
        (5, "no value: SiteWise needs a value even for BAD or UNCERTAIN quality (the rule action has no null)")
    ]
    assert batch.expires_ns == [
        NOW - 1_500_000_000 + MAX_PAST_NS - 60 * 10**9,
        NOW + 7 * DAY - MINUTE,
        NOW + 7 * DAY - MINUTE,
    ]


# Values that exercise every branch: in range, out of range, each type, non-ASCII, invalid text.
_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e10, max_value=1e10),
    st.integers(min_value=-(2**33), max_value=2**33),
    st.booleans(),
    st.text(max_size=40),
    st.text(alphabet="ab°温\x01", min_size=0, max_size=1100),
    st.none(),
)
_when = st.sampled_from(["ok", "ok", "ok", "ok", "old", "future"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 14), _values, st.sampled_from(list(Quality)), _when),
        max_size=600,
    ),
    max_bytes=st.integers(min_value=300, max_value=30_000),
)
def test_limits_and_every_record_exactly_once_in_order(rows: list[Any], max_bytes: int) -> None:
    records = []
    for seq, (src, pt, value, quality, when) in enumerate(rows, start=1):
        # Unique, increasing timestamps: a value's timestamp tells which record it is.
        ts = {"ok": NOW - 3600 * 10**9, "old": NOW - 8 * DAY, "future": NOW + 11 * MINUTE}[when] + seq
        records.append(Record(seq, Reading(f"s{src}", f"line.p{pt}", value, quality, ts)))
    seq_of_ts = {r.reading.ts_ns: r.seq for r in records}

    batch = encode(records, max_bytes=max_bytes)

    assert len(batch.expires_ns) == len(batch.messages)
    seen: list[int] = []
    last_seq_of_alias: dict[tuple[str, str], int] = defaultdict(int)
    for msg, expires in zip(batch.messages, batch.expires_ns, strict=True):
        assert len(msg.payload) <= max_bytes
        assert msg.payload.isascii()
        entries = doc(msg)["entries"]
        assert 1 <= len(entries) <= 10
        ids = [e["entryId"] for e in entries]
        assert len(set(ids)) == len(ids)
        assert all(ENTRY_ID.match(i) for i in ids)
        assert all(1 <= len(e["propertyValues"]) <= 10 for e in entries)
        kinds = {next(iter(v["value"])) for e in entries for v in e["propertyValues"]}
        (kind,) = kinds  # one value type per message ...
        assert msg.topic.startswith(f"$aws/rules/edge_sitewise_{kind.removesuffix('Value')}/gw1/")
        source = msg.topic.rsplit("/", 1)[1]  # one source per message
        seqs = []
        for alias, ts, _, _ in tqvs(msg):
            seq = seq_of_ts[ts]
            assert alias.startswith(f"/gw1/{source}/line.p")
            assert records[seq - 1].reading.source == source
            key = (msg.topic, alias)
            assert seq > last_seq_of_alias[key]  # ... and each alias in record order across messages
            last_seq_of_alias[key] = seq
            seqs.append(seq)
        assert (msg.first_seq, msg.last_seq, msg.points) == (min(seqs), max(seqs), len(seqs))
        assert expires == min(records[s - 1].reading.ts_ns for s in seqs) + 7 * DAY - MINUTE
        for e in entries:  # the entry id is the seq of its first value
            first_ts = e["propertyValues"][0]["timestamp"]
            assert int(e["entryId"]) == seq_of_ts[first_ts["timeInSeconds"] * 10**9 + first_ts["offsetInNanos"]]
        seen.extend(seqs)
    rejected = [r.seq for r, why in batch.rejected]
    assert all(why for _, why in batch.rejected)
    assert rejected == sorted(rejected)
    assert Counter(seen + rejected) == Counter(r.seq for r in records)  # each record exactly once
    for r in records:
        if r.reading.ts_ns > NOW or r.reading.ts_ns < NOW - 7 * DAY:
            assert r.seq in rejected


def test_many_aliases_interleaved_still_fill_messages_to_100_values() -> None:
    records = [rec(i, f"line1.p{i % 50}", i * 0.5, dt_ns=-(10**9) + i) for i in range(1, 20_001)]
    batch = encode(records)
    assert [m.points for m in batch.messages] == [100] * 200
    assert all(len(doc(m)["entries"]) == 10 for m in batch.messages)


def test_one_fast_alias_uses_several_entries_per_message() -> None:
    records = [rec(i, "line1.temp", float(i), dt_ns=i) for i in range(1, 251)]
    batch = encode(records)
    assert [m.points for m in batch.messages] == [100, 100, 50]
    first = doc(batch.messages[0])["entries"]
    assert [e["entryId"] for e in first] == [str(1 + 10 * k) for k in range(10)]
    assert {e["propertyAlias"] for e in first} == {"/gw1/press/line1.temp"}
    values = [v["value"]["doubleValue"] for m in batch.messages for e in doc(m)["entries"] for v in e["propertyValues"]]
    assert values == [float(i) for i in range(1, 251)]


def test_sizes_are_exact() -> None:
    records = [rec(i, f"line1.p{i % 3}", f"text {i} °C", dt_ns=i) for i in range(1, 31)]
    (whole,) = encode(records).messages
    size = len(whole.payload)
    assert [m.payload for m in encode(records, max_bytes=size).messages] == [whole.payload]
    smaller = encode(records, max_bytes=size - 1).messages
    assert len(smaller) == 2
    assert all(len(m.payload) <= size - 1 for m in smaller)
    assert sum(m.points for m in smaller) == 30


def test_a_value_that_cannot_fit_alone_is_rejected_with_the_limit() -> None:
    batch = encode([rec(1, "line1.text", "x" * 900)], max_bytes=500)
    assert "more than max_bytes (500)" in reason(batch)


def test_time_window_rejects_old_and_future_readings_naming_the_limit() -> None:
    batch = encode(
        [
            rec(1, "line1.temp", 1.0, dt_ns=-8 * DAY),
            rec(2, "line1.temp", 2.0, dt_ns=11 * MINUTE),
            rec(3, "line1.temp", 3.0),
        ]
    )
    assert [m.points for m in batch.messages] == [1]
    (old, old_why), (future, future_why) = batch.rejected
    assert (old.seq, future.seq) == (1, 2)
    assert "8.00 days old" in old_why
    assert "older than 7 days" in old_why
    assert "11.0 minutes ahead" in future_why
    assert "more than 10 minutes in the future" in future_why


def test_time_window_bounds_with_and_without_margin() -> None:
    def accepted(dt_ns: int, **kw: Any) -> bool:
        return bool(encode([rec(1, "line1.temp", 1.0, dt_ns=dt_ns)], **kw).messages)

    assert accepted(-7 * DAY + MINUTE)
    assert not accepted(-7 * DAY + MINUTE - 1)
    assert accepted(10 * MINUTE - MINUTE)
    assert not accepted(10 * MINUTE - MINUTE + 1)
    assert accepted(-7 * DAY, margin_s=0)
    assert not accepted(-7 * DAY - 1, margin_s=0)
    assert accepted(10 * MINUTE, margin_s=0)
    assert not accepted(10 * MINUTE + 1, margin_s=0)


def test_expiry_is_when_the_oldest_value_leaves_the_window() -> None:
    batch = encode([rec(1, "a", 1.0, dt_ns=-DAY), rec(2, "a", 2.0, dt_ns=-2 * DAY), rec(3, "a", 3.0)], margin_s=30)
    assert batch.expires_ns == [NOW - 2 * DAY + 7 * DAY - 30 * 10**9]
    # Encoding again at that instant still takes it; one nanosecond later it is dead-lettered.
    later = encode_batch([rec(2, "a", 2.0, dt_ns=-2 * DAY)], thing="gw1", now_ns=batch.expires_ns[0], margin_s=30)
    assert later.messages
    later = encode_batch([rec(2, "a", 2.0, dt_ns=-2 * DAY)], thing="gw1", now_ns=batch.expires_ns[0] + 1, margin_s=30)
    assert not later.messages


@pytest.mark.parametrize("value", [2**31 - 1, -(2**31), 0, -1])
def test_int32_values_are_integer_values(value: int) -> None:
    batch = encode([rec(1, "line1.count", value)])
    assert only_value(batch) == {"integerValue": value}
    assert batch.messages[0].topic == "$aws/rules/edge_sitewise_integer/gw1/press"


@pytest.mark.parametrize("value", [2**31, -(2**31) - 1, 2**63])
def test_integers_beyond_32_bits_are_rejected(value: int) -> None:
    why = reason(encode([rec(1, "line1.count", value)]))
    assert f"integer {value} is outside SiteWise's 32-bit integerValue range [-2147483648, 2147483647]" == why


def test_bool_is_not_an_int() -> None:
    batch = encode([rec(1, "run", value=True), rec(2, "run", value=False), rec(3, "count", 1), rec(4, "count", 0)])
    boolean, integer = batch.messages
    assert boolean.topic.startswith("$aws/rules/edge_sitewise_boolean/")
    assert [v for _, _, v, _ in tqvs(boolean)] == [{"booleanValue": True}, {"booleanValue": False}]
    assert b'"booleanValue":true' in boolean.payload
    assert integer.topic.startswith("$aws/rules/edge_sitewise_integer/")
    assert [v for _, _, v, _ in tqvs(integer)] == [{"integerValue": 1}, {"integerValue": 0}]


def test_enum_subclasses_take_their_base_type() -> None:
    class Mode(enum.IntEnum):
        AUTO = 3

    class State(enum.StrEnum):
        RUN = "RUNNING"

    batch = encode([rec(1, "mode", Mode.AUTO), rec(2, "state", State.RUN)])
    assert [v for m in batch.messages for _, _, v, _ in tqvs(m)] == [{"integerValue": 3}, {"stringValue": "RUNNING"}]


def test_nan_is_sent_as_aws_wire_string_and_infinities_are_rejected() -> None:
    batch = encode([rec(1, "x", math.nan), rec(2, "x", math.inf), rec(3, "x", -math.inf)])
    assert b'"value":{"doubleValue":"NaN"}' in batch.messages[0].payload
    assert batch.messages[0].points == 1
    assert [r.seq for r, _ in batch.rejected] == [2, 3]
    assert all("infinite" in why and "[-1e10, 1e10]" in why for _, why in batch.rejected)


def test_double_range_is_plus_minus_1e10() -> None:
    assert only_value(encode([rec(1, "x", 1e10)])) == {"doubleValue": 1e10}
    assert only_value(encode([rec(1, "x", -1e10)])) == {"doubleValue": -1e10}
    assert only_value(encode([rec(1, "x", 5e-324)])) == {"doubleValue": 5e-324}
    assert "outside SiteWise's doubleValue range [-1e10, 1e10]" in reason(
        encode([rec(1, "x", math.nextafter(1e10, 2e10))])
    )
    assert "outside" in reason(encode([rec(1, "x", -1.5e10)]))


def test_string_limits() -> None:
    assert only_value(encode([rec(1, "s", "x" * 1024)])) == {"stringValue": "x" * 1024}
    assert "longer than SiteWise's 1024" in reason(encode([rec(1, "s", "x" * 1025)]))
    # Counted in UTF-16 code units: a character outside the BMP counts twice.
    assert only_value(encode([rec(1, "s", "\U0001f600" * 512)])) == {"stringValue": "\U0001f600" * 512}
    assert "1026 characters" in reason(encode([rec(1, "s", "\U0001f600" * 513)]))
    assert "empty string" in reason(encode([rec(1, "s", "")]))
    assert "control characters" in reason(encode([rec(1, "s", "RUN\r\n")]))
    assert "control characters" in reason(encode([rec(1, "s", "A\x00\x00")]))
    not_utf8 = b"Temp \xb0C".decode("utf-8", errors="surrogateescape")
    assert "not valid Unicode" in reason(encode([rec(1, "s", not_utf8)]))


def test_non_ascii_strings_are_escaped_and_exact() -> None:
    batch = encode([rec(1, "s", "温度 °C")])
    assert batch.messages[0].payload.isascii()
    assert only_value(batch) == {"stringValue": "温度 °C"}


def test_bad_and_uncertain_readings_keep_their_quality_but_need_a_value() -> None:
    batch = encode(
        [
            rec(1, "p", 1.5, q=Quality.BAD),
            rec(2, "p", 2.5, q=Quality.UNCERTAIN),
            rec(3, "p", None, q=Quality.BAD),
            rec(4, "p", None, q=Quality.UNCERTAIN),
        ]
    )
    assert [q for _, _, _, q in tqvs(batch.messages[0])] == ["BAD", "UNCERTAIN"]
    assert [(r.seq, "no value" in why) for r, why in batch.rejected] == [(3, True), (4, True)]


def test_unsupported_value_types_are_rejected() -> None:
    assert "bytes has no SiteWise type" in reason(encode([rec(1, "p", b"\x01")]))


def test_alias_and_topic_templates() -> None:
    batch = encode(
        [rec(1, "/plant/line1/temp", 1.0)],
        alias_template="{point}",
        topic_template="$aws/rules/site_{type}/edge/{thing}/{source}",
    )
    assert batch.messages[0].topic == "$aws/rules/site_double/edge/gw1/press"
    assert tqvs(batch.messages[0])[0][0] == "/plant/line1/temp"
    assert "longer than SiteWise's 1000" in reason(
        encode([rec(1, "p", 1.0)], alias_template="/" + "a" * 1000 + "/{point}")
    )
    assert "control characters" in reason(encode([rec(1, "p", 1.0)], alias_template="/{point}\t"))


def test_alias_refusal_is_per_record_and_does_not_stop_others() -> None:
    batch = encode(
        [rec(1, "p", 1.0), rec(2, "q", 2.0)],
        alias_template="{point}",
    )
    assert len(batch.messages) == 1  # "p" and "q" are fine aliases (SiteWise needs no leading slash)
    batch = encode([rec(1, "ok", 1.0), rec(2, "x" * 1001, 2.0), rec(3, "ok", 3.0)], alias_template="{point}")
    assert [r.seq for r, _ in batch.rejected] == [2]
    assert batch.messages[0].points == 2


@pytest.mark.parametrize(
    "kw", [{"max_entries": 11}, {"max_entries": 0}, {"max_values_per_entry": 11}, {"margin_s": -1}, {"margin_s": 600}]
)
def test_limits_beyond_aws_are_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"max_entries|margin_s"):
        encode([rec(1, "p", 1.0)], **kw)


def test_smaller_slot_layouts_are_honoured() -> None:
    records = [rec(i, f"p{i % 4}", float(i), dt_ns=i) for i in range(1, 101)]
    batch = encode(records, max_entries=3, max_values_per_entry=5)
    assert all(len(doc(m)["entries"]) <= 3 for m in batch.messages)
    assert all(len(e["propertyValues"]) <= 5 for m in batch.messages for e in doc(m)["entries"])
    assert sum(m.points for m in batch.messages) == 100


# --- the IoT rule: its substitution templates must pick every value of a message -------------------------

_SLOT = re.compile(r"^\$\{(.*)\}$")
_GET = re.compile(r"^get\((.*), (\d+)\)(.*)$")


def _evaluate(expr: str, payload: Any) -> Any:
    """The subset of AWS IoT SQL the rule uses: get(<expr>, <index>) and .field paths from the payload."""
    m = _GET.match(expr)
    if m:
        inner, index, path = m.groups()
        array = _evaluate(inner, payload)
        node = array[int(index)] if isinstance(array, list) and int(index) < len(array) else None
    else:
        node, path = payload, "." + expr
    for field in filter(None, path.split(".")):
        node = node.get(field) if isinstance(node, dict) else None
    return node


def _substitute(template: Any, payload: Any) -> Any:
    """Fill every ${...}; like the rule action, drop values and entries a substitution left empty."""
    if isinstance(template, dict):
        out = {k: _substitute(v, payload) for k, v in template.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(template, list):
        return [x for x in (_substitute(t, payload) for t in template) if x]
    m = _SLOT.match(template)
    if not m:
        return template
    value = _evaluate(m.group(1), payload)
    if value is None:
        return None
    return json.dumps(value) if isinstance(value, bool) else str(value)  # the action takes strings


def _as_strings(entries: list[Any]) -> list[Any]:
    def text(v: Any) -> str:
        return json.dumps(v) if isinstance(v, bool) else str(v)

    return [
        {
            "entryId": e["entryId"],
            "propertyAlias": e["propertyAlias"],
            "propertyValues": [
                {
                    "timestamp": {k: text(v) for k, v in pv["timestamp"].items()},
                    "quality": pv["quality"],
                    "value": {k: text(v) for k, v in pv["value"].items()},
                }
                for pv in e["propertyValues"]
            ],
        }
        for e in entries
    ]


@pytest.mark.parametrize(
    "values", [[float(i) / 3 for i in range(1, 301)], [True, False] * 70, list(range(-50, 60)), ["a", "b°"] * 30]
)
def test_rule_templates_pick_every_value_of_every_message(values: list[Any]) -> None:
    records = [rec(i, f"p{i % 7}", v, dt_ns=i) for i, v in enumerate(values, start=1)]
    batch = encode(records)
    assert sum(m.points for m in batch.messages) == len(values)
    for msg in batch.messages:
        payload = doc(msg)
        vtype = next(iter(payload["entries"][0]["propertyValues"][0]["value"])).removesuffix("Value")
        rule = topic_rule_payload(vtype, "arn:aws:iam::123456789012:role/edge-sitewise")
        (action,) = (a["iotSiteWise"] for a in rule["actions"])
        assert action["roleArn"] == "arn:aws:iam::123456789012:role/edge-sitewise"
        request = _substitute(action["putAssetPropertyValueEntries"], payload)
        assert request == _as_strings(payload["entries"])


def test_rule_has_ten_by_ten_slots_for_basic_ingest() -> None:
    rule = topic_rule_payload("integer", "arn:aws:iam::123456789012:role/r")
    assert rule["sql"] == "SELECT *"
    assert rule["awsIotSqlVersion"] == "2016-03-23"
    (action,) = rule["actions"]
    slots = action["iotSiteWise"]["putAssetPropertyValueEntries"]
    assert len(slots) == 10
    assert all(len(s["propertyValues"]) == 10 for s in slots)
    assert slots[3]["propertyValues"][7] == {
        "timestamp": {
            "timeInSeconds": "${get(get(entries, 3).propertyValues, 7).timestamp.timeInSeconds}",
            "offsetInNanos": "${get(get(entries, 3).propertyValues, 7).timestamp.offsetInNanos}",
        },
        "quality": "${get(get(entries, 3).propertyValues, 7).quality}",
        "value": {"integerValue": "${get(get(entries, 3).propertyValues, 7).value.integerValue}"},
    }
    assert slots[3]["entryId"] == "${get(entries, 3).entryId}"
    assert slots[3]["propertyAlias"] == "${get(entries, 3).propertyAlias}"
