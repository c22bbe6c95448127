"""In-memory buffer with the same contract as the disk buffer, minus durability across restarts.

For tests of the other stages and for a gateway explicitly configured with ``buffer.type: memory``
(readings are lost on restart; the heartbeat says so). Bounded by ``max_records``; when full,
``drop_oldest`` discards the oldest and counts it, ``reject_new`` raises ``BufferFullError``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Literal

from edge_gateway.buffer.base import AckLedger, BufferStats, Quarantined, Record
from edge_gateway.buffer.codec import encode_reading
from edge_gateway.errors import BufferFullError
from edge_gateway.model import Reading


class MemoryBuffer:
    def __init__(
        self,
        destinations: Iterable[str],
        *,
        max_records: int = 1_000_000,
        when_full: Literal["drop_oldest", "reject_new"] = "drop_oldest",
    ) -> None:
        self.max_records = max_records
        self.when_full = when_full
        self._records: deque[Record] = deque()
        self._next_seq = 1
        self._acks = {d: AckLedger() for d in destinations}
        self._cursors: dict[tuple[str, str], int] = {(d, ""): 1 for d in self._acks}  # (destination, lane)
        self._stats = BufferStats()
        self._bytes = 0
        self._data_event = asyncio.Event()

    async def append(self, readings: Sequence[Reading]) -> None:
        if not readings:
            return
        overflow = len(self._records) + len(readings) - self.max_records
        if overflow > 0 and self.when_full == "reject_new":
            self._stats.dropped["full"] += len(readings)
            raise BufferFullError(f"memory buffer holds {len(self._records)} of {self.max_records} readings")
        for r in readings:
            self._records.append(Record(self._next_seq, r))
            self._bytes += len(encode_reading(r))
            self._next_seq += 1
        self._stats.appended += len(readings)
        while len(self._records) > self.max_records:
            self._drop_oldest()
        self._data_event.set()
        self._data_event = asyncio.Event()

    def _drop_oldest(self) -> None:
        rec = self._records.popleft()
        self._bytes -= len(encode_reading(rec.reading))
        if any(a.next_unacked(rec.seq) == rec.seq for a in self._acks.values()):
            self._stats.dropped["full"] += 1
        for acks in self._acks.values():
            acks.advance_to(rec.seq)

    async def read(
        self, dest: str, max_records: int, timeout_s: float, *, lane: str = "", end_seq: int | None = None
    ) -> list[Record]:
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    # _take stops at the newest record; end_seq only bounds a lane further.
                    out = self._take(dest, lane, max_records, self._next_seq if end_seq is None else end_seq)
                    if out:
                        return out
                    await self._data_event.wait()
        except TimeoutError:
            return []

    def _take(self, dest: str, lane: str, max_records: int, end: int) -> list[Record]:
        acks = self._acks[dest]
        seq = acks.next_unacked(self._cursors.get((dest, lane), acks.acked_through + 1))
        first = self._records[0].seq if self._records else self._next_seq
        out: list[Record] = []
        seq = max(seq, first)
        end = min(end, self._next_seq)
        while seq < end and len(out) < max_records:
            seq = acks.next_unacked(seq)
            if seq >= end:
                break
            out.append(self._records[seq - first])
            seq += 1
        self._cursors[dest, lane] = seq
        return out

    def ack(self, dest: str, first: int, last: int) -> None:
        self._acks[dest].add(first, last)
        self._release()

    def _release(self) -> None:
        floor = min((a.acked_through for a in self._acks.values()), default=self._next_seq - 1)
        while self._records and self._records[0].seq <= floor:
            rec = self._records.popleft()
            self._bytes -= len(encode_reading(rec.reading))

    def add_destination(self, dest: str) -> None:
        if dest not in self._acks:
            self._acks[dest] = AckLedger(self._next_seq - 1)
            self._cursors[dest, ""] = self._next_seq

    def remove_destination(self, dest: str) -> None:
        if self._acks.pop(dest, None) is not None:
            for key in [k for k in self._cursors if k[0] == dest]:
                del self._cursors[key]
            self._release()

    def rewind(self, dest: str) -> None:
        for key in [k for k in self._cursors if k[0] == dest and k[1]]:
            del self._cursors[key]
        self._cursors[dest, ""] = self._acks[dest].acked_through + 1

    def seek(self, dest: str, seq: int, *, lane: str = "") -> None:
        self._cursors[dest, lane] = max(seq, self._acks[dest].acked_through + 1)

    def stats(self) -> BufferStats:
        last = self._next_seq - 1
        floor = min((a.acked_through for a in self._acks.values()), default=last)
        return BufferStats(
            records=last - floor,
            bytes=self._bytes,
            segments=0,
            appended=self._stats.appended,
            last_seq=last,
            unacked={d: last - a.acked_count_between(1, last) for d, a in self._acks.items()},
            dropped=dict(self._stats.dropped),
        )

    def take_quarantined(self) -> list[Quarantined]:
        return []  # nothing in memory is checked against damage

    async def maintain(self) -> None:
        return

    async def close(self) -> None:
        return
