"""Crash-test writer: appends numbered readings to a DiskBuffer until it is killed, saying what is durable.

Run as ``python -m tests.faults.buffer_writer DIR MODE SEED`` with MODE ``append`` or ``ack``. It writes
one line per event to stdout, flushed:

    O <last_seq>          the buffer is open (recovery done); numbering continues after last_seq
    A <n>                 an append of values up to n returned: every value <= n is durable
    I <first> <last>      about to ack first..last (printed before the ack, so it is an upper bound)
    P <ledger json>       maintain() returned; this is the destination's entry in ledger.json on disk

Values are consecutive integers equal to the sequence numbers they get; ``reading(v)`` is the only reading
ever stored under ``v`` (its size varies with ``v``), so a checker can verify every byte it reads back.
Several appenders run at once so appends share group commits; segment size and commit linger vary per
run, so one directory sees segments written with different settings.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path

from edge_gateway.buffer.disk import LEDGER, DiskBuffer
from edge_gateway.model import Quality, Reading

DEST = "cloud"


def reading(value: int) -> Reading:
    pad = "x" * (value * 7919 % 613)  # 0..612 characters: records of many sizes, some spanning pages
    return Reading("crash", "crash.counter", value, Quality.GOOD, 1_700_000_000_000_000_000 + value, None, pad)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Writer:
    def __init__(self, buf: DiskBuffer, rng: random.Random) -> None:
        self.buf = buf
        self.rng = rng
        self.next_value = buf.stats().last_seq + 1

    async def append_forever(self) -> None:
        while True:
            k = self.rng.randint(1, 40) if self.rng.random() < 0.98 else self.rng.randint(300, 1500)
            first = self.next_value
            self.next_value += k  # reserved before the call: group commits keep the callers' order
            await self.buf.append([reading(v) for v in range(first, first + k)])
            say(f"A {first + k - 1}")
            await asyncio.sleep(self.rng.uniform(0, 0.003))

    async def ack_forever(self) -> None:
        while True:
            records = await self.buf.read(DEST, self.rng.randint(1, 150), 0.05)
            if records:
                # Split the batch into pieces acked out of order; sometimes a piece is not acked at all
                # (a failed publish) and a later rewind hands it out again.
                cuts = sorted(self.rng.sample(range(1, len(records)), min(2, len(records) - 1)))
                pieces = [records[a:b] for a, b in zip([0, *cuts], [*cuts, len(records)], strict=True)]
                self.rng.shuffle(pieces)
                for piece in pieces:
                    if self.rng.random() < 0.85:
                        say(f"I {piece[0].seq} {piece[-1].seq}")
                        self.buf.ack(DEST, piece[0].seq, piece[-1].seq)
                if self.rng.random() < 0.1:
                    self.buf.rewind(DEST)
            if self.rng.random() < 0.3:
                await self.buf.maintain()
                ledger = json.loads((self.buf.path / LEDGER).read_bytes())
                say("P " + json.dumps(ledger["destinations"][DEST], separators=(",", ":")))


async def main(directory: Path, mode: str, seed: int) -> None:
    rng = random.Random(seed)
    buf = DiskBuffer(
        directory,
        [DEST],
        segment_bytes=rng.choice([2048, 16_384, 65_536]),
        fsync_interval_ms=rng.choice([0, 0, 1]),
        max_bytes=1 << 30,
    )
    writer = Writer(buf, rng)
    say(f"O {writer.next_value - 1}")
    async with asyncio.TaskGroup() as tg:
        for i in range(rng.randint(1, 3)):
            tg.create_task(writer.append_forever(), name=f"appender:{i}")
        if mode == "ack":
            tg.create_task(writer.ack_forever(), name="acker")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
