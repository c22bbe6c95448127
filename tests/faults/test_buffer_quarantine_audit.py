"""Every quarantine reaches the audit trail (docs/gxp.md), also one in the first second after start.

The gateway runs as a user runs it (``python -m edge_gateway run``), on a buffer directory with a damaged
sealed segment (found by the publisher's first read, right after start) and an active segment damaged in
the middle (cut at open, by recovery). Each becomes one ``buffer.quarantined`` entry with the segment, the
reason, how many readings were lost and where the damaged bytes were kept. No broker: nothing is acked.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from edge_gateway.buffer.disk import HEADER, QUARANTINE, SUFFIX, DiskBuffer
from edge_gateway.gxp.audit import read_entries
from edge_gateway.model import Quality, Reading
from simulators.pki import Pki
from tests.faults.test_buffer_small_volume import gateway_document
from tests.support import GatewayProcess

T = 1_700_000_000_000_000_000


def reading(i: int) -> Reading:
    return Reading("plc", "plc.counter", float(i), Quality.GOOD, T + i)


def offset_of(data: bytes | bytearray, index: int) -> int:
    at = 0
    for _ in range(index):
        at += HEADER.size + HEADER.unpack_from(data, at)[0]
    return at


def flip(path: Path, index: int) -> None:
    """Flip a payload byte of record ``index`` (0-based) of ``path``."""
    data = bytearray(path.read_bytes())
    at = offset_of(data, index)
    data[at + HEADER.size + 3] ^= 0x10
    path.write_bytes(bytes(data))


async def test_quarantines_at_open_and_in_the_first_second_are_audited(tmp_path: Path, pki: Pki) -> None:
    buffer_dir = tmp_path / "buffer"
    buf = DiskBuffer(buffer_dir, ["cloud"], segment_bytes=16_384, max_bytes=1 << 20)
    for i in range(1, 1001, 100):
        await buf.append([reading(j) for j in range(i, i + 100)])
    await buf.close()
    segments = sorted(buffer_dir.glob("*" + SUFFIX))
    assert len(segments) >= 3
    flip(segments[0], 10)  # sealed: found when the publisher reads it
    active = segments[-1]
    records_in_active = 1000 - int(active.stem) + 1
    flip(active, records_in_active // 2)  # active: cut at open, the records behind it counted

    data_dir = tmp_path / "var"
    gw = GatewayProcess(gateway_document(pki, data_dir, buffer_dir), tmp_path)
    gw.start()
    try:
        deadline = time.monotonic() + 30
        while "is corrupt" not in gw.log() or "gateway" not in gw.log():
            assert gw.proc is not None
            assert gw.proc.poll() is None, gw.log()[-3000:]
            assert time.monotonic() < deadline, gw.log()[-3000:]
            time.sleep(0.05)
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)  # right away: a quarantine in the last moments is audited too
        assert gw.proc.wait(10) == 0, gw.log()[-3000:]
    finally:
        gw.stop()

    found = [e.as_dict()["fields"] for e in read_entries(data_dir / "audit") if e.event == "buffer.quarantined"]
    by_segment = {f["segment"]: f for f in found}
    assert len(found) == 2, found
    sealed = by_segment[segments[0].name]
    assert "record 11 fails its CRC" in sealed["reason"]
    assert sealed["records"] == int(segments[1].stem) - 1  # nothing was acked: all of it
    assert Path(sealed["quarantine_path"]).parent == buffer_dir / QUARANTINE
    assert Path(sealed["quarantine_path"]).exists()
    cut = by_segment[active.name]
    assert "damaged" in cut["reason"]
    assert cut["records"] >= records_in_active - records_in_active // 2
    assert Path(cut["quarantine_path"]).exists()
