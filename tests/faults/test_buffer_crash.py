"""SIGKILL a process that appends (and acks) at random moments, again and again, then check the buffer.

After every kill: every value whose ``append`` returned is present, in order, exactly once; sequence
numbers continue without reuse; and nothing whose ack was persisted comes back.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_gateway.buffer.disk import DiskBuffer

pytestmark = pytest.mark.slow

KILLS = 30  # per mode: 60 in all


def run_and_kill(directory: Path, ack: bool, rng: random.Random) -> tuple[int, int]:
    """Start the writer, let it run a random while, SIGKILL it; return (last durable, last persisted ack)."""
    args = [sys.executable, "-m", "tests.faults.buffer_writer", str(directory)] + (["--ack"] if ack else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    # Wait for the first durable append, then kill at a random moment while it keeps going.
    first = proc.stdout.readline()
    assert first.startswith("A "), first
    time.sleep(rng.uniform(0.02, 0.3))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lines = [first, *proc.stdout.read().splitlines()]
    proc.stdout.close()
    durable = max(int(line[2:]) for line in lines if line.startswith("A "))
    persisted = max((int(line[2:]) for line in lines if line.startswith("P ")), default=0)
    return durable, persisted


async def check(directory: Path, durable: int, persisted_ack: int) -> int:
    buf = DiskBuffer(directory, ["cloud"], segment_bytes=16_384, max_bytes=1 << 30)
    seqs: list[int] = []
    while records := await buf.read("cloud", 50_000, 0):
        for r in records:
            assert r.reading.value == r.seq, "a record came back under another sequence number"
        seqs.extend(r.seq for r in records)
    last = buf.stats().last_seq
    await buf.close()
    assert last >= durable, f"appends up to {durable} returned, but the buffer ends at {last}"
    if seqs:
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), "gap, duplicate or reordering after reopen"
        assert seqs[-1] == last
        assert seqs[0] > persisted_ack, f"records acked (and persisted) up to {persisted_ack} came back"
    return last


@pytest.mark.parametrize("ack", [False, True], ids=["append-only", "append-and-ack"])
async def test_sigkill_at_random_moments_loses_nothing_that_was_durable(tmp_path: Path, ack: bool) -> None:
    rng = random.Random(1234 + ack)
    directory = tmp_path / "buffer"
    highest = 0
    persisted_ack = 0
    for _ in range(KILLS):
        durable, persisted = await asyncio.to_thread(run_and_kill, directory, ack, rng)
        persisted_ack = max(persisted_ack, persisted)
        assert durable > highest, "the writer did not continue numbering after the previous crash"
        highest = await check(directory, durable, persisted_ack)
