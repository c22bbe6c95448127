"""The record format: codec round trips, the CRC chain, and buffers written in format 1 (JSON) by the code
before format 2 (binary), which must open and drain after an upgrade, in order, exactly once.

Format 1 segments come from two places: a golden segment and ledger the pre-upgrade code wrote (bytes kept
verbatim below), and a writer kept here that frames records as that code did, for larger backlogs.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_gateway.buffer.codec import (
    CodecError,
    decode_frames,
    decode_reading,
    decode_readings,
    encode_reading,
    encode_reading_json,
)
from edge_gateway.buffer.disk import HEADER, LEDGER, QUARANTINE, SUFFIX, DiskBuffer, chain, frame, segment_format
from edge_gateway.model import Quality, Reading, Value
from tests.unit.test_buffer_stateful import NOT_UTF8, READINGS, assert_same

T = 1_700_000_000_000_000_000

# ---- codec ------------------------------------------------------------------------------------------------


def opc(value: object) -> Value:
    """An OPC UA array or structure as the source hands it over (a list or dict, outside ``Value``)."""
    return cast("Value", value)


EDGE_READINGS = [
    Reading("plc", "plc.temp", 21.5, Quality.GOOD, T, T - 5),
    Reading("plc", "plc.count", 2**64 - 1, Quality.GOOD, T),  # a Modbus uint64: beyond i64
    Reading("plc", "plc.neg", -(2**200), Quality.UNCERTAIN, T, None, 7),
    Reading("plc", "plc.min", -(2**63), Quality.GOOD, T),
    Reading("plc", "plc.flag", value=False, quality=Quality.BAD, gateway_ts_ns=T, status="modbus exception 2"),
    Reading("opc", "opc.text", NOT_UTF8, Quality.GOOD, T, T),  # lone surrogates
    Reading("opc", "opc.emoji", "\U0001f600 \ud83d\ude00", Quality.GOOD, T),  # a pair and its halves as code points
    Reading("opc", "opc.array", opc([1.5, -2, "x", None, [True]]), Quality.GOOD, T, T, 2**40),
    Reading("opc", "opc.struct", opc({"a": 1, "b": [NOT_UTF8]}), Quality.GOOD, T),
    Reading("opc", "opc.nan", math.nan, Quality.BAD, T, None, 0x80310000),
    Reading("opc", "opc.inf", -math.inf, Quality.GOOD, T),
    Reading("opc", "opc.zero", -0.0, Quality.GOOD, T),
    Reading("opc", "opc.none", None, Quality.BAD, T, None, NOT_UTF8),
    Reading("opc", "opc.bigstatus", 1, Quality.GOOD, T, None, 2**70),
    Reading("s" * 300, "", 1.0, Quality.GOOD, 0, 0),  # a long source, an empty point
    Reading("plc", "plc.future", 1.0, Quality.GOOD, 2**64),  # beyond i64: stored as JSON
    Reading("plc", "plc.old", 1.0, Quality.GOOD, T, -(2**63) - 1),
]


@pytest.mark.parametrize("r", EDGE_READINGS, ids=lambda r: r.point or "empty")
def test_every_kind_of_reading_round_trips_exactly(r: Reading) -> None:
    assert_same(0, decode_reading(encode_reading(r)), r)
    assert_same(0, decode_reading(encode_reading_json(r)), r)


def test_timestamps_beyond_i64_fall_back_to_json_and_everything_else_is_binary() -> None:
    kinds = {r.point: encode_reading(r)[:1] == b"[" for r in EDGE_READINGS}
    assert {p for p, is_json in kinds.items() if is_json} == {"plc.future", "plc.old"}


@given(st.lists(READINGS, max_size=20))
@settings(max_examples=200, deadline=None)
def test_framed_runs_decode_in_one_go_and_check_with_one_crc(readings: list[Reading]) -> None:
    first = 1 + len(readings) * 7919 % 10_000  # the chain depends on the seq: start anywhere
    data = b"".join(frame(first + i, encode_reading(r)) for i, r in enumerate(readings))
    out: list[Reading] = []
    assert decode_frames(data, 0, len(data), 1000, out) == len(data)
    for i, (got, want) in enumerate(zip(out, readings, strict=True)):
        assert_same(first + i, got, want)
    assert zlib.crc32(data, chain(first - 1)) == chain(first + len(readings) - 1)
    mixed = [encode_reading_json(r) if i % 2 else encode_reading(r) for i, r in enumerate(readings)]
    for i, (got, want) in enumerate(zip(decode_readings(mixed), readings, strict=True)):
        assert_same(i, got, want)


def test_decode_frames_stops_before_a_record_it_does_not_hold_whole() -> None:
    data = frame(1, encode_reading(EDGE_READINGS[0])) + frame(2, encode_reading(EDGE_READINGS[7]))
    first_end = HEADER.size + HEADER.unpack_from(data)[0]
    for cut in range(len(data)):
        out: list[Reading] = []
        stopped = decode_frames(data[:cut], 0, cut, 10, out)
        assert (stopped, len(out)) == ((first_end, 1) if cut >= first_end else (0, 0))
    out = []
    assert decode_frames(data, 0, len(data), 1, out) == first_end  # count is a limit too


def test_a_record_that_does_not_decode_raises_with_its_offset() -> None:
    good = frame(1, encode_reading(EDGE_READINGS[0]))
    for payload in (b"\x03" + bytes(20), b"\x60" + bytes(8), b"[1, 2]", bytes([0x60]) + bytes(16) + b"\x05ab"):
        out: list[Reading] = []
        data = good + frame(2, payload)
        with pytest.raises(CodecError) as caught:
            decode_frames(data, 0, len(data), 10, out)
        assert caught.value.args[1] == len(good)
        assert len(out) == 1


def test_a_moved_record_fails_its_check() -> None:
    a, b = frame(5, encode_reading(EDGE_READINGS[0])), frame(6, encode_reading(EDGE_READINGS[0]))
    assert a[:-4] == b[:-4]  # same reading: only the CRC tells the positions apart
    assert zlib.crc32(a + b, chain(4)) == chain(6)
    assert zlib.crc32(b + a, chain(4)) != chain(6)
    assert zlib.crc32(a, chain(5)) != chain(6)


# ---- format 1 buffers: what the code before format 2 left on disk --------------------------------------------

# Written by the pre-upgrade DiskBuffer: two appends (readings 1-3, 4-6) into one segment, seq 1 acked.
GOLDEN_SEGMENT = base64.b64decode(
    "RgAAAF4tq1kBAAAAAAAAAFsicGxjIiwicGxjLnRlbXAiLDIxLjUsMCwxNzAwMDAwMDAwMDAwMDAwMDAxLDE3MDAwMDAwMDAwMDAwMDAwMDAs"
    "bnVsbF1IAAAA5v52oAIAAAAAAAAAWyJwbGMiLCJwbGMuY291bnQiLDE4NDQ2NzQ0MDczNzA5NTUxNjE1LDAsMTcwMDAwMDAwMDAwMDAwMDAw"
    "MixudWxsLG51bGxdTAAAAJbQmWkDAAAAAAAAAFsicGxjIiwicGxjLmZsYWciLHRydWUsMSwxNzAwMDAwMDAwMDAwMDAwMDAzLDE3MDAwMDAw"
    "MDAwMDAwMDAwMDMsMTA3Mzc0MTgyNF0+AAAADXUoYAQAAAAAAAAAWyJvcGMiLCJvcGMudGV4dCIsIlRlbXAg7bKwQyIsMCwxNzAwMDAwMDAw"
    "MDAwMDAwMDA0LG51bGwsbnVsbF1PAAAAoLXcOgUAAAAAAAAAWyJvcGMiLCJvcGMuYXJyYXkiLFsxLjUsLTIsIngiXSwwLDE3MDAwMDAwMDAw"
    "MDAwMDAwMDUsMTcwMDAwMDAwMDAwMDAwMDAwNSxudWxsXUgAAABJyK74BgAAAAAAAABbIm9wYyIsIm9wYy5uYW4iLE5hTiwyLDE3MDAwMDAw"
    "MDAwMDAwMDAwMDYsbnVsbCwiQmFkQ29tbXVuaWNhdGlvbkVycm9yIl0="
)
GOLDEN_LEDGER = b'{"format":1,"next_seq":7,"destinations":{"cloud":{"acked_through":1,"acked_ranges":[]}}}'
GOLDEN_READINGS = [
    Reading("plc", "plc.temp", 21.5, Quality.GOOD, T + 1, T, None),
    Reading("plc", "plc.count", 2**64 - 1, Quality.GOOD, T + 2, None, None),
    Reading(
        "plc", "plc.flag", value=True, quality=Quality.UNCERTAIN, gateway_ts_ns=T + 3, source_ts_ns=T + 3, status=2**30
    ),
    Reading("opc", "opc.text", NOT_UTF8, Quality.GOOD, T + 4, None, None),
    Reading("opc", "opc.array", opc([1.5, -2, "x"]), Quality.GOOD, T + 5, T + 5, None),
    Reading("opc", "opc.nan", math.nan, Quality.BAD, T + 6, None, "BadCommunicationError"),
]
V1_HEADER = struct.Struct("<IIQ")


def v1_record(seq: int, r: Reading) -> bytes:
    """A record as the pre-upgrade code framed it: length, CRC of (seq + payload), seq; a JSON payload."""
    payload = encode_reading_json(r)
    return V1_HEADER.pack(len(payload), zlib.crc32(payload, zlib.crc32(struct.pack("<Q", seq))), seq) + payload


def write_v1_segments(directory: Path, runs: list[range]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for run in runs:
        data = b"".join(v1_record(s, v1_reading(s)) for s in run)
        (directory / f"{run.start:020d}{SUFFIX}").write_bytes(data)


def v1_reading(seq: int) -> Reading:
    value = opc([float(seq), seq * 1.5, 2**64 - seq, f"text {seq}", seq % 2 == 0, None][seq % 6])
    return Reading("plc", f"plc.p{seq % 7}", value, Quality.GOOD, T + seq, T if seq % 3 else None, None)


def test_the_json_format_is_the_one_the_pre_upgrade_code_wrote() -> None:
    rebuilt = v1_record(1, GOLDEN_READINGS[0])
    assert GOLDEN_SEGMENT.startswith(rebuilt)
    assert segment_format(GOLDEN_SEGMENT, 1) == 1
    assert segment_format(frame(1, encode_reading(GOLDEN_READINGS[0])), 1) == 2
    assert segment_format(b"", 1) == 2
    assert segment_format(GOLDEN_SEGMENT, 2) == 2  # not its first record: not format 1 (nor a valid 2)


async def test_a_buffer_written_before_the_upgrade_drains_in_order_exactly_once(tmp_path: Path) -> None:
    (tmp_path / "00000000000000000001.seg").write_bytes(GOLDEN_SEGMENT)
    (tmp_path / LEDGER).write_bytes(GOLDEN_LEDGER)
    buf = DiskBuffer(tmp_path, ["cloud"])
    got = await buf.read("cloud", 3, 0)
    got += await buf.read("cloud", 100, 0)
    assert [r.seq for r in got] == [2, 3, 4, 5, 6]  # seq 1 was acked before the upgrade
    for r in got:
        assert_same(r.seq, r.reading, GOLDEN_READINGS[r.seq - 1])
    assert await buf.read("cloud", 100, 0) == []
    await buf.append([GOLDEN_READINGS[0], GOLDEN_READINGS[3]])  # into a new, format 2 segment
    assert [r.seq for r in await buf.read("cloud", 100, 0)] == [7, 8]
    assert (tmp_path / "00000000000000000001.seg").read_bytes() == GOLDEN_SEGMENT  # never appended to
    assert segment_format((tmp_path / "00000000000000000007.seg").read_bytes(), 7) == 2
    buf.ack("cloud", 2, 6)
    await buf.maintain()
    assert not (tmp_path / "00000000000000000001.seg").exists()  # settled: deleted as any segment
    await buf.close()
    again = DiskBuffer(tmp_path, ["cloud"])
    got = await again.read("cloud", 100, 0)
    await again.append([GOLDEN_READINGS[1]])
    got += await again.read("cloud", 100, 0)
    await again.close()
    assert [(r.seq, r.reading.point) for r in got] == [(7, "plc.temp"), (8, "opc.text"), (9, "plc.count")]


async def test_a_large_format_1_backlog_with_acked_ranges_drains_across_formats_and_reopens(tmp_path: Path) -> None:
    runs = [range(1, 301), range(301, 650), range(650, 1001)]
    write_v1_segments(tmp_path, runs)
    acked = {"acked_through": 40, "acked_ranges": [[100, 180], [302, 302], [640, 660]]}
    ledger = {"format": 1, "next_seq": 1001, "destinations": {"cloud": acked}}
    (tmp_path / LEDGER).write_text(json.dumps(ledger))
    with (tmp_path / f"{650:020d}{SUFFIX}").open("ab") as f:  # the old code was killed mid-write
        f.write(v1_record(1001, v1_reading(1001))[:30])
    buf = DiskBuffer(tmp_path, ["cloud", "archive"], segment_bytes=4096)
    await buf.append([v1_reading(s) for s in range(1001, 1101)])
    seen: list[int] = []
    while more := await buf.read("cloud", 37, 0):  # small reads: cursors resume inside segments
        seen += [r.seq for r in more]
        for r in more:
            assert_same(r.seq, r.reading, v1_reading(r.seq))
    unacked = [s for s in range(41, 1101) if not (100 <= s <= 180 or s == 302 or 640 <= s <= 660)]
    assert seen == unacked
    assert buf.stats().dropped == {"full": 0, "expired": 0, "corrupt": 0, "io_error": 0}
    buf.ack("cloud", 41, 700)
    buf._close_fd()  # killed: no close(), the acks above are not persisted
    again = DiskBuffer(tmp_path, ["cloud", "archive"], segment_bytes=4096)
    assert [r.seq for r in await again.read("cloud", 10_000, 0)] == unacked
    # Added at the upgrade, so it started at the head then: it gets what was appended since, in format 2.
    archive = await again.read("archive", 10_000, 0)
    await again.close()
    assert [r.seq for r in archive] == list(range(1001, 1101))


async def test_a_damaged_format_1_segment_is_quarantined_and_the_rest_flows(tmp_path: Path) -> None:
    write_v1_segments(tmp_path, [range(1, 51), range(51, 101)])
    first = tmp_path / f"{1:020d}{SUFFIX}"
    data = bytearray(first.read_bytes())
    at = 0
    for _ in range(20):
        at += V1_HEADER.size + V1_HEADER.unpack_from(data, at)[0]
    data[at + V1_HEADER.size + 3] ^= 0xFF  # record 21
    first.write_bytes(bytes(data))
    buf = DiskBuffer(tmp_path, ["cloud"])
    got = [r.seq for r in await buf.read("cloud", 1000, 0)]
    stats = buf.stats()
    await buf.close()
    assert got == list(range(1, 21)) + list(range(51, 101))
    assert stats.dropped["corrupt"] == 50  # the segment goes; what was handed out of it was never acked
    assert len(list((tmp_path / QUARANTINE).iterdir())) == 1


# ---- format 2 damage found while reading ---------------------------------------------------------------------


def _r(i: int) -> Reading:
    return Reading("plc", "plc.counter", float(i), Quality.GOOD, T + i)


async def _two_segments(tmp_path: Path) -> tuple[Path, list[int]]:
    buf = DiskBuffer(tmp_path, ["cloud"], segment_bytes=2000)
    for i in range(1, 101, 25):
        await buf.append([_r(j) for j in range(i, i + 25)])
    await buf.close()
    segments = sorted(tmp_path.glob("*" + SUFFIX))
    assert len(segments) >= 2
    return segments[0], [int(p.stem) for p in segments]


def _offset_of(data: bytes | bytearray, index: int) -> int:
    at = 0
    for _ in range(index):
        at += HEADER.size + HEADER.unpack_from(data, at)[0]
    return at


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda data, at: data.__setitem__(at + HEADER.size + 3, data[at + HEADER.size + 3] ^ 0x10), "fails its CRC"),
        (lambda data, at: data.__setitem__(at + 2, 0x7F), "has a bad length"),
    ],
    ids=["payload", "length"],
)
async def test_damage_in_a_sealed_segment_hands_out_what_precedes_it_then_quarantines(
    tmp_path: Path, damage: Callable[[bytearray, int], None], why: str, caplog: pytest.LogCaptureFixture
) -> None:
    segment, firsts = await _two_segments(tmp_path)
    data = bytearray(segment.read_bytes())
    damage(data, _offset_of(data, 10))
    segment.write_bytes(bytes(data))
    buf = DiskBuffer(tmp_path, ["cloud"], segment_bytes=2000)
    got = [r.seq for r in await buf.read("cloud", 1000, 0)]
    dropped = buf.stats().dropped["corrupt"]
    await buf.close()
    assert got == list(range(1, 11)) + list(range(firsts[1], 101))  # what precedes the damage is handed out
    assert dropped == firsts[1] - 1  # handed out but not acked: gone with the segment, counted
    assert why in caplog.text


async def test_a_record_that_checks_out_but_does_not_decode_is_quarantined_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    segment, firsts = await _two_segments(tmp_path)
    data = segment.read_bytes()
    at = _offset_of(data, 5)
    end = _offset_of(data, 6)
    segment.write_bytes(data[:at] + frame(6, b"\x03not a payload") + data[end:])  # a newer or unknown layout
    buf = DiskBuffer(tmp_path, ["cloud"], segment_bytes=2000)
    got = [r.seq for r in await buf.read("cloud", 1000, 0)]
    await buf.close()
    assert got == [1, 2, 3, 4, 5, *range(firsts[1], 101)]
    assert "record 6 cannot be decoded" in caplog.text


# ---- the ledger's checkpoint of the active segment -------------------------------------------------------------


def _ledger(path: Path) -> dict[str, object]:
    doc: dict[str, object] = json.loads((path / LEDGER).read_text())
    return doc


async def test_a_stale_checkpoint_is_used_as_a_start_and_the_records_after_it_are_walked(tmp_path: Path) -> None:
    buf = DiskBuffer(tmp_path, ["cloud"])
    await buf.append([_r(i) for i in range(1, 31)])
    await buf.maintain()
    checkpoint = _ledger(tmp_path)["active"]
    await buf.append([_r(i) for i in range(31, 41)])  # after the checkpoint
    buf._close_fd()  # killed: the ledger still holds the checkpoint at 30
    segment = max(tmp_path.glob("*" + SUFFIX))
    assert checkpoint == [1, _offset_of(segment.read_bytes(), 30), 30]
    with segment.open("ab") as f:
        f.write(frame(41, encode_reading(_r(41)))[:25])  # and a torn write
    again = DiskBuffer(tmp_path, ["cloud"])
    got = await again.read("cloud", 100, 0)
    await again.close()
    assert [(r.seq, r.reading.value) for r in got] == [(i, float(i)) for i in range(1, 41)]
    assert _ledger(tmp_path)["active"] == [1, segment.stat().st_size, 40]


@pytest.mark.parametrize("active", [[1, 10**9, 30], [1, 100, 30], [1, 0, 5], [7, 0, 6], "junk"])
async def test_a_checkpoint_that_does_not_check_out_is_ignored(tmp_path: Path, active: object) -> None:
    buf = DiskBuffer(tmp_path, ["cloud"])
    await buf.append([_r(i) for i in range(1, 41)])
    await buf.close()
    doc = _ledger(tmp_path) | {"active": active}
    (tmp_path / LEDGER).write_text(json.dumps(doc))
    again = DiskBuffer(tmp_path, ["cloud"])
    got = [r.seq for r in await again.read("cloud", 100, 0)]
    await again.append([_r(41)])
    got += [r.seq for r in await again.read("cloud", 100, 0)]
    await again.close()
    assert got == list(range(1, 42))


async def test_damage_inside_the_checkpointed_prefix_is_still_found_and_cut_at_open(tmp_path: Path) -> None:
    buf = DiskBuffer(tmp_path, ["cloud"])
    await buf.append([_r(i) for i in range(1, 41)])
    await buf.close()
    assert _ledger(tmp_path)["active"] == [1, max(tmp_path.glob("*" + SUFFIX)).stat().st_size, 40]
    segment = max(tmp_path.glob("*" + SUFFIX))
    data = bytearray(segment.read_bytes())
    data[_offset_of(data, 4) + HEADER.size + 1] ^= 0x01  # record 5
    segment.write_bytes(bytes(data))
    again = DiskBuffer(tmp_path, ["cloud"])
    got = [r.seq for r in await again.read("cloud", 100, 0)]
    dropped = again.stats().dropped["corrupt"]
    await again.close()
    assert got == [1, 2, 3, 4]
    assert dropped == 36
    assert len(list((tmp_path / QUARANTINE).iterdir())) == 1


# ---- chunk boundaries: records straddling a read, records larger than a read ---------------------------------


def _sized(seq: int) -> Reading:
    """Readings of many layouts and sizes (0..300 bytes of text), all checkable from their seq."""
    text = "x" * (seq * 37 % 301)
    if seq % 3 == 0:
        return Reading("plc", f"plc.s{seq % 5}", text, Quality.GOOD, T + seq, T)
    if seq % 3 == 1:
        return Reading("plc", f"plc.f{seq % 5}", seq * 0.5, Quality.GOOD, T + seq, None, text or None)
    return Reading("opc", "opc.n", seq, Quality.UNCERTAIN, T + seq, T + seq)


@pytest.mark.parametrize("chunk", [64, 100, 333])
@pytest.mark.parametrize("fmt", [1, 2])
async def test_reads_across_chunk_boundaries_hand_out_every_record_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int, fmt: int
) -> None:
    monkeypatch.setattr("edge_gateway.buffer.disk._READ_CHUNK", chunk)
    if fmt == 1:
        runs = [range(1, 120), range(120, 301)]
        for run in runs:
            data = b"".join(v1_record(s, _sized(s)) for s in run)
            (tmp_path / f"{run.start:020d}{SUFFIX}").write_bytes(data)
    else:
        buf = DiskBuffer(tmp_path, ["cloud", "sitewise"], segment_bytes=8192)
        for i in range(1, 301, 20):
            await buf.append([_sized(s) for s in range(i, i + 20)])
        await buf.close()
    buf = DiskBuffer(tmp_path, ["cloud", "sitewise"], segment_bytes=8192)
    buf.ack("sitewise", 50, 80)  # a gap to step over inside a segment
    got: list[int] = []
    for n in (1, 7, 50, 1000):
        for r in await buf.read("cloud", n, 0):
            assert_same(r.seq, r.reading, _sized(r.seq))
            got.append(r.seq)
    sitewise = await buf.read("sitewise", 1000, 0)
    await buf.close()
    assert got == list(range(1, 301))
    assert [r.seq for r in sitewise] == [*range(1, 50), *range(81, 301)]
    assert all(r.reading == _sized(r.seq) for r in sitewise)


# ---- damage in the active segment found at open ---------------------------------------------------------------


@pytest.mark.parametrize("where", ["payload", "length"])
async def test_damage_cut_at_open_never_hands_out_a_number_twice(tmp_path: Path, where: str) -> None:
    buf = DiskBuffer(tmp_path, ["cloud"])
    await buf.append([_r(i) for i in range(1, 21)])
    assert len(await buf.read("cloud", 100, 0)) == 20  # all handed out, i.e. published
    buf._close_fd()  # killed: the ledger still says next_seq 1
    segment = max(tmp_path.glob("*" + SUFFIX))
    data = bytearray(segment.read_bytes())
    at = _offset_of(data, 10)  # record 11
    if where == "payload":
        data[at + HEADER.size + 2] ^= 0xFF
    else:  # a length that still fits the file: the records it swallows are not walked
        data[at] += 60
    segment.write_bytes(bytes(data))
    again = DiskBuffer(tmp_path, ["cloud"])
    await again.append([_r(100)])
    got = await again.read("cloud", 100, 0)
    dropped = again.stats().dropped["corrupt"]
    await again.close()
    assert [r.seq for r in got][:10] == list(range(1, 11))
    assert got[-1].seq > 20
    assert got[-1].reading.value == 100.0
    assert dropped == got[-1].seq - 11
    if where == "payload":
        assert got[-1].seq == 21  # the records after the damaged one check out: counted exactly
