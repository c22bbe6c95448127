"""Power-cut writer for the disk buffer: appends (and acks) until the power goes, saying what is durable.

Run as ``python -m tests.powerloss.buffer_writer DIR WORKLOAD SEED [--break fsync|dirsync]``. It uses
``tests/faults/buffer_writer.py`` (its readings, appenders, acker and line format) with settings made for
power cuts, and prints the same lines, flushed:

    O <last_seq>     the buffer is open (recovery done)
    A <n>            an append of values up to n returned: every value <= n must survive
    I <first> <last> about to ack first..last (an upper bound of what may be acked)
    P <ledger json>  maintain() returned; the destination's entry in ledger.json, durable
    X <first> <last> <count>  the buffer dropped seqs first..last for want of room, <count> of them unacked (its
                     own log line, written right after the segment is unlinked and the drop counted)

WORKLOAD: ``append`` (appends only; segments of 1-8 KiB, so they roll often), ``ack`` (appends, plus acks out of
order with holes and rewinds and ``maintain``: sealed segments are deleted once acked), ``full`` (appends into a
small buffer with ``when_full = drop_oldest``, batches sometimes as large as most of it, so whole buffers are
dropped too; ``maintain`` now and then).

``--break`` makes this process lose durability on purpose, for the harness's self-test (the product is not
changed): ``fsync`` makes ``os.fsync`` and ``os.fdatasync`` do nothing; ``dirsync`` makes
``edge_gateway.util.files.fsync_dir`` do nothing. Both are patched before the product is imported.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
from pathlib import Path
from typing import Any

DROPPED = "buffer: dropped"  # the start of retention.drop_segment's log line


def _no_fsync(fd: object) -> None:
    pass


def _no_fsync_dir(directory: Path) -> None:
    pass


def break_durability(what: str | None) -> None:
    if what == "fsync":
        os.fsync = _no_fsync
        os.fdatasync = _no_fsync
    elif what == "dirsync":
        from edge_gateway.util import files  # noqa: PLC0415 - patched before the buffer imports it

        files.fsync_dir = _no_fsync_dir


class _Drops(logging.Handler):
    """Turns the buffer's drop log line into an ``X`` line (one write: the commit thread prints it)."""

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith(DROPPED) and isinstance(record.args, tuple):
            lost, first, last, reason = record.args
            if reason == "full":
                os.write(1, f"X {first} {last} {lost}\n".encode())


async def run(directory: Path, workload: str, seed: int) -> None:
    from edge_gateway.buffer.disk import DiskBuffer  # noqa: PLC0415 - imported after break_durability()
    from tests.faults.buffer_writer import DEST, Writer, reading, say  # noqa: PLC0415

    rng = random.Random(seed)
    settings: dict[str, Any] = {"segment_bytes": rng.choice([2048, 8192, 32_768]), "max_bytes": 1 << 30}
    if workload == "full":
        segment_bytes, max_bytes = rng.choice([(4096, 49_152), (16_384, 49_152), (32_768, 65_536)])
        settings = {"segment_bytes": segment_bytes, "max_bytes": max_bytes, "when_full": "drop_oldest"}
        drops = logging.getLogger("edge_gateway.buffer.disk")
        drops.addHandler(_Drops())
        drops.setLevel(logging.WARNING)
    buf = DiskBuffer(directory, [DEST], fsync_interval_ms=rng.choice([0, 0, 1]), **settings)
    writer = Writer(buf, rng)
    say(f"O {writer.next_value - 1}")

    async def fill() -> None:
        while True:
            # Never more than the buffer holds (a commit larger than max_bytes is rejected, and its numbers with it):
            # at most 60 readings of at most ~700 bytes, and one appender when the buffer is small.
            k = rng.randint(1, 20) if rng.random() < 0.9 else rng.randint(40, 60)
            first = writer.next_value
            writer.next_value += k
            await buf.append([reading(v) for v in range(first, first + k)])
            say(f"A {first + k - 1}")
            if rng.random() < 0.05:
                await buf.maintain()
            await asyncio.sleep(rng.uniform(0, 0.003))

    async with asyncio.TaskGroup() as tg:
        for i in range(1 if workload == "full" else rng.randint(1, 3)):
            tg.create_task(fill(), name=f"appender:{i}")
        if workload == "ack":
            tg.create_task(writer.ack_forever(), name="acker")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("directory", type=Path)
    parser.add_argument("workload", choices=["append", "ack", "full"])
    parser.add_argument("seed", type=int)
    parser.add_argument("--break", dest="broken", choices=["fsync", "dirsync"])
    args = parser.parse_args()
    break_durability(args.broken)
    asyncio.run(run(args.directory, args.workload, args.seed))


if __name__ == "__main__":
    main()
