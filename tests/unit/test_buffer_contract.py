"""One contract suite run against every buffer implementation, plus disk-only durability cases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from edge_gateway.buffer.base import Buffer
from edge_gateway.buffer.codec import encode_reading
from edge_gateway.buffer.disk import HEADER, DiskBuffer, frame
from edge_gateway.buffer.memory import MemoryBuffer
from edge_gateway.errors import BufferFullError
from edge_gateway.model import Quality, Reading

DESTS = ("cloud", "sitewise")


def reading(i: int, source: str = "plc") -> Reading:
    return Reading(source, f"{source}.counter", i, Quality.GOOD, 1_700_000_000_000_000_000 + i, None, None)


Factory = Callable[[Path], Buffer]

FACTORIES: dict[str, Factory] = {
    "memory": lambda _p: MemoryBuffer(DESTS),
    "disk": lambda p: DiskBuffer(p / "buf", DESTS, segment_bytes=4096, max_bytes=1 << 20),
}


@pytest.fixture(params=sorted(FACTORIES))
async def buf(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Buffer]:
    b = FACTORIES[request.param](tmp_path)
    yield b
    await b.close()


async def test_append_read_in_order_with_sequence_numbers(buf: Buffer) -> None:
    await buf.append([reading(i) for i in range(1, 501)])
    got = await buf.read("cloud", 10_000, 0.1)
    assert [r.seq for r in got] == list(range(1, 501))
    assert [r.reading.value for r in got] == list(range(1, 501))
    assert got[0].reading == reading(1)


async def test_each_destination_has_its_own_cursor(buf: Buffer) -> None:
    await buf.append([reading(i) for i in range(10)])
    a = await buf.read("cloud", 4, 0.1)
    b = await buf.read("sitewise", 100, 0.1)
    a2 = await buf.read("cloud", 100, 0.1)
    assert [r.seq for r in a] == [1, 2, 3, 4]
    assert [r.seq for r in b] == list(range(1, 11))
    assert [r.seq for r in a2] == list(range(5, 11))


async def test_read_waits_for_data_and_times_out_empty(buf: Buffer) -> None:
    assert await buf.read("cloud", 10, 0.05) == []
    await buf.append([reading(1)])
    assert [r.seq for r in await buf.read("cloud", 10, 1.0)] == [1]


async def test_out_of_order_acks_and_rewind_redeliver_only_unacked(buf: Buffer) -> None:
    await buf.append([reading(i) for i in range(1, 21)])
    assert len(await buf.read("cloud", 100, 0.1)) == 20
    buf.ack("cloud", 11, 20)
    buf.ack("cloud", 1, 5)
    buf.rewind("cloud")
    assert [r.seq for r in await buf.read("cloud", 100, 0.1)] == [6, 7, 8, 9, 10]
    assert buf.stats().unacked["cloud"] == 5
    assert buf.stats().unacked["sitewise"] == 20


async def test_a_live_lane_reads_the_head_while_the_main_lane_drains_up_to_the_split(buf: Buffer) -> None:
    await buf.append([reading(i) for i in range(1, 301)])
    split = 201
    buf.seek("cloud", split, lane="live")
    head = await buf.read("cloud", 1000, 0.1, lane="live")
    backlog = await buf.read("cloud", 120, 0.1, end_seq=split)
    backlog += await buf.read("cloud", 1000, 0.1, end_seq=split)
    assert [r.seq for r in head] == list(range(201, 301))
    assert [r.seq for r in backlog] == list(range(1, 201))
    assert await buf.read("cloud", 1000, 0.05, end_seq=split) == []  # the main lane stops at the split
    await buf.append([reading(301)])
    assert [r.seq for r in await buf.read("cloud", 10, 1.0, lane="live")] == [301]
    buf.ack("cloud", 1, 150)
    buf.ack("cloud", 201, 301)
    buf.seek("cloud", 302)  # the lanes merge: main continues where the live lane is
    await buf.append([reading(302)])
    assert [r.seq for r in await buf.read("cloud", 10, 1.0)] == [302]
    buf.rewind("cloud")  # unacked records of every lane are due again, on the main lane
    assert [r.seq for r in await buf.read("cloud", 1000, 0.1)] == [*range(151, 201), 302]
    assert [r.seq for r in await buf.read("sitewise", 1000, 0.1)] == list(range(1, 303))  # untouched


async def test_seek_never_goes_back_into_the_acked_prefix(buf: Buffer) -> None:
    await buf.append([reading(i) for i in range(1, 11)])
    buf.ack("cloud", 1, 6)
    buf.seek("cloud", 2, lane="live")
    assert [r.seq for r in await buf.read("cloud", 100, 0.1, lane="live")] == [7, 8, 9, 10]


async def test_stats_count_appended_and_held(buf: Buffer) -> None:
    await buf.append([reading(i) for i in range(7)])
    buf.ack("cloud", 1, 7)
    s = buf.stats()
    assert (s.appended, s.last_seq, s.records) == (7, 7, 7)  # sitewise has not acked
    buf.ack("sitewise", 1, 3)
    assert buf.stats().records == 4


# ---- disk only: durability and recovery ---------------------------------------------------------


def disk(path: Path, **kw: object) -> DiskBuffer:
    opts: dict[str, object] = {"segment_bytes": 4096, "max_bytes": 1 << 20} | kw
    return DiskBuffer(path, DESTS, **opts)  # type: ignore[arg-type]


async def test_reopen_resumes_after_acked_prefix(tmp_path: Path) -> None:
    b = disk(tmp_path)
    await b.append([reading(i) for i in range(1, 301)])
    assert len(await b.read("cloud", 1000, 0.1)) == 300
    b.ack("cloud", 1, 100)
    b.ack("cloud", 201, 250)
    await b.close()
    b2 = disk(tmp_path)
    got = [r.seq for r in await b2.read("cloud", 1000, 0.1)]
    assert got == list(range(101, 201)) + list(range(251, 301))
    assert [r.seq for r in await b2.read("sitewise", 1000, 0.1)] == list(range(1, 301))
    await b2.append([reading(301)])
    assert [r.seq for r in await b2.read("cloud", 10, 0.1)] == [301]
    await b2.close()


async def test_segments_deleted_once_every_destination_acked(tmp_path: Path) -> None:
    b = disk(tmp_path)
    for i in range(1, 1001, 50):  # one append is one group commit, kept in one segment
        await b.append([reading(j) for j in range(i, i + 50)])
    assert b.stats().segments > 3
    b.ack("cloud", 1, 1000)
    await b.maintain()
    assert b.stats().segments > 3  # sitewise still needs them
    b.ack("sitewise", 1, 1000)
    await b.maintain()
    assert b.stats().segments == 1  # only the active segment is kept
    await b.close()
    b2 = disk(tmp_path)
    await b2.append([reading(1001)])
    assert [r.seq for r in await b2.read("cloud", 10, 0.1)] == [1001]  # numbering never restarts
    await b2.close()


async def test_torn_tail_is_truncated_on_open(tmp_path: Path) -> None:
    b = disk(tmp_path)
    await b.append([reading(i) for i in range(1, 11)])
    await b.close()
    seg = max(tmp_path.glob("*.seg"))
    with seg.open("ab") as f:
        f.write(frame(11, encode_reading(reading(11)))[:20])  # a write cut short by a crash
    b2 = disk(tmp_path)
    assert [r.seq for r in await b2.read("cloud", 100, 0.1)] == list(range(1, 11))
    await b2.append([reading(11)])
    assert [r.seq for r in await b2.read("cloud", 100, 0.1)] == [11]
    await b2.close()


async def test_corrupt_segment_is_quarantined_and_the_rest_flows(tmp_path: Path) -> None:
    b = disk(tmp_path, segment_bytes=2048)
    for i in range(1, 201, 20):
        await b.append([reading(j) for j in range(i, i + 20)])
    await b.close()
    segs = sorted(tmp_path.glob("*.seg"))
    assert len(segs) >= 3
    data = bytearray(segs[0].read_bytes())
    data[HEADER.size + 3] ^= 0xFF  # flip a payload byte of the first record
    segs[0].write_bytes(bytes(data))
    b2 = disk(tmp_path, segment_bytes=2048)
    got = [r.seq for r in await b2.read("cloud", 1000, 0.1)]
    second_first = int(segs[1].stem)
    assert got == list(range(second_first, 201))
    assert b2.stats().dropped["corrupt"] == second_first - 1
    assert len(list((tmp_path / "quarantine").iterdir())) == 1
    await b2.close()


async def test_drop_oldest_keeps_bytes_bounded_and_counts(tmp_path: Path) -> None:
    b = disk(tmp_path, max_bytes=16384, segment_bytes=4096)
    for i in range(0, 2000, 50):
        await b.append([reading(j) for j in range(i, i + 50)])
    s = b.stats()
    assert s.bytes <= 16384
    assert s.dropped["full"] > 0
    got = await b.read("cloud", 10_000, 0.1)
    assert len(got) + s.dropped["full"] == 2000
    assert [r.seq for r in got] == list(range(got[0].seq, 2001))
    await b.close()


async def test_reject_new_raises_and_counts(tmp_path: Path) -> None:
    b = disk(tmp_path, max_bytes=8192, segment_bytes=4096, when_full="reject_new")
    rejected = 0
    for i in range(0, 400, 20):
        batch = [reading(j) for j in range(i, i + 20)]
        if b.stats().bytes + sum(HEADER.size + len(encode_reading(r)) for r in batch) > 8192:
            with pytest.raises(BufferFullError, match="is full"):
                await b.append(batch)
            rejected += 20
        else:
            await b.append(batch)
    assert rejected > 0
    assert b.stats().dropped["full"] == rejected
    got = await b.read("cloud", 10_000, 0.1)
    assert [r.seq for r in got] == list(range(1, 401 - rejected))
    await b.close()


async def test_unreadable_ledger_is_set_aside_and_everything_redelivered(tmp_path: Path) -> None:
    b = disk(tmp_path)
    await b.append([reading(i) for i in range(1, 51)])
    b.ack("cloud", 1, 50)
    await b.close()
    (tmp_path / "ledger.json").write_text("{not json")
    b2 = disk(tmp_path)
    assert [r.seq for r in await b2.read("cloud", 100, 0.1)] == list(range(1, 51))
    assert len(list((tmp_path / "quarantine").iterdir())) == 1
    await b2.close()


async def test_max_age_expires_old_segments_and_counts_them(tmp_path: Path) -> None:
    b = disk(tmp_path, max_age_s=0.3)
    for i in range(1, 201, 20):
        await b.append([reading(j) for j in range(i, i + 20)])
    await asyncio.sleep(0.4)
    await b.maintain()  # age is judged per segment, by its newest record
    assert b.stats().dropped["expired"] == 200
    await b.append([reading(201)])  # fresh: survives
    await b.maintain()
    assert [r.seq for r in await b.read("cloud", 1000, 0.1)] == [201]
    assert b.stats().dropped["expired"] == 200
    await b.close()


async def test_a_destination_added_later_starts_at_the_head(tmp_path: Path) -> None:
    b = DiskBuffer(tmp_path, ["cloud"], segment_bytes=4096)
    await b.append([reading(i) for i in range(1, 51)])
    await b.close()
    b2 = DiskBuffer(tmp_path, ["cloud", "archive"], segment_bytes=4096)
    assert await b2.read("archive", 100, 0.05) == []  # not last year's backlog
    assert len(await b2.read("cloud", 100, 0.05)) == 50
    await b2.append([reading(51)])
    assert [r.seq for r in await b2.read("archive", 100, 0.1)] == [51]
    await b2.close()


async def test_group_commit_many_concurrent_appends_get_distinct_ordered_sequence_numbers(tmp_path: Path) -> None:
    b = disk(tmp_path, segment_bytes=1 << 20)
    await asyncio.gather(*(b.append([reading(i * 10 + k) for k in range(10)]) for i in range(50)))
    got = await b.read("cloud", 1000, 0.1)
    assert [r.seq for r in got] == list(range(1, 501))
    # Each append's readings stay together and in order.
    values = [int(r.reading.value or 0) for r in got]
    for start in range(0, 500, 10):
        chunk = values[start : start + 10]
        assert chunk == list(range(chunk[0], chunk[0] + 10))
    await b.close()


async def test_damage_inside_the_active_segment_is_cut_and_kept_in_quarantine(tmp_path: Path) -> None:
    b = disk(tmp_path, segment_bytes=1 << 20)
    await b.append([reading(i) for i in range(1, 21)])
    await b.close()
    seg = max(tmp_path.glob("*.seg"))
    data = bytearray(seg.read_bytes())
    at = 0
    for _ in range(10):  # walk to record 11 of 20
        at += HEADER.size + HEADER.unpack_from(data, at)[0]
    data[at + HEADER.size + 2] ^= 0xFF  # damage record 11; the records after it are intact
    seg.write_bytes(bytes(data))
    b2 = disk(tmp_path, segment_bytes=1 << 20)
    assert [r.seq for r in await b2.read("cloud", 100, 0.1)] == list(range(1, 11))
    kept = list((tmp_path / "quarantine").iterdir())
    assert len(kept) == 1
    assert kept[0].read_bytes() == bytes(data[at:])
    await b2.append([reading(21)])
    # Records 11..20 may have been published before the damage: their numbers are never reused.
    assert [r.seq for r in await b2.read("cloud", 100, 0.1)] == [21]
    assert b2.stats().dropped["corrupt"] == 10
    await b2.close()
