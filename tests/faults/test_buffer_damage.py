"""Sealed segments damaged on real files the way an SD card or a full volume damages them: emptied, or cut
short at a record boundary or inside a record; and how the readings of a quarantined segment are counted.

The reads run in a child process with a timeout: a reader that spins on a short file must fail the test,
not hang it (a thread spinning in ``asyncio.to_thread`` cannot be stopped, and would keep the interpreter
from exiting).

Shown here: a short sealed segment is quarantined, the good records before the damage are handed out, the
rest of the buffer flows, and only records some destination had not acknowledged when the segment was set
aside count as ``corrupt`` (records handed out but not acknowledged count: they may not have arrived);
records every destination acknowledged, in its prefix or out of order, never count. Numbers missing from a
short segment that every destination acknowledged (a gap a former quarantine left) are no damage.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_gateway.buffer.disk import HEADER, QUARANTINE, SUFFIX, V1_HEADER, DiskBuffer
from edge_gateway.model import Quality, Reading
from tests.unit.test_buffer_format import write_v1_segments

T = 1_700_000_000_000_000_000
SEGMENT_BYTES = 2000  # 50 records of these readings per segment
READ_TIMEOUT_S = 15.0

# Opens the buffer, applies acks, reads every destination to the end and prints what it saw.
# argv: directory, JSON {"dests", "acks_before", "segment_bytes", "max_records"}.
_CHILD = """
import asyncio, json, sys
from pathlib import Path
from edge_gateway.buffer.disk import DiskBuffer

async def main() -> None:
    directory, spec = Path(sys.argv[1]), json.loads(sys.argv[2])
    buf = DiskBuffer(directory, spec["dests"], segment_bytes=spec["segment_bytes"])
    for dest, first, last in spec["acks_before"]:
        buf.ack(dest, first, last)
    got = {}
    for dest in spec["dests"]:
        seqs = []
        while more := await buf.read(dest, spec["max_records"], 0):
            seqs += [r.seq for r in more]
        got[dest] = seqs
    stats = buf.stats()
    await buf.close()
    print(json.dumps({"got": got, "dropped": stats.dropped, "last_seq": stats.last_seq}))

asyncio.run(main())
"""


def reading(i: int) -> Reading:
    return Reading("plc", "plc.counter", float(i), Quality.GOOD, T + i)


async def two_segments(directory: Path, dests: list[str], acks: list[tuple[str, int, int]]) -> list[Path]:
    """Records 1..100 in two sealed segments and an active one; ``acks`` persisted in the ledger."""
    buf = DiskBuffer(directory, dests, segment_bytes=SEGMENT_BYTES)
    for i in range(1, 126, 25):
        await buf.append([reading(j) for j in range(i, i + 25)])
    for dest, first, last in acks:
        buf.ack(dest, first, last)
    await buf.close()
    segments = sorted(directory.glob("*" + SUFFIX))
    assert [int(p.stem) for p in segments] == [1, 51, 101]
    return segments


def offset_of(data: bytes, index: int) -> int:
    at = 0
    for _ in range(index):
        at += HEADER.size + HEADER.unpack_from(data, at)[0]
    return at


def read_in_child(
    directory: Path,
    dests: list[str],
    *,
    acks_before: tuple[tuple[str, int, int], ...] = (),
    max_records: int = 1000,
) -> dict[str, Any]:
    spec = {
        "dests": dests,
        "acks_before": list(acks_before),
        "segment_bytes": SEGMENT_BYTES,
        "max_records": max_records,
    }
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(directory), json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=READ_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the reader did not finish within {READ_TIMEOUT_S} s (it spins on the damaged segment): {exc}")
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["log"] = done.stderr
    result["quarantine"] = sorted(p.name for p in (directory / QUARANTINE).glob("*"))
    return result


# ---- defect 1: a short sealed segment ------------------------------------------------------------------------


@pytest.mark.parametrize("max_records", [1000, 7], ids=["one-read", "small-reads"])
async def test_an_emptied_sealed_segment_is_quarantined_and_the_rest_flows(tmp_path: Path, max_records: int) -> None:
    first, *_ = await two_segments(tmp_path, ["cloud"], [("cloud", 1, 5)])
    first.write_bytes(b"")  # an SD card after a power cut: the file is there, its blocks are not
    seen = read_in_child(tmp_path, ["cloud"], max_records=max_records)
    assert seen["got"]["cloud"] == list(range(51, 126))
    assert seen["dropped"]["corrupt"] == 45  # 6..50: 1..5 were acknowledged before
    assert [n.split(".seg")[0] for n in seen["quarantine"]] == [first.stem]
    assert "00000000000000000001.seg is corrupt" in seen["log"]
    assert "records 1..50 are missing" in seen["log"]


@pytest.mark.parametrize("max_records", [1000, 7], ids=["one-read", "small-reads"])
@pytest.mark.parametrize("cut", ["inside-a-record", "at-a-record-boundary", "inside-a-length"])
async def test_a_sealed_segment_cut_short_hands_out_its_good_records_then_is_quarantined(
    tmp_path: Path, cut: str, max_records: int
) -> None:
    first, *_ = await two_segments(tmp_path, ["cloud"], [("cloud", 1, 5)])
    data = first.read_bytes()
    at = offset_of(data, 20)  # record 21
    keep = {"inside-a-record": at + 9, "at-a-record-boundary": at, "inside-a-length": at + 2}[cut]
    first.write_bytes(data[:keep])
    seen = read_in_child(tmp_path, ["cloud"], max_records=max_records)
    assert seen["got"]["cloud"] == list(range(6, 21)) + list(range(51, 126))  # the good ones, then the rest
    # Lost: 21..50, never handed out; and 6..20, handed out but not acknowledged when the segment was set
    # aside (they may not have arrived). 1..5 were acknowledged: not lost.
    assert seen["dropped"]["corrupt"] == 45
    assert len(seen["quarantine"]) == 1
    assert seen["last_seq"] == 125


async def test_numbers_missing_from_a_short_segment_that_every_destination_acked_are_no_damage(
    tmp_path: Path,
) -> None:
    first, *_ = await two_segments(tmp_path, ["cloud", "archive"], [])
    data = first.read_bytes()
    first.write_bytes(data[: offset_of(data, 30)])  # 31..50 are gone, and both destinations had acked them
    seen = read_in_child(tmp_path, ["cloud", "archive"], acks_before=(("cloud", 31, 50), ("archive", 31, 50)))
    assert seen["got"]["cloud"] == seen["got"]["archive"] == list(range(1, 31)) + list(range(51, 126))
    assert seen["dropped"]["corrupt"] == 0
    assert seen["quarantine"] == []


# ---- defect 5: what a quarantine counts ---------------------------------------------------------------------


async def test_a_quarantine_counts_only_records_some_destination_has_not_acknowledged(tmp_path: Path) -> None:
    """Two destinations; the first segment (1..50) loses its records from 41 on. Before the read: cloud acked
    1..30 and, out of order, 45..50; archive acked 1..10 and 36..50. Lost for cloud: 31..44 (31..40 are handed
    out by the read that finds the damage, unacknowledged); for archive: 11..35. A reading lost for either is
    counted once: 11..44 = 34. Readings every destination acknowledged (1..10, 45..50) are not counted."""
    first, *_ = await two_segments(tmp_path, ["cloud", "archive"], [])
    data = first.read_bytes()
    first.write_bytes(data[: offset_of(data, 40) + 5])
    acks = (("cloud", 1, 30), ("cloud", 45, 50), ("archive", 1, 10), ("archive", 36, 50))
    seen = read_in_child(tmp_path, ["cloud", "archive"], acks_before=acks)
    assert seen["got"]["cloud"] == list(range(31, 41)) + list(range(51, 126))
    # The segment went with cloud's read: archive gets nothing of it, not even 11..35.
    assert seen["got"]["archive"] == list(range(51, 126))
    assert seen["dropped"]["corrupt"] == 34


async def test_records_acknowledged_by_every_destination_before_damage_is_found_are_not_counted(
    tmp_path: Path,
) -> None:
    """Every record of the first segment was delivered and acknowledged (ledger written), but a crash came
    before its deletion; then the segment was emptied. Nothing is lost: nothing counts, nothing spins."""
    first, *_ = await two_segments(tmp_path, ["cloud"], [])
    buf = DiskBuffer(tmp_path, ["cloud"], segment_bytes=SEGMENT_BYTES)
    buf.ack("cloud", 1, 40)
    buf.ack("cloud", 42, 50)
    await buf.close()
    first.write_bytes(b"")
    seen = read_in_child(tmp_path, ["cloud"])
    assert seen["got"]["cloud"] == list(range(51, 126))
    assert seen["dropped"]["corrupt"] == 1  # 41 alone was never acknowledged


async def test_a_format_1_segment_cut_short_at_a_record_boundary_is_quarantined(tmp_path: Path) -> None:
    """A buffer written before the upgrade (format 1, a header with the seq in every record) cut short."""
    write_v1_segments(tmp_path, [range(1, 51), range(51, 101)])
    first = tmp_path / f"{1:020d}{SUFFIX}"
    data = first.read_bytes()
    at = 0
    for _ in range(20):
        at += V1_HEADER.size + V1_HEADER.unpack_from(data, at)[0]
    first.write_bytes(data[:at])
    seen = read_in_child(tmp_path, ["cloud"])
    assert seen["got"]["cloud"] == list(range(1, 101))[:20] + list(range(51, 101))
    assert seen["dropped"]["corrupt"] == 50  # 21..50 missing; 1..20 handed out, not acknowledged
    assert len(seen["quarantine"]) == 1
