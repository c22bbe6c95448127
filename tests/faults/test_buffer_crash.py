"""SIGKILL a process that appends (and acks) at random moments, again and again, then check the buffer.

The writer (``tests/faults/buffer_writer.py``) runs for a random 20-300 ms, counted from its start for half
of the runs (so some kills land in start-up recovery and the ledger write at open) and from "buffer open"
for the other half, on the same directory every time. After each kill the test reopens the buffer itself
and reads everything back:

- append-only: the records are exactly values 1..N' in order, seq == value, every byte as written, with
  N' >= the last value whose append returned; no gap, no duplicate, no quarantine (a kill only ever tears
  the tail, it never damages);
- append-and-ack (out of order, with holes and rewinds, ``maintain`` now and then): every record never
  acked is there; nothing in the last ledger printed after ``maintain`` comes back; the rest (acks not yet
  persisted) may come back, at-least-once.

Also here: damage found at reopen must neither reuse sequence numbers nor lose what is appended next.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge_gateway.buffer.base import AckLedger
from edge_gateway.buffer.codec import encode_reading
from edge_gateway.buffer.disk import HEADER, QUARANTINE, SUFFIX, DiskBuffer, frame
from edge_gateway.model import Quality, Reading
from tests.faults.buffer_writer import DEST, reading
from tests.support import report_lines

KILLS = 30  # per variant: 60 in all
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    opened_at: int | None = None  # last_seq the writer saw after opening, None if killed before
    durable: int = 0  # highest value whose append returned
    intended: list[tuple[int, int]] = field(default_factory=list)  # acks announced (maybe not done)
    persisted: AckLedger | None = None  # the last ledger entry printed after maintain()


def run_and_kill(directory: Path, out: Path, mode: str, seed: int, from_ready: bool) -> Run:
    rng = random.Random(seed)
    with out.open("w") as stdout, out.with_suffix(".err").open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.buffer_writer", str(directory), mode, str(seed)],
            stdout=stdout,
            stderr=stderr,
            cwd=REPO,
        )
    try:
        deadline = time.monotonic() + 60  # only gives up waiting
        while from_ready and not out.read_text().startswith("O ") and proc.poll() is None:
            assert time.monotonic() < deadline, "writer did not open the buffer within 60 s"
            time.sleep(0.002)
        time.sleep(rng.uniform(0.02, 0.3))
        assert proc.poll() is None, f"writer exited by itself with {proc.returncode}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run = Run()
    for kind, rest in report_lines(out):  # whole lines only: a kill may cut the last one
        if kind == "O":
            run.opened_at = int(rest)
        elif kind == "A":
            run.durable = max(run.durable, int(rest))
        elif kind == "I":
            a, b = rest.split()
            run.intended.append((int(a), int(b)))
        elif kind == "P":
            entry = json.loads(rest)
            run.persisted = AckLedger(entry["acked_through"], entry["acked_ranges"])
    return run


def read_back(directory: Path) -> tuple[list[int], int]:
    """Reopen as the gateway would after the crash; return (seqs handed out, last_seq), checking every record."""
    import asyncio  # noqa: PLC0415 - keep the module's top level free of event-loop state

    async def go() -> tuple[list[int], int]:
        buf = DiskBuffer(directory, [DEST], max_bytes=1 << 30)
        seqs: list[int] = []
        try:
            while records := await buf.read(DEST, 20_000, 0):
                for r in records:
                    assert r.reading == reading(r.seq), f"seq {r.seq} holds {r.reading!r}"
                seqs.extend(r.seq for r in records)
            return seqs, buf.stats().last_seq
        finally:
            await buf.close()

    return asyncio.run(go())


def tear_tail(directory: Path, last: int, rng: random.Random) -> bool:
    """Leave what a write cut short by the kill leaves: a strict prefix of the next records' frames.

    Real kills rarely land inside the write() itself (it is microseconds next to the fsync), so a third of
    the runs add such a prefix to the last segment. Returns whether it ends inside a record.
    """
    data = b"".join(frame(s, encode_reading(reading(s))) for s in range(last + 1, last + 1 + rng.randint(1, 4)))
    cut = rng.randint(1, len(data) - 1)
    with max(directory.glob("*" + SUFFIX)).open("ab") as f:
        f.write(data[:cut])
    ends, offset = set(), 0
    while offset < len(data):
        offset += HEADER.size + HEADER.unpack_from(data, offset)[0]
        ends.add(offset)
    return cut not in ends


def acked_in(ledger: AckLedger | None, seq: int) -> bool:
    return ledger is not None and ledger.next_unacked(seq) != seq


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["append", "ack"], ids=["append-only", "append-and-ack"])
def test_sigkill_at_random_moments_loses_nothing_that_was_durable(
    tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(f"buffer-crash-{mode}")
    directory = tmp_path / "buffer"
    highest = 0  # last_seq after the previous check
    durable_ever = 0
    intended = AckLedger()  # every ack any writer announced, over all runs
    persisted: AckLedger | None = None  # the newest ledger a writer saw on disk, over all runs
    landed_mid_append = torn = 0
    for i in range(KILLS):
        seed = rng.randrange(1 << 30)
        run = run_and_kill(directory, tmp_path / f"writer-{i}.out", mode, seed, from_ready=i % 2 == 1)
        context = f"kill {i} (writer seed {seed}, mode {mode})"
        if run.opened_at is not None:
            assert run.opened_at >= durable_ever, f"{context}: the writer reopened at {run.opened_at}"
        durable_ever = max(durable_ever, run.durable)
        landed_mid_append += run.durable > (run.opened_at or 0)
        for a, b in run.intended:
            intended.add(a, b)
        persisted = run.persisted or persisted

        seqs, last = read_back(directory)
        assert not (directory / QUARANTINE).exists(), f"{context}: a kill was taken for damage"
        assert last >= durable_ever, f"{context}: appends up to {durable_ever} returned, buffer ends at {last}"
        assert last >= highest, f"{context}: last_seq went back from {highest} to {last}"
        assert seqs == sorted(set(seqs)), f"{context}: duplicate or out-of-order records"
        if mode == "append":
            assert seqs == list(range(1, last + 1)), f"{context}: records are not exactly 1..{last}"
        else:
            handed = set(seqs)
            missing = [s for s in range(1, last + 1) if s not in handed and not acked_in(intended, s)]
            assert not missing, f"{context}: never-acked records lost: {missing[:10]}"
            back = [s for s in seqs if acked_in(persisted, s)]
            assert not back, f"{context}: records whose ack was persisted came back: {back[:10]}"
        highest = last
        if i % 3 == 2 and i < KILLS - 1:
            torn += tear_tail(directory, last, rng)
    print(
        "STATS", mode, landed_mid_append, durable_ever, highest, sum(f.stat().st_size for f in directory.glob("*.seg"))
    )
    assert landed_mid_append >= KILLS // 3, f"only {landed_mid_append} kills hit a running writer"
    assert durable_ever > 1000
    # Each tear was found and cut, by the next writer or by the check (a writer killed between its log line
    # and the truncation leaves it to be cut, and logged, once more).
    cuts = sum("interrupted write" in r.getMessage() for r in caplog.records)
    cuts += sum(f.read_text().count("interrupted write") for f in tmp_path.glob("writer-*.err"))
    print("TORN", torn, cuts)
    assert cuts >= torn > 0


# ---- damage found at reopen ----------------------------------------------------------------------------


def _r(i: int) -> Reading:
    return Reading("plc", "plc.counter", i, Quality.GOOD, 1_700_000_000_000_000_000 + i)


def _damage_record(segment: Path, index: int) -> None:
    """Flip one payload byte of the record at ``index`` (0-based) of ``segment``: its CRC fails."""
    data = bytearray(segment.read_bytes())
    at = 0
    for _ in range(index):
        at += HEADER.size + HEADER.unpack_from(data, at)[0]
    data[at + HEADER.size + 2] ^= 0xFF
    segment.write_bytes(bytes(data))


async def test_append_after_damage_cut_at_open_is_not_lost(tmp_path: Path) -> None:
    buf = DiskBuffer(tmp_path, [DEST], segment_bytes=1 << 20)
    await buf.append([_r(i) for i in range(1, 21)])
    buf.ack(DEST, 1, 5)
    await buf.close()  # the ledger now says next_seq 21
    _damage_record(max(tmp_path.glob("*.seg")), 10)  # record 11 of 20
    buf = DiskBuffer(tmp_path, [DEST], segment_bytes=1 << 20)
    await buf.append([_r(100)])  # returned: durable
    got = await buf.read(DEST, 100, 0)
    await buf.close()
    assert [r.seq for r in got] == [6, 7, 8, 9, 10, 21]
    assert got[-1].reading.value == 100
    again = DiskBuffer(tmp_path, [DEST], segment_bytes=1 << 20)  # and still so after the next reopen
    got = await again.read(DEST, 100, 0)
    await again.append([_r(101)])
    got += await again.read(DEST, 100, 0)
    await again.close()
    assert [(r.seq, r.reading.value) for r in got] == [(6, 6), (7, 7), (8, 8), (9, 9), (10, 10), (21, 100), (22, 101)]


async def test_damage_cut_at_open_is_counted(tmp_path: Path) -> None:
    buf = DiskBuffer(tmp_path, [DEST], segment_bytes=1 << 20)
    await buf.append([_r(i) for i in range(1, 21)])
    buf.ack(DEST, 1, 1)
    await buf.close()
    _damage_record(max(tmp_path.glob("*.seg")), 10)
    buf = DiskBuffer(tmp_path, [DEST], segment_bytes=1 << 20)
    dropped = buf.stats().dropped["corrupt"]
    await buf.close()
    assert dropped == 10


async def test_sequence_numbers_survive_a_crash_after_the_active_segment_is_quarantined(tmp_path: Path) -> None:
    buf = DiskBuffer(tmp_path, [DEST], segment_bytes=1 << 20)
    await buf.append([_r(i) for i in range(1, 11)])
    _damage_record(max(tmp_path.glob("*.seg")), 4)  # bit rot while running
    assert [r.seq for r in await buf.read(DEST, 100, 0)] == [1, 2, 3, 4]  # 5 fails: segment quarantined
    buf._close_fd()  # kill -9: no close(), no maintain()
    reopened = DiskBuffer(tmp_path, [DEST], segment_bytes=1 << 20)
    last = reopened.stats().last_seq
    await reopened.close()
    assert last == 10


async def test_crash_right_after_open_with_an_empty_active_segment_keeps_numbering(tmp_path: Path) -> None:
    """A kill between creating a new segment file and writing to it leaves an empty last segment."""
    buf = DiskBuffer(tmp_path, [DEST], segment_bytes=256)
    for i in range(1, 41, 4):
        await buf.append([_r(j) for j in range(i, i + 4)])
    buf._close_fd()
    (tmp_path / f"{41:020d}.seg").touch()  # what the roll leaves behind when killed before the write
    os.sync()
    buf = DiskBuffer(tmp_path, [DEST], segment_bytes=256)
    await buf.append([_r(41)])
    got = await buf.read(DEST, 100, 0)
    await buf.close()
    assert [r.seq for r in got] == list(range(1, 42))
    assert [r.reading.value for r in got] == list(range(1, 42))


async def test_damage_cut_at_open_never_reuses_sequence_numbers(tmp_path: Path) -> None:
    buf = DiskBuffer(tmp_path, [DEST], segment_bytes=1 << 20)
    await buf.append([_r(i) for i in range(1, 21)])
    assert len(await buf.read(DEST, 100, 0)) == 20  # all of them handed out, i.e. published
    buf._close_fd()  # killed: the ledger still says next_seq 1
    _damage_record(max(tmp_path.glob("*.seg")), 10)
    buf = DiskBuffer(tmp_path, [DEST], segment_bytes=1 << 20)
    await buf.append([_r(100)])
    got = await buf.read(DEST, 100, 0)
    await buf.close()
    assert [r.seq for r in got][:10] == list(range(1, 11))
    assert got[-1].reading.value == 100
    assert got[-1].seq > 20


async def test_a_quarantined_segment_in_the_middle_settles_only_its_own_records(tmp_path: Path) -> None:
    buf = DiskBuffer(tmp_path, [DEST], segment_bytes=400)
    for i in range(1, 61, 5):
        await buf.append([_r(j) for j in range(i, i + 5)])
    await buf.close()
    segments = sorted(tmp_path.glob("*.seg"))
    assert len(segments) >= 3
    middle = segments[1]
    lost = range(int(middle.stem), int(segments[2].stem))
    _damage_record(middle, 0)
    buf = DiskBuffer(tmp_path, [DEST], segment_bytes=400)
    first_read = [r.seq for r in await buf.read(DEST, 1000, 0)]
    buf.ack(DEST, first_read[-1], first_read[-1])  # only the newest: everything older stays owed
    dropped = buf.stats().dropped["corrupt"]
    await buf.close()
    again = DiskBuffer(tmp_path, [DEST], segment_bytes=400)
    second_read = [r.seq for r in await again.read(DEST, 1000, 0)]
    await again.close()
    owed = [s for s in range(1, 61) if s not in lost]
    assert first_read[: int(middle.stem) - 1] == owed[: int(middle.stem) - 1]
    assert dropped == len(lost)
    # The records before the quarantined segment were never acked: they come back after a reopen.
    assert second_read == owed[:-1]
