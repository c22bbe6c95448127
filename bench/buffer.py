"""Buffer benchmark: durable appends/s, drain/s, write amplification, RSS with a large backlog, recovery,
and the bytes a real block device receives per payload byte (bench/wear.py).

    python -m bench.buffer [--readings 10000000] [--dir DIR] [--wear-seconds 10]

One process, the disk buffer on a temporary directory (or ``--dir``): realistic readings (~50-byte
records: source, alias, float value, timestamps). Then the device-wear rows (``--wear-seconds`` each, 0 to
skip): an ext4 file system on a loop device, paced appends at 100, 1,000 and 10,000 readings/s with
``fsync_interval_ms`` 0, 100 and 1,000; skipped with one line where loop devices cannot be used. Prints the
tables and writes bench/results/buffer.json (the ``wear_*`` keys are bench/wear.py's).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import sys
import time
from pathlib import Path

from bench import wear
from bench.common import print_table, rss_mb, scratch_dir, write_results
from bench.wear import write_bytes
from edge_gateway.buffer.codec import encode_reading
from edge_gateway.buffer.disk import DiskBuffer
from edge_gateway.model import Quality, Reading

BATCH = 1000
APPENDERS = 4


def batch(start: int, n: int) -> list[Reading]:
    t0 = 1_764_000_000_000_000_000
    return [
        Reading("line1", f"line1.tag{i % 500}", 20.0 + (i % 997) * 0.01, Quality.GOOD, t0 + i * 1000, t0 + i * 1000)
        for i in range(start, start + n)
    ]


def open_buffer(path: Path) -> DiskBuffer:
    return DiskBuffer(path, ["cloud"], max_bytes=8 << 30, segment_bytes=64 << 20)


async def append_rate(path: Path, seconds: float) -> dict[str, float]:
    buf = open_buffer(path)
    sample = batch(0, BATCH)
    payload_per_batch = sum(len(encode_reading(r)) for r in sample)
    done = 0
    calls = 0
    stop_at = time.monotonic() + seconds

    async def appender() -> None:
        nonlocal done, calls
        while time.monotonic() < stop_at:
            await buf.append(sample)
            done += BATCH
            calls += 1

    w0, t0 = write_bytes(), time.monotonic()
    await asyncio.gather(*(appender() for _ in range(APPENDERS)))
    elapsed = time.monotonic() - t0
    await buf.close()
    written = write_bytes() - w0
    return {
        "append_readings_per_s": round(done / elapsed),
        "appends_per_s": round(calls / elapsed),
        "disk_bytes_per_payload_byte": round(written / (payload_per_batch * calls), 3),
        "appended": done,
    }


async def drain_rate(path: Path) -> dict[str, float]:
    buf = open_buffer(path)
    drained = 0
    t0 = time.monotonic()
    while records := await buf.read("cloud", 10_000, 0):
        buf.ack("cloud", records[0].seq, records[-1].seq)
        drained += len(records)
    await buf.maintain()
    elapsed = time.monotonic() - t0
    await buf.close()
    return {"drain_readings_per_s": round(drained / elapsed), "drained": drained}


async def backlog(path: Path, readings: int) -> dict[str, float]:
    gc.collect()
    empty = rss_mb()
    buf = open_buffer(path)
    step = 10_000
    for start in range(0, readings, step):
        await buf.append(batch(start, min(step, readings - start)))
    gc.collect()
    full = rss_mb()
    await buf.close()
    t0 = time.monotonic()
    reopened = open_buffer(path)
    first = await reopened.read("cloud", 1000, 0)
    recovery = time.monotonic() - t0
    held = reopened.stats().records
    await reopened.close()
    assert len(first) == 1000
    return {
        "rss_mb_empty": round(empty, 1),
        "rss_mb_10m": round(full, 1),
        "rss_growth_mb_empty_to_10m": round(full - empty, 1),
        "recovery_s_10m": round(recovery, 3),
        "backlog_readings": held,
    }


async def run(base: Path, readings: int, seconds: float) -> dict[str, float]:
    result: dict[str, float] = {}
    result |= await append_rate(base / "rate", seconds)
    result |= await drain_rate(base / "rate")
    shutil.rmtree(base / "rate")
    result |= await backlog(base / "backlog", readings)
    shutil.rmtree(base / "backlog")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description="Durable buffer benchmark")
    parser.add_argument("--readings", type=int, default=10_000_000, help="backlog size for RSS and recovery")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to measure appends")
    parser.add_argument(
        "--dir", type=Path, help="where to put the buffer and the wear image file (default: a temporary directory)"
    )
    parser.add_argument(
        "--wear-seconds", type=float, default=10.0, help="how long each device-wear row appends (0: skip them)"
    )
    args = parser.parse_args()
    with scratch_dir("buffer", args.dir) as tmp:
        result = asyncio.run(run(tmp, args.readings, args.seconds))
    rows = [
        (
            "durable appends",
            f"{result['append_readings_per_s']:,.0f} readings/s ({result['appends_per_s']:,.0f} commits/s)",
        ),
        ("drain (read + ack)", f"{result['drain_readings_per_s']:,.0f} readings/s"),
        ("disk bytes / payload byte", f"{result['disk_bytes_per_payload_byte']:.3f}"),
        (
            "RSS empty -> backlog",
            (
                f"{result['rss_mb_empty']:.1f} -> {result['rss_mb_10m']:.1f} MB "
                f"({result['backlog_readings']:,.0f} readings)"
            ),
        ),
        ("open + first read, backlog", f"{result['recovery_s_10m']:.3f} s"),
    ]
    print_table(rows, width=28)
    if args.wear_seconds > 0:
        result |= wear.measure(args.wear_seconds, args.dir)
    write_results("buffer", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
