"""Crash-test writer: appends numbered readings to a DiskBuffer until killed, saying what is durable.

Run as ``python -m tests.faults.buffer_writer DIR [--ack]``. Prints ``A n`` after an append of values up to n
returned (durable), and with ``--ack`` also ``P n`` after acks up to n were persisted by ``maintain()``.
Values equal sequence numbers, so a reader can check both.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

from edge_gateway.buffer.disk import DiskBuffer
from edge_gateway.model import Quality, Reading


def reading(value: int) -> Reading:
    return Reading("crash", "crash.counter", value, Quality.GOOD, 1_700_000_000_000_000_000 + value)


async def main(directory: Path, ack: bool) -> None:
    rng = random.Random()
    buf = DiskBuffer(directory, ["cloud"], segment_bytes=16_384, max_bytes=1 << 30)
    value = buf.stats().last_seq + 1
    while True:
        k = rng.randint(1, 50)
        await buf.append([reading(value + i) for i in range(k)])
        value += k
        print(f"A {value - 1}", flush=True)
        if ack and rng.random() < 0.5:
            records = await buf.read("cloud", rng.randint(1, 120), 0)
            if records:
                buf.ack("cloud", records[0].seq, records[-1].seq)
            if rng.random() < 0.3:
                await buf.maintain()
                print(f"P {buf.stats().last_seq - buf.stats().unacked['cloud']}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), "--ack" in sys.argv[2:]))
