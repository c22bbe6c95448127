"""Hypothesis stateful test: the disk and memory buffers against a plain list model.

Rules: append, read (per destination), ack of a random sub-range of what was handed out (out of order
allowed), rewind, maintain, and (disk only) close + reopen. Invariants: what a read hands out is exactly
the model's next unacked records in order, each with the reading appended under that sequence number,
sequence numbers are never reused, and unacked counts match.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from edge_gateway.buffer.base import Buffer
from edge_gateway.buffer.disk import DiskBuffer
from edge_gateway.buffer.memory import MemoryBuffer
from edge_gateway.model import Quality, Reading

DESTS = ("a", "b")


def reading(seq: int) -> Reading:
    return Reading("s", f"s.p{seq % 3}", seq * 1.5, Quality.GOOD, 1_000 + seq, None, None)


class BufferModel(RuleBasedStateMachine):
    disk = True

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="buffer-model-"))
        self.next_seq = 1
        self.acked: dict[str, set[int]] = {d: set() for d in DESTS}
        self.handed: dict[str, list[int]] = {d: [] for d in DESTS}  # handed out since the last rewind/reopen
        self.buf: Buffer = self._open()

    def _open(self) -> Buffer:
        async def make() -> Buffer:
            if self.disk:
                return DiskBuffer(self.dir, DESTS, segment_bytes=4096, max_bytes=1 << 30)
            return MemoryBuffer(DESTS)

        return self.loop.run_until_complete(make())

    def run(self, coro: object) -> object:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    def unacked(self, dest: str) -> list[int]:
        return [s for s in range(1, self.next_seq) if s not in self.acked[dest]]

    def teardown(self) -> None:
        self.run(self.buf.close())
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @initialize()
    def start(self) -> None:
        pass

    @rule(k=st.integers(0, 30))
    def append(self, k: int) -> None:
        batch = [reading(self.next_seq + i) for i in range(k)]
        self.run(self.buf.append(batch))
        self.next_seq += k

    @rule(dest=st.sampled_from(DESTS), n=st.integers(1, 50))
    def read(self, dest: str, n: int) -> None:
        records = self.run(self.buf.read(dest, n, 0))
        assert isinstance(records, list)
        due = [s for s in self.unacked(dest) if s not in self.handed[dest]]
        assert [r.seq for r in records] == due[:n]
        for r in records:
            assert r.reading == reading(r.seq)
        self.handed[dest].extend(r.seq for r in records)

    @precondition(lambda self: any(self.handed[d] for d in DESTS))
    @rule(dest=st.sampled_from(DESTS), data=st.data())
    def ack(self, dest: str, data: st.DataObject) -> None:
        handed = sorted(self.handed[dest])
        if not handed:
            return
        i = data.draw(st.integers(0, len(handed) - 1))
        j = data.draw(st.integers(i, min(len(handed) - 1, i + 20)))
        first, last = handed[i], handed[j]
        # Only a contiguous run of handed-out sequence numbers is acked (what one published batch covers).
        run = handed[i : j + 1]
        if run != list(range(first, last + 1)):
            return
        self.buf.ack(dest, first, last)
        self.acked[dest].update(run)

    @rule(dest=st.sampled_from(DESTS))
    def rewind(self, dest: str) -> None:
        self.buf.rewind(dest)
        self.handed[dest] = []

    @rule()
    def maintain(self) -> None:
        self.run(self.buf.maintain())

    @precondition(lambda self: self.disk)
    @rule()
    def reopen(self) -> None:
        self.run(self.buf.close())
        self.buf = self._open()
        self.handed = {d: [] for d in DESTS}

    @invariant()
    def counts_match(self) -> None:
        stats = self.buf.stats()
        assert stats.last_seq == self.next_seq - 1
        for d in DESTS:
            assert stats.unacked[d] == len(self.unacked(d))


class MemoryBufferModel(BufferModel):
    disk = False


SETTINGS = settings(max_examples=150, stateful_step_count=50, deadline=None)
TestDiskBuffer = BufferModel.TestCase
TestDiskBuffer.settings = SETTINGS
TestMemoryBuffer = MemoryBufferModel.TestCase
TestMemoryBuffer.settings = SETTINGS
