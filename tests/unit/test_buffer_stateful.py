"""Hypothesis stateful tests: the disk and memory buffers against a plain model, plus what they found.

The model is a dict seq -> Reading, a set of acked seqs per destination and the set handed out since the
last rewind/reopen. Rules: append (one batch, or several concurrent ones sharing a group commit), read,
read that has to wait for an append, ack of a random sub-range of what was handed out (out of order and
repeated acks allowed), rewind, drain, maintain and, for the disk buffer, a clean reopen and a crash
reopen (the old instance is abandoned without ``close()``, as after ``kill -9`` with every append returned).

Invariants checked after every step: a read hands out exactly the model's next unacked records not yet
handed out, in sequence order, each with the very reading appended under that number (value types, NaN,
-0.0, big ints, unicode kept); ``stats()`` agrees on last_seq, unacked, records, appended and drops;
sequence numbers are never reused across reopen or crash. The buffers are built outside any running
event loop (as the supervisor does) and driven on one loop the machine owns.

The *limited* machines add ``max_bytes`` / ``max_records`` with both policies: whatever the buffer drops
must be the oldest records, be counted in ``dropped["full"]`` exactly once each, and happen only when the
new readings would not fit.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import tempfile
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from edge_gateway.buffer.base import Buffer, Record
from edge_gateway.buffer.codec import decode_reading, encode_reading
from edge_gateway.buffer.disk import HEADER, SUFFIX, DiskBuffer
from edge_gateway.buffer.memory import MemoryBuffer
from edge_gateway.errors import BufferFullError
from edge_gateway.model import Quality, Reading, Value

T = TypeVar("T")
DESTS = ("cloud", "sitewise")
Policy = Literal["drop_oldest", "reject_new"]
STEP_TIMEOUT_S = 10

_values: st.SearchStrategy[Value] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=24),  # no lone surrogates here: see test_lone_surrogate_* below
)
READINGS: st.SearchStrategy[Reading] = st.builds(
    Reading,
    source=st.sampled_from(["plc", "presse-ü", "boiler"]),
    point=st.text(min_size=1, max_size=8),
    value=_values,
    quality=st.sampled_from(list(Quality)),
    gateway_ts_ns=st.integers(0, 2**63 - 1),
    source_ts_ns=st.none() | st.integers(0, 2**63 - 1),
    status=st.none() | st.integers(0, 2**32 - 1) | st.text(max_size=12),
)
# The limited machines use small readings of similar size, so a few batches fill the buffer.
SMALL_READINGS: st.SearchStrategy[Reading] = st.builds(
    Reading,
    source=st.just("plc"),
    point=st.just("plc.counter"),
    value=st.integers(0, 10**6),
    quality=st.just(Quality.GOOD),
    gateway_ts_ns=st.integers(0, 10**6),
)


def same_value(got: Value, want: Value) -> bool:
    if type(got) is not type(want):  # True must not come back as 1, 1.0 not as 1
        return False
    if isinstance(got, float) and isinstance(want, float):
        if math.isnan(want):
            return math.isnan(got)
        return got == want and math.copysign(1.0, got) == math.copysign(1.0, want)
    return got == want


def assert_same(seq: int, got: Reading, want: Reading) -> None:
    assert same_value(got.value, want.value), f"seq {seq}: value {got.value!r} != {want.value!r}"
    assert (got.source, got.point, got.quality, got.gateway_ts_ns, got.source_ts_ns, got.status) == (
        want.source,
        want.point,
        want.quality,
        want.gateway_ts_ns,
        want.source_ts_ns,
        want.status,
    ), f"seq {seq}: {got!r} != {want!r}"
    assert type(got.status) is type(want.status)


def record_bytes(readings: Sequence[Reading]) -> int:
    return sum(HEADER.size + len(encode_reading(r)) for r in readings)


class BufferMachine(RuleBasedStateMachine):
    kind: ClassVar[Literal["disk", "memory"]] = "disk"
    dests: ClassVar[tuple[str, ...]] = DESTS
    policy: ClassVar[Policy] = "drop_oldest"
    max_bytes: ClassVar[int] = 1 << 30  # disk
    max_records: ClassVar[int] = 1_000_000  # memory
    limited: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="buffer-model-"))
        self.readings: dict[int, Reading] = {}
        self.next_seq = 1
        # Acked per destination, including what is gone (settled and deleted, or dropped by a limit).
        self.acked: dict[str, set[int]] = {d: set() for d in self.dests}
        self.persisted: dict[str, set[int]] = {d: set() for d in self.dests}  # as of the last ledger write
        self.handed: dict[str, set[int]] = {d: set() for d in self.dests}  # since the last rewind/reopen
        self.gone_below = 1  # every seq below this has left the buffer
        self.dropped_full = 0  # expected stats().dropped["full"] since open
        self.appended_since_open = 0
        self.buf: Buffer = self.open()  # built outside the running loop, as the supervisor does

    # ---- plumbing ---------------------------------------------------------------------------------

    def open(self) -> Buffer:
        self.appended_since_open = 0
        self.dropped_full = 0
        if self.kind == "disk":
            return DiskBuffer(
                self.dir, self.dests, segment_bytes=512 if self.limited else 4096, max_bytes=self.max_bytes,
                when_full=self.policy,
            )  # fmt: skip
        return MemoryBuffer(self.dests, max_records=self.max_records, when_full=self.policy)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(STEP_TIMEOUT_S):  # a hang is a failure, not a stuck suite
                return await coro

        return self.loop.run_until_complete(bounded())

    def teardown(self) -> None:
        try:
            self.run(self.buf.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def unacked(self, dest: str) -> list[int]:
        return [s for s in range(1, self.next_seq) if s not in self.acked[dest]]

    def due(self, dest: str) -> list[int]:
        return [s for s in self.unacked(dest) if s not in self.handed[dest]]

    def first_retained(self) -> int:
        if isinstance(self.buf, DiskBuffer):
            firsts = [int(p.stem) for p in self.dir.glob("*" + SUFFIX)]
            return min(firsts, default=self.next_seq)
        assert isinstance(self.buf, MemoryBuffer)
        return self.buf._records[0].seq if self.buf._records else self.next_seq

    def sync_gone(self) -> int:
        """Account for records that left the buffer since the last look; return how many were unacked."""
        first = self.first_retained()
        assert first >= self.gone_below, f"seq {first} came back after it was gone below {self.gone_below}"
        lost = 0
        for seq in range(self.gone_below, first):
            if any(seq not in self.acked[d] for d in self.dests):
                assert self.limited, f"seq {seq} was deleted though not every destination acked it"
                lost += 1
            for d in self.dests:
                self.acked[d].add(seq)
        self.gone_below = first
        self.dropped_full += lost
        if lost:
            event("unacked records dropped by a limit")
        return lost

    def check_records(self, dest: str, records: list[Record], expected: list[int]) -> None:
        assert [r.seq for r in records] == expected, f"{dest}: handed out {[r.seq for r in records]}"
        for r in records:
            assert_same(r.seq, r.reading, self.readings[r.seq])
        self.handed[dest].update(expected)

    def do_append(self, batches: list[list[Reading]]) -> None:
        if self.limited:
            self.limited_append(batches[0])
            return
        if len(batches) == 1:
            self.run(self.buf.append(batches[0]))
        else:

            async def together() -> None:
                await asyncio.gather(*(self.buf.append(b) for b in batches))

            self.run(together())
        for batch in batches:  # a group commit keeps the callers' order
            for r in batch:
                self.readings[self.next_seq] = r
                self.next_seq += 1
            self.appended_since_open += len(batch)

    def limited_append(self, batch: list[Reading]) -> None:
        if isinstance(self.buf, DiskBuffer):
            fits = self.buf.stats().bytes + record_bytes(batch) <= self.max_bytes
        else:
            assert isinstance(self.buf, MemoryBuffer)
            fits = len(self.buf._records) + len(batch) <= self.max_records
        try:
            self.run(self.buf.append(batch))
        except BufferFullError:
            assert batch, "an empty append was rejected"
            assert self.policy == "reject_new" or (self.kind == "disk" and record_bytes(batch) > self.max_bytes)
            assert not fits, "rejected although the readings fit"
            self.dropped_full += len(batch)
            event("append rejected: full")
            lost = self.sync_gone()
            assert self.policy == "drop_oldest" or lost == 0, "reject_new dropped stored records"
            return
        for r in batch:
            self.readings[self.next_seq] = r
            self.next_seq += 1
        self.appended_since_open += len(batch)
        lost = self.sync_gone()
        if fits or self.policy == "reject_new":
            assert lost == 0, f"{lost} unacked record(s) dropped although the batch fit or policy is reject_new"

    # ---- rules ------------------------------------------------------------------------------------

    @precondition(lambda self: not self.limited)
    @rule(batch=st.lists(READINGS, max_size=30))
    def append(self, batch: list[Reading]) -> None:
        self.do_append([batch])

    @precondition(lambda self: not self.limited)
    @rule(batches=st.lists(st.lists(READINGS, min_size=1, max_size=8), min_size=2, max_size=4))
    def append_concurrently(self, batches: list[list[Reading]]) -> None:
        self.do_append(batches)

    # Two rules of small appends so that the limited machines fill up within a run.
    @precondition(lambda self: self.limited)
    @rule(batch=st.lists(SMALL_READINGS, max_size=20))
    def append_small(self, batch: list[Reading]) -> None:
        self.do_append([batch])

    @precondition(lambda self: self.limited)
    @rule(batch=st.lists(SMALL_READINGS, min_size=1, max_size=20))
    def append_small_again(self, batch: list[Reading]) -> None:
        self.do_append([batch])

    @rule(dest=st.sampled_from(DESTS), n=st.integers(1, 60))
    def read(self, dest: str, n: int) -> None:
        if dest not in self.dests:
            return
        records = self.run(self.buf.read(dest, n, 0))
        self.check_records(dest, records, self.due(dest)[:n])

    @precondition(lambda self: not self.limited)
    @rule(dest=st.sampled_from(DESTS), n=st.integers(1, 10), batch=st.lists(READINGS, min_size=1, max_size=5))
    def read_waits_for_append(self, dest: str, n: int, batch: list[Reading]) -> None:
        """A read with nothing due must wake up on the next append and hand out exactly the new records."""
        if self.due(dest):
            return
        first = self.next_seq

        async def scenario() -> list[Record]:
            waiting = asyncio.create_task(self.buf.read(dest, n, 10.0))
            for _ in range(5):
                await asyncio.sleep(0)
            assert not waiting.done(), "read returned though nothing was due"
            await self.buf.append(batch)
            async with asyncio.timeout(5):
                return await waiting

        records = self.run(scenario())
        for r in batch:
            self.readings[self.next_seq] = r
            self.next_seq += 1
        self.appended_since_open += len(batch)
        self.check_records(dest, records, list(range(first, first + min(n, len(batch)))))

    @rule(dest=st.sampled_from(DESTS), data=st.data())
    def ack(self, dest: str, data: st.DataObject) -> None:
        """Ack a run of handed-out seqs (it may span seqs acked before): out of order, like two lanes."""
        if dest not in self.dests:
            return
        open_ = sorted(self.handed[dest] - self.acked[dest])
        if not open_:
            return
        first = open_[data.draw(st.integers(0, len(open_) - 1), label="first")]
        limit = first
        while limit + 1 in self.handed[dest] or (limit + 1 in self.acked[dest] and limit + 1 < self.next_seq):
            limit += 1
        last = data.draw(st.integers(first, min(limit, first + 40)), label="last")
        self.buf.ack(dest, first, last)
        self.acked[dest].update(range(first, last + 1))

    @rule(dest=st.sampled_from(DESTS), data=st.data())
    def ack_again(self, dest: str, data: st.DataObject) -> None:
        """A repeated ack (a PUBACK seen twice, a replayed batch) changes nothing."""
        if dest not in self.dests:
            return
        done = sorted(s for s in self.acked[dest] if s >= self.gone_below)
        if not done:
            return
        first = done[data.draw(st.integers(0, len(done) - 1), label="first")]
        last = first
        while last + 1 in self.acked[dest] and last + 1 < self.next_seq and data.draw(st.booleans(), label="more"):
            last += 1
        self.buf.ack(dest, first, last)

    @rule(dest=st.sampled_from(DESTS))
    def rewind(self, dest: str) -> None:
        if dest not in self.dests:
            return
        self.buf.rewind(dest)
        self.handed[dest] = set()

    @rule(dest=st.sampled_from(DESTS), chunk=st.integers(1, 200))
    def drain(self, dest: str, chunk: int) -> None:
        """Rewind and read everything: exactly every unacked record comes back, once, in order."""
        if dest not in self.dests:
            return
        self.buf.rewind(dest)
        self.handed[dest] = set()
        got: list[Record] = []
        while more := self.run(self.buf.read(dest, chunk, 0)):
            got.extend(more)
        self.check_records(dest, got, self.unacked(dest))
        if len(got) > 100:
            event("drain of more than 100 records")
        if got and any(s in self.acked[dest] for s in range(got[0].seq, got[-1].seq)):
            event("drain skipped acked ranges")

    @rule()
    def maintain(self) -> None:
        self.run(self.buf.maintain())
        self.persisted = {d: set(a) for d, a in self.acked.items()}
        self.sync_gone()

    @precondition(lambda self: self.kind == "disk")
    @rule()
    def reopen(self) -> None:
        self.run(self.buf.close())
        self.persisted = {d: set(a) for d, a in self.acked.items()}
        self.buf = self.open()
        self.handed = {d: set() for d in self.dests}
        self.sync_gone()

    @precondition(lambda self: self.kind == "disk")
    @rule()
    def crash_reopen(self) -> None:
        """Abandon the instance without close(): acks since the last ledger write are forgotten."""
        old = self.buf
        assert isinstance(old, DiskBuffer)
        old._close_fd()  # what the kernel does for a killed process; the ledger is not written
        if self.acked != self.persisted:
            event("crash forgot acks")
        self.acked = {d: self.persisted[d] | set(range(1, self.gone_below)) for d in self.dests}
        self.buf = self.open()
        self.persisted = {d: set(a) for d, a in self.acked.items()}
        self.handed = {d: set() for d in self.dests}
        self.sync_gone()

    # ---- invariants -------------------------------------------------------------------------------

    @invariant()
    def stats_match_the_model(self) -> None:
        stats = self.buf.stats()
        last = self.next_seq - 1
        assert stats.last_seq == last, "sequence numbers reused or skipped"
        for d in self.dests:
            assert stats.unacked[d] == len(self.unacked(d)), f"unacked[{d}]"
        prefix = min(
            next((s for s in range(1, self.next_seq) if s not in self.acked[d]), self.next_seq) for d in self.dests
        )
        assert stats.records == last - (prefix - 1)
        assert stats.appended == (self.appended_since_open if self.kind == "disk" else len(self.readings))
        assert stats.dropped["full"] == self.dropped_full
        assert stats.dropped["corrupt"] == stats.dropped["io_error"] == stats.dropped["expired"] == 0
        if self.kind == "disk":
            assert stats.bytes <= self.max_bytes
            assert not (self.dir / "quarantine").exists()


class MemoryMachine(BufferMachine):
    kind = "memory"


class DiskLimitedMachine(BufferMachine):
    limited = True
    max_bytes = 2000


class DiskLimitedRejectMachine(DiskLimitedMachine):
    policy = "reject_new"


class MemoryLimitedMachine(BufferMachine):
    kind = "memory"
    limited = True
    max_records = 25


class MemoryLimitedRejectMachine(MemoryLimitedMachine):
    policy = "reject_new"


FULL = settings(max_examples=60, stateful_step_count=40, deadline=None)
LIMITED = settings(max_examples=40, stateful_step_count=40, deadline=None)

TestDiskBuffer = BufferMachine.TestCase
TestDiskBuffer.settings = FULL
TestMemoryBuffer = MemoryMachine.TestCase
TestMemoryBuffer.settings = FULL
TestDiskBufferLimited = DiskLimitedMachine.TestCase
TestDiskBufferLimited.settings = LIMITED
TestDiskBufferLimitedReject = DiskLimitedRejectMachine.TestCase
TestDiskBufferLimitedReject.settings = LIMITED
TestMemoryBufferLimited = MemoryLimitedMachine.TestCase
TestMemoryBufferLimited.settings = LIMITED
TestMemoryBufferLimitedReject = MemoryLimitedRejectMachine.TestCase
TestMemoryBufferLimitedReject.settings = LIMITED


# ---- what the machines led to: focused repros ------------------------------------------------------------


def _r(i: int, value: Value = None) -> Reading:
    return Reading("plc", "plc.counter", i if value is None else value, Quality.GOOD, 1_700_000_000_000_000_000 + i)


@pytest.mark.parametrize("kind", ["disk", "memory"])
def test_buffers_built_outside_a_running_loop_work_inside_one(tmp_path: Path, kind: str) -> None:
    """The supervisor builds the buffer before ``asyncio.run``; its Event must bind to the loop later."""
    buf: Buffer = DiskBuffer(tmp_path, DESTS) if kind == "disk" else MemoryBuffer(DESTS)

    async def scenario() -> list[int]:
        waiting = asyncio.create_task(buf.read("cloud", 10, 5.0))
        await asyncio.sleep(0.01)
        await buf.append([_r(1), _r(2)])
        records = await waiting
        await buf.close()
        return [r.seq for r in records]

    assert asyncio.run(scenario()) == [1, 2]


def _fill_segments(n_batches: int) -> tuple[list[list[Reading]], int]:
    batches = [[_r(1000 + 10 * b + i) for i in range(10)] for b in range(n_batches)]
    size = record_bytes(batches[0])
    assert all(record_bytes(b) == size for b in batches)
    return batches, size


async def test_memory_buffer_counts_a_record_dropped_while_any_destination_still_needs_it() -> None:
    buf = MemoryBuffer(DESTS, max_records=30)
    batches, _ = _fill_segments(4)
    for batch in batches[:3]:
        await buf.append(batch)
    buf.ack("cloud", 1, 5)
    buf.ack("sitewise", 6, 10)  # every record of the first batch is still needed by one destination
    await buf.append(batches[3])
    assert buf.stats().dropped["full"] == 10


async def test_disk_buffer_counts_a_record_dropped_while_any_destination_still_needs_it(tmp_path: Path) -> None:
    batches, size = _fill_segments(4)
    # Each batch gets its own segment; three fit, the fourth pushes the first segment out.
    buf = DiskBuffer(tmp_path, DESTS, segment_bytes=size + size // 2, max_bytes=3 * size + size // 2)
    for batch in batches[:3]:
        await buf.append(batch)
    buf.ack("cloud", 1, 5)
    buf.ack("sitewise", 6, 10)
    await buf.append(batches[3])
    assert [r.seq for r in await buf.read("sitewise", 100, 0)][:1] == [11]  # the first segment is gone
    dropped = buf.stats().dropped["full"]
    await buf.close()
    assert dropped == 10


async def test_a_batch_bigger_than_the_buffer_is_rejected_without_dropping_what_is_stored(tmp_path: Path) -> None:
    batches, size = _fill_segments(3)
    buf = DiskBuffer(tmp_path, DESTS, segment_bytes=size + size // 2, max_bytes=4 * size)
    for batch in batches:
        await buf.append(batch)
    huge = [_r(5000 + i) for i in range(60)]
    assert record_bytes(huge) > 4 * size
    with pytest.raises(BufferFullError):
        await buf.append(huge)
    stats = buf.stats()
    kept = [r.seq for r in await buf.read("cloud", 100, 0)]
    await buf.close()
    assert kept == list(range(1, 31))
    assert stats.dropped["full"] == 60


# asyncua decodes OPC UA strings with errors="surrogateescape": a PLC string tag holding bytes that are not
# UTF-8 (Latin-1 text is common) arrives as a str with lone surrogates.
NOT_UTF8 = b"Temp \xb0C".decode("utf-8", errors="surrogateescape")


@pytest.mark.parametrize("kind", ["disk", "memory"])
async def test_a_string_that_was_not_utf8_round_trips(tmp_path: Path, kind: str) -> None:
    buf: Buffer = DiskBuffer(tmp_path, DESTS) if kind == "disk" else MemoryBuffer(DESTS)
    await buf.append([_r(1, NOT_UTF8)])
    await buf.append([_r(2)])
    got = await buf.read("cloud", 10, 0)
    await buf.close()
    assert [(r.seq, r.reading.value) for r in got] == [(1, NOT_UTF8), (2, 2)]
    assert decode_reading(encode_reading(_r(1, NOT_UTF8))) == _r(1, NOT_UTF8)


async def test_one_unencodable_reading_does_not_fail_the_other_appends_of_its_group_commit(tmp_path: Path) -> None:
    buf = DiskBuffer(tmp_path, DESTS)
    results = await asyncio.gather(
        buf.append([_r(1)]), buf.append([_r(2, NOT_UTF8)]), buf.append([_r(3)]), return_exceptions=True
    )
    values = [r.reading.value for r in await buf.read("cloud", 10, 0)]
    await buf.close()
    assert results[0] is None
    assert results[2] is None
    assert 1 in values
    assert 3 in values
