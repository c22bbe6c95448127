"""Destinations added and removed while the buffer runs (a shadow config change), on every implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_gateway.buffer.base import Buffer
from edge_gateway.buffer.disk import DiskBuffer
from tests.unit.test_buffer_contract import FACTORIES, reading


@pytest.fixture(params=sorted(FACTORIES))
async def buf(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Buffer]:
    b = FACTORIES[request.param](tmp_path)
    yield b
    await b.close()


async def test_an_added_destination_starts_at_the_head(buf: Buffer) -> None:
    await buf.append([reading(i) for i in range(1, 101)])
    buf.add_destination("archive")
    assert await buf.read("archive", 1000, 0.05) == []  # last year's backlog is not its business
    await buf.append([reading(i) for i in range(101, 111)])
    got = await buf.read("archive", 1000, 0.1)
    assert [r.seq for r in got] == list(range(101, 111))
    assert buf.stats().unacked["archive"] == 10
    assert [r.seq for r in await buf.read("cloud", 1000, 0.1)] == list(range(1, 111))  # others unchanged


async def test_adding_a_destination_twice_keeps_its_cursor(buf: Buffer) -> None:
    buf.add_destination("archive")
    await buf.append([reading(i) for i in range(1, 6)])
    buf.add_destination("archive")
    assert [r.seq for r in await buf.read("archive", 100, 0.1)] == [1, 2, 3, 4, 5]


async def test_a_removed_destination_no_longer_holds_records_back(buf: Buffer) -> None:
    await buf.append([reading(i) for i in range(1, 201)])
    buf.ack("cloud", 1, 200)
    assert buf.stats().records == 200  # sitewise still needs them
    buf.remove_destination("sitewise")
    buf.remove_destination("sitewise")  # unknown now: nothing happens
    await buf.maintain()
    stats = buf.stats()
    assert "sitewise" not in stats.unacked
    assert stats.records < 200
    assert stats.dropped.get("full", 0) == 0  # nothing counted as lost: nobody needs it


async def test_the_disk_buffer_remembers_added_and_removed_destinations(tmp_path: Path) -> None:
    b = DiskBuffer(tmp_path / "buf", ["cloud"], segment_bytes=4096, max_bytes=1 << 20)
    await b.append([reading(i) for i in range(1, 51)])
    b.add_destination("archive")
    await b.append([reading(i) for i in range(51, 61)])
    b.ack("archive", 51, 55)
    b.remove_destination("cloud")
    await b.maintain()
    await b.close()
    again = DiskBuffer(tmp_path / "buf", ["archive"], segment_bytes=4096, max_bytes=1 << 20)
    try:
        assert [r.seq for r in await again.read("archive", 100, 0.1)] == [56, 57, 58, 59, 60]
    finally:
        await again.close()
