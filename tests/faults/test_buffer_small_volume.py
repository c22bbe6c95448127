"""A buffer on a volume that really fills up (a small tmpfs, filled by files the test owns), not a mocked write.

Shown here: on a volume not much larger than ``segment_bytes`` the active segment alone can fill it; once
everything in it is acknowledged the buffer frees it by itself (it starts a new segment and deletes the
settled one) and appends work again, also with small batches, numbering going on without a gap. A clean
stop on a full volume does not raise: ``close()`` logs one line, and the ledger is written at the next
start (acks it could not persist are re-sent: at-least-once); the gateway process stops cleanly, exit 0.

Needs root for ``mount -t tmpfs``; skipped with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_gateway.buffer.base import Record
from edge_gateway.buffer.disk import LEDGER, SUFFIX, DiskBuffer
from edge_gateway.errors import BufferIOError
from edge_gateway.gxp.audit import read_entries
from edge_gateway.model import Quality, Reading
from simulators.pki import Pki
from simulators.ports import free_port
from tests.faults.conftest import fill
from tests.support import THING, GatewayProcess

T = 1_700_000_000_000_000_000
ROUNDS = 8  # appends after the recovery: well within the room the deleted segment leaves


def reading(i: int) -> Reading:
    return Reading("plc", "plc.counter", i, Quality.GOOD, T + i, None, "p" * (i % 50))


async def maintain(buf: DiskBuffer) -> None:
    """A maintenance round as the supervisor runs it: on a full volume the ledger write fails; logged, retried."""
    with contextlib.suppress(OSError):
        await buf.maintain()


async def read_all(buf: DiskBuffer, dest: str) -> list[Record]:
    out: list[Record] = []
    while more := await buf.read(dest, 10_000, 0):
        out.extend(more)
    return out


# ---- defect 2: the active segment alone fills a small volume ---------------------------------------------------


async def fill_active_segment(buf: DiskBuffer, batch: int) -> tuple[int, int]:
    """Append ``batch`` readings at a time until the volume is full: (readings stored, readings refused)."""
    stored = refused = 0
    while refused < 3 * batch:
        failure: BufferIOError | None = None
        try:
            await buf.append([reading(stored + 1 + i) for i in range(batch)])
        except BufferIOError as exc:
            failure = exc
        if failure is None:
            stored += batch
            continue
        assert isinstance(failure.__cause__, OSError)
        assert failure.__cause__.errno == errno.ENOSPC
        refused += batch
    return stored, refused


@pytest.mark.parametrize("batch", [1, 5, 200], ids=["one", "small", "large"])
async def test_a_full_small_volume_recovers_by_itself_once_the_backlog_is_acknowledged(
    volume: Path, batch: int
) -> None:
    # A neighbour on the same volume (the audit trail, dead letters) leaves the buffer less than segment_bytes.
    (volume / "neighbour").write_bytes(b"\1" * (160 << 10))
    directory = volume / "buffer"
    buf = DiskBuffer(directory, ["cloud", "archive"], segment_bytes=448 << 10, max_bytes=1 << 30)
    stored, refused = await fill_active_segment(buf, batch)
    assert len(list(directory.glob("*" + SUFFIX))) == 1, "the active segment alone filled the volume"
    for dest in ("cloud", "archive"):
        got = await read_all(buf, dest)
        assert [r.seq for r in got] == list(range(1, stored + 1))
        buf.ack(dest, 1, stored)
    await maintain(buf)

    # The broker is up and everything is acknowledged: the next append is stored, and so are the ones after.
    for k in range(ROUNDS):
        await buf.append([reading(10_000 + k * batch + i) for i in range(batch)])
        await maintain(buf)
    stats = buf.stats()
    assert stats.dropped["io_error"] == refused  # only what came while the volume was really full
    assert stats.dropped["full"] == stats.dropped["corrupt"] == 0
    for dest in ("cloud", "archive"):
        assert [r.seq for r in await read_all(buf, dest)] == list(range(stored + 1, stored + 1 + ROUNDS * batch))
    await buf.close()

    again = DiskBuffer(directory, ["cloud", "archive"], segment_bytes=448 << 10, max_bytes=1 << 30)
    assert [r.seq for r in await read_all(again, "cloud")] == list(range(stored + 1, stored + 1 + ROUNDS * batch))
    await again.append([reading(1)])
    assert [r.seq for r in await read_all(again, "cloud")] == [stored + 1 + ROUNDS * batch]  # numbering goes on
    await again.close()


async def test_an_active_segment_not_fully_acknowledged_is_kept_until_it_is(volume: Path) -> None:
    (volume / "neighbour").write_bytes(b"\1" * (160 << 10))
    directory = volume / "buffer"
    buf = DiskBuffer(directory, ["cloud", "archive"], segment_bytes=448 << 10, max_bytes=1 << 30)
    stored, _ = await fill_active_segment(buf, 10)
    buf.ack("cloud", 1, stored)
    buf.ack("archive", 1, stored - 1)  # one reading archive still needs
    await maintain(buf)
    big = [reading(i) for i in range(200)]  # more than the volume has left
    with pytest.raises(BufferIOError, match="ENOSPC"):
        await buf.append(big)
    assert [r.seq for r in await read_all(buf, "archive")] == [stored]  # nothing unacknowledged went
    buf.ack("archive", stored, stored)
    await buf.append(big)
    assert [r.seq for r in await read_all(buf, "archive")] == list(range(stored + 1, stored + 201))
    await buf.close()


# ---- defect 3: a clean stop on a full volume ----------------------------------------------------------------------


async def test_close_on_a_full_volume_logs_one_line_and_the_ledger_is_written_at_the_next_start(
    volume: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = volume / "buffer"
    buf = DiskBuffer(directory, ["cloud"], segment_bytes=16_384, max_bytes=1 << 30)
    await buf.append([reading(i) for i in range(1, 201)])
    await buf.maintain()  # the ledger as it was before the acks below
    assert len(await read_all(buf, "cloud")) == 200
    buf.ack("cloud", 1, 150)
    filler = fill(volume)
    caplog.set_level(logging.INFO)
    caplog.clear()
    await buf.close()  # must not raise
    lines = [r for r in caplog.records if LEDGER in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assert lines[0].levelno == logging.WARNING
    assert "ENOSPC" in lines[0].getMessage()
    assert "re-sent" in lines[0].getMessage()

    filler.unlink()
    before = (directory / LEDGER).stat().st_ino
    again = DiskBuffer(directory, ["cloud"], segment_bytes=16_384, max_bytes=1 << 30)
    assert (directory / LEDGER).stat().st_ino != before, "the ledger is written (replaced) at the next start"
    got = [r.seq for r in await read_all(again, "cloud")]
    # At-least-once: the acks that could not be persisted are re-sent, nothing unacknowledged is lost.
    assert got == list(range(got[0], 201))
    assert got[0] <= 151
    again.ack("cloud", 1, 200)
    await again.close()
    assert json.loads((directory / LEDGER).read_bytes())["destinations"]["cloud"]["acked_through"] == 200


def gateway_document(pki: Pki, data_dir: Path, buffer_dir: Path) -> dict[str, Any]:
    """No sources and no broker (nothing listens on the port): the gateway runs, collects nothing, retries."""
    return {
        "gateway": {"thing_name": THING, "data_dir": str(data_dir)},
        "buffer": {"path": str(buffer_dir), "segment_bytes": 16_384, "max_bytes": 1 << 20},
        "publisher": {
            "mqtt": {
                "endpoint": "127.0.0.1",
                "port": free_port(),
                "ca_file": str(pki.ca_file),
                "cert_file": str(pki.directory / f"{THING}.pem"),
                "key_file": str(pki.directory / f"{THING}.key"),
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 1.0,
            },
            "destinations": [{"type": "iotcore", "name": "cloud", "max_latency_ms": 200}],
        },
        "status": {"interval_s": 0.5},
    }


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, gw: GatewayProcess) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert gw.proc is not None
        assert gw.proc.poll() is None, f"gateway exited: {gw.log()[-3000:]}"
        assert time.monotonic() < deadline, f"{what} not seen in {timeout_s} s; log:\n{gw.log()[-3000:]}"
        time.sleep(0.1)


async def test_the_gateway_stops_cleanly_with_its_buffer_volume_full(tmp_path: Path, volume: Path, pki: Pki) -> None:
    buffer_dir = volume / "buffer"
    buf = DiskBuffer(buffer_dir, ["cloud"], segment_bytes=16_384, max_bytes=1 << 20)
    await buf.append([reading(i) for i in range(1, 101)])
    await buf.close()
    data_dir = tmp_path / "var"
    gw = GatewayProcess(gateway_document(pki, data_dir, buffer_dir), tmp_path)
    filler = fill(volume)  # full at boot: the ledger write at open fails, and every one after it
    gw.start()
    try:
        wait_for(lambda: "buffer maintenance failed" in gw.log(), 30, "a failing ledger write", gw)
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        code = gw.proc.wait(10)
    finally:
        gw.stop()
    log = gw.log()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log
    assert f"gateway {THING} stopped" in log
    events = [e.event for e in read_entries(data_dir / "audit")]
    assert events[-1] == "gateway.stopped"

    filler.unlink()
    before = (buffer_dir / LEDGER).stat().st_ino
    again = DiskBuffer(buffer_dir, ["cloud"], segment_bytes=16_384, max_bytes=1 << 20)
    assert (buffer_dir / LEDGER).stat().st_ino != before, "the ledger is written (replaced) at the next start"
    assert [r.seq for r in await read_all(again, "cloud")] == list(range(1, 101))  # nothing was acked
    await again.close()
