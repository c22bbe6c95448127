"""Sustained overload: producers offer far more than the cloud drains, for thousands of commits.

What is checked after every commit, on the real files (not the buffer's own bookkeeping): the segment
files never add up to more than ``max_bytes``. At the end every offered reading is accounted for exactly
once: delivered, still held, or counted as dropped (``full``), and what was delivered came in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Literal

import pytest

from edge_gateway.buffer.disk import SUFFIX, DiskBuffer
from edge_gateway.errors import BufferFullError
from edge_gateway.model import Quality, Reading

MAX_BYTES = 64 * 1024
SEGMENT_BYTES = 8 * 1024
PRODUCERS = 4
ROUNDS = 150
BATCH = 25
PER_READ = {"cloud": 5, "sitewise": 3}
DESTS = tuple(PER_READ)


def _reading(producer: int, n: int) -> Reading:
    return Reading(f"plc{producer}", f"plc{producer}.counter", n, Quality.GOOD, 1_700_000_000_000_000_000 + n)


def _on_disk(directory: Path) -> int:
    total = 0
    for path in directory.glob("*" + SUFFIX):
        with contextlib.suppress(FileNotFoundError):  # deleted (settled) between the listing and the stat
            total += path.stat().st_size
    return total


@pytest.mark.parametrize("policy", ["drop_oldest", "reject_new"])
async def test_max_bytes_holds_on_disk_under_sustained_overload(
    tmp_path: Path, policy: Literal["drop_oldest", "reject_new"], caplog: pytest.LogCaptureFixture
) -> None:
    buf = DiskBuffer(tmp_path, DESTS, max_bytes=MAX_BYTES, segment_bytes=SEGMENT_BYTES, when_full=policy)
    rejected = 0
    peak = 0
    delivered: dict[str, list[int]] = {d: [] for d in DESTS}

    async def produce(producer: int) -> None:
        nonlocal rejected, peak
        for rnd in range(ROUNDS):
            batch = [_reading(producer, rnd * BATCH + i) for i in range(BATCH)]
            try:
                await buf.append(batch)
            except BufferFullError:
                rejected += len(batch)
            peak = max(peak, _on_disk(tmp_path))

    async def drain(dest: str, per_read: int) -> None:
        # Slower than the producers: a few records per turn, acked right away, maintenance now and then.
        for turn in range(ROUNDS * PRODUCERS):
            records = await buf.read(dest, per_read, 0)
            delivered[dest].extend(r.seq for r in records)
            if records:
                buf.ack(dest, records[0].seq, records[-1].seq)
            if turn % 50 == 0:
                await buf.maintain()
            await asyncio.sleep(0)

    await asyncio.gather(*(produce(p) for p in range(PRODUCERS)), *(drain(d, n) for d, n in PER_READ.items()))
    stats = buf.stats()
    held = {d: [r.seq for r in await buf.read(d, 1_000_000, 0)] for d in DESTS}
    await buf.close()

    offered = PRODUCERS * ROUNDS * BATCH
    assert peak <= MAX_BYTES, f"{peak} bytes of segments on disk, limit {MAX_BYTES}"
    assert stats.appended == offered - rejected
    assert stats.last_seq == stats.appended  # numbering has no gaps: nothing was damaged
    if policy == "reject_new":
        assert rejected > offered // 2  # really overloaded
        assert stats.dropped["full"] == rejected
        for d in DESTS:  # nothing stored was lost
            assert delivered[d] + held[d] == list(range(1, stats.last_seq + 1))
    else:
        assert rejected == 0
        assert stats.dropped["full"] > offered // 2
        # A record some destination never received is counted, once. A record dropped while handed out but
        # not yet acked (in flight: at most PER_READ per destination) is counted too: it may not have arrived.
        lost = {s for d in DESTS for s in range(1, stats.last_seq + 1) if s not in set(delivered[d] + held[d])}
        drops = sum("unsent reading(s)" in r.getMessage() for r in caplog.records)
        assert len(lost) <= stats.dropped["full"] <= len(lost) + drops * sum(PER_READ.values())
        for d in DESTS:
            got = delivered[d] + held[d]
            assert got == sorted(set(got))  # in order, no duplicates
