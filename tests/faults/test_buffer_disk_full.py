"""A really full volume, not a mocked write: a small tmpfs filled up by a file the test owns.

Shown here: an append that hits ENOSPC raises ``BufferIOError`` (retryable, ENOSPC in the message, the
OSError as its cause), counts its readings in ``dropped["io_error"]``, consumes no sequence numbers and
leaves no partial record behind; concurrent appends sharing that group commit all hear of it; the buffer
keeps serving reads and taking acks; once the filler is deleted appends work again and numbering goes on
without a gap in what was stored, also after a reopen. Running out of inodes fails the segment roll the
same way. A buffer on a full volume still opens and serves its backlog, and acks whose ledger write failed
are written by a later ``close()``.

Needs root for ``mount -t tmpfs``; skipped with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_gateway.buffer.base import Record
from edge_gateway.buffer.disk import QUARANTINE, SUFFIX, DiskBuffer
from edge_gateway.errors import BufferIOError
from edge_gateway.model import Quality, Reading
from tests.faults.conftest import fill, mount_tmpfs

DESTS = ("cloud", "sitewise")


def reading(i: int) -> Reading:
    return Reading("plc", "plc.counter", i, Quality.GOOD, 1_700_000_000_000_000_000 + i, None, "p" * (i % 50))


@pytest.fixture
def few_inodes(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs with 5 inodes: its root, the buffer directory, ledger.json and two segments."""
    mount_point = tmp_path / "inodes"
    mount_tmpfs(mount_point, "size=1m,nr_inodes=5")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


async def read_all(buf: DiskBuffer, dest: str) -> list[Record]:
    out: list[Record] = []
    while more := await buf.read(dest, 10_000, 0):
        out.extend(more)
    return out


def segment_bytes_on_disk(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*" + SUFFIX))


async def test_enospc_is_counted_reads_go_on_and_appends_resume_once_space_is_freed(volume: Path) -> None:
    directory = volume / "buffer"
    buf = DiskBuffer(directory, DESTS, segment_bytes=16_384, max_bytes=1 << 30)
    stored = 0
    for _ in range(10):
        await buf.append([reading(stored + 1 + i) for i in range(40)])
        stored += 40
    filler = fill(volume)

    # A small append may still fit in the last page the active segment already has; a big one cannot.
    failed = 0
    messages: list[str] = []
    for attempt in range(5):
        batch = [reading(10_000 * (attempt + 1) + i) for i in range(300)]  # ~25 KB: more than is left
        with pytest.raises(BufferIOError) as caught:
            await buf.append(batch)
        failed += len(batch)
        messages.append(str(caught.value))
        cause = caught.value.__cause__
        assert isinstance(cause, OSError)
        assert cause.errno == errno.ENOSPC
        assert caught.value.retryable
    assert "ENOSPC" in messages[0]
    assert "free disk space" in messages[0]
    assert str(directory) in messages[0]
    stats = buf.stats()
    assert stats.dropped["io_error"] == failed
    assert stats.dropped["full"] == 0
    assert stats.last_seq == stored, "a failed append consumed sequence numbers"
    assert segment_bytes_on_disk(directory) == stats.bytes, "a partial record was left behind"

    # Still serving: both destinations get everything stored, in order, intact; acks are taken.
    for dest in DESTS:
        got = await read_all(buf, dest)
        assert [r.seq for r in got] == list(range(1, stored + 1))
        assert [r.reading for r in got] == [reading(i) for i in range(1, stored + 1)]
    buf.ack("cloud", 1, 100)
    assert buf.stats().unacked == {"cloud": stored - 100, "sitewise": stored}

    # Space comes back: appends work again and numbering continues with no gap in what was stored.
    filler.unlink()
    await buf.append([reading(stored + 1 + i) for i in range(300)])
    got = await read_all(buf, "sitewise")
    assert [r.seq for r in got] == list(range(stored + 1, stored + 301))
    assert [r.reading for r in got] == [reading(i) for i in range(stored + 1, stored + 301)]
    await buf.close()

    reopened = DiskBuffer(directory, DESTS, segment_bytes=16_384, max_bytes=1 << 30)
    everything = await read_all(reopened, "sitewise")
    assert [r.seq for r in everything] == list(range(1, stored + 301))
    assert [r.seq for r in await read_all(reopened, "cloud")] == list(range(101, stored + 301))
    assert not (directory / QUARANTINE).exists()
    await reopened.close()


async def test_concurrent_appends_sharing_a_commit_all_hear_of_enospc(volume: Path) -> None:
    buf = DiskBuffer(volume / "buffer", DESTS, segment_bytes=1 << 20, max_bytes=1 << 30)
    await buf.append([reading(i) for i in range(1, 11)])
    filler = fill(volume)
    async with asyncio.timeout(10):  # none of them may hang
        results = await asyncio.gather(
            *(buf.append([reading(1000 * k + i) for i in range(100)]) for k in range(1, 6)), return_exceptions=True
        )
    assert all(isinstance(r, BufferIOError) for r in results), results
    assert buf.stats().dropped["io_error"] == 500
    assert buf.stats().last_seq == 10
    filler.unlink()
    await asyncio.gather(*(buf.append([reading(100 + k)]) for k in range(1, 4)))
    got = await read_all(buf, "cloud")
    assert [r.seq for r in got] == list(range(1, 14))
    assert [r.reading.value for r in got] == [*range(1, 11), 101, 102, 103]
    await buf.close()


async def test_maintain_frees_settled_segments_before_it_needs_space_for_the_ledger(volume: Path) -> None:
    directory = volume / "buffer"
    buf = DiskBuffer(directory, DESTS, segment_bytes=4096, max_bytes=1 << 30)
    for i in range(1, 601, 30):
        await buf.append([reading(j) for j in range(i, i + 30)])
    segments = buf.stats().segments
    assert segments > 4
    fill(volume)
    for dest in DESTS:
        buf.ack(dest, 1, 300)
    await buf.maintain()  # deletes what both acked, then has room for the ledger
    assert buf.stats().segments < segments
    await buf.close()
    reopened = DiskBuffer(directory, DESTS, segment_bytes=4096, max_bytes=1 << 30)
    assert [r.seq for r in await read_all(reopened, "cloud")] == list(range(301, 601))
    await reopened.close()


async def test_no_inode_for_a_new_segment_is_an_io_error_and_recovers(few_inodes: Path) -> None:
    directory = few_inodes / "buffer"
    buf = DiskBuffer(directory, ["cloud"], segment_bytes=2048, max_bytes=1 << 30)
    await buf.append([reading(i) for i in range(1, 21)])  # segment 1
    await buf.append([reading(i) for i in range(21, 41)])  # does not fit: segment 2
    with pytest.raises(BufferIOError, match="cannot open a segment") as caught:
        await buf.append([reading(i) for i in range(41, 61)])  # segment 3: no inode left
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.ENOSPC
    assert buf.stats().dropped["io_error"] == 20
    assert buf.stats().last_seq == 40
    got = await read_all(buf, "cloud")
    assert [r.seq for r in got] == list(range(1, 41))
    buf.ack("cloud", 1, 20)
    await buf.maintain()  # segment 1 goes: one inode back
    await buf.append([reading(i) for i in range(41, 61)])
    got = await read_all(buf, "cloud")
    assert [(r.seq, r.reading.value) for r in got] == [(i, i) for i in range(41, 61)]
    buf.ack("cloud", 21, 40)
    await buf.maintain()
    await buf.close()


async def test_a_buffer_on_a_full_volume_still_opens_and_serves_its_backlog(volume: Path) -> None:
    directory = volume / "buffer"
    buf = DiskBuffer(directory, DESTS, segment_bytes=16_384, max_bytes=1 << 30)
    await buf.append([reading(i) for i in range(1, 101)])
    await buf.close()
    filler = fill(volume)
    reopened = DiskBuffer(directory, DESTS, segment_bytes=16_384, max_bytes=1 << 30)
    assert [r.seq for r in await read_all(reopened, "cloud")] == list(range(1, 101))
    filler.unlink()
    await reopened.close()


async def test_acks_whose_ledger_write_failed_are_written_once_space_is_back(volume: Path) -> None:
    directory = volume / "buffer"
    buf = DiskBuffer(directory, ["cloud"], segment_bytes=1 << 20, max_bytes=1 << 30)
    await buf.append([reading(i) for i in range(1, 51)])
    buf.ack("cloud", 1, 10)  # nothing settles: the only segment is the active one
    filler = fill(volume)
    with pytest.raises(OSError, match="No space left") as caught:  # the supervisor logs and retries this
        await buf.maintain()
    assert caught.value.errno == errno.ENOSPC
    filler.unlink()
    await buf.close()
    reopened = DiskBuffer(directory, ["cloud"], segment_bytes=1 << 20, max_bytes=1 << 30)
    first = (await reopened.read("cloud", 1, 0))[0].seq
    await reopened.close()
    assert first == 11
