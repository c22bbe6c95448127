"""Real OS limits, not a mocked write: a full filesystem (tmpfs of 256 KiB) and RLIMIT_FSIZE (EFBIG)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_gateway.buffer.disk import DiskBuffer
from edge_gateway.errors import BufferIOError
from edge_gateway.model import Quality, Reading


def reading(i: int) -> Reading:
    return Reading("plc", "plc.counter", i, Quality.GOOD, 1_700_000_000_000_000_000 + i)


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "vol"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], capture_output=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {result.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


async def test_full_disk_counts_what_it_cannot_store_keeps_serving_and_recovers(small_volume: Path) -> None:
    buf = DiskBuffer(small_volume / "buffer", ["cloud"], segment_bytes=16_384, max_bytes=1 << 30)
    stored = rejected = 0
    errors: list[str] = []
    for batch_no in range(400):
        batch = [reading(batch_no * 20 + i) for i in range(20)]
        try:
            await buf.append(batch)
            stored += 20
        except BufferIOError as exc:
            rejected += 20
            errors.append(str(exc))
            if rejected >= 100:
                break
    assert rejected >= 100, "the 256 KiB volume never filled"
    assert "ENOSPC" in errors[0]
    assert "free disk space" in errors[0]
    assert buf.stats().dropped["io_error"] == rejected
    # Everything stored before the disk filled is still served, in order.
    records = []
    while more := await buf.read("cloud", 10_000, 0):
        records.extend(more)
    assert [r.seq for r in records] == list(range(1, stored + 1))
    # Space returns (the cloud acked everything, so the segments go): appends work again, numbering
    # continues with no gap in what was stored.
    buf.ack("cloud", 1, stored)
    await buf.maintain()
    await buf.append([reading(1_000_000)])
    again = await buf.read("cloud", 10, 0)
    assert [r.seq for r in again] == [stored + 1]
    assert again[0].reading.value == 1_000_000
    await buf.close()
    reopened = DiskBuffer(small_volume / "buffer", ["cloud"], segment_bytes=16_384, max_bytes=1 << 30)
    assert reopened.stats().last_seq == stored + 1
    await reopened.close()


_EFBIG_WRITER = """
import asyncio, resource, signal, sys
from pathlib import Path
from edge_gateway.buffer.disk import DiskBuffer
from edge_gateway.errors import BufferIOError
from edge_gateway.model import Quality, Reading

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (12_000, 12_000))

async def main():
    buf = DiskBuffer(Path(sys.argv[1]), ["cloud"], segment_bytes=1 << 20, max_bytes=1 << 30)
    ok = failed = 0
    for i in range(300):
        try:
            await buf.append([Reading("p", "p.c", i * 10 + k, Quality.GOOD, i * 10 + k) for k in range(10)])
            ok += 10
        except BufferIOError as exc:
            failed += 10
            last_error = str(exc)
    records = []
    while more := await buf.read("cloud", 10_000, 0):
        records.extend(more)
    await buf.close()
    seqs = [r.seq for r in records]
    assert seqs == list(range(1, ok + 1)), "stored records not contiguous"
    print(ok, failed, buf.stats().dropped["io_error"], buf.stats().segments, "EFBIG" in last_error)

asyncio.run(main())
"""


def test_file_size_limit_efbig_is_counted_and_the_buffer_moves_on_to_new_segments(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _EFBIG_WRITER, str(tmp_path / "buffer")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ok, failed, dropped, segments, efbig = result.stdout.split()
    assert int(failed) > 0
    assert int(dropped) == int(failed)
    assert efbig == "True"
    # Each segment filled up to the 12 kB limit, then a new one was started: one failed append of 10 per
    # segment (however many records a segment holds), and most readings were stored.
    assert int(segments) >= int(failed) // 10 >= 5
    assert int(ok) > int(failed)
