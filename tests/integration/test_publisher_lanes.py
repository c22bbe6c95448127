"""Fresh data first: the publisher against a real Mosquitto (mTLS) with awscrt's IoT Core flow control on.

A disk buffer holds an hour-old backlog that takes seconds to drain at IoT Core's ~512 KiB/s; meanwhile
a new reading is appended every 100 ms. A new reading must not queue behind the backlog: every one
appended while at least half of the backlog was still to arrive arrives before the backlog's last reading
(one lane, first in first out, would deliver each after all of it). In the end every reading of both
arrives: none lost, none twice. Order and counts only (a loaded machine slows both lanes alike); the delay
in seconds is measured by ``python -m bench.timings`` (``lanes_fresh_delay_*``), not asserted here.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from edge_gateway.buffer.disk import DiskBuffer
from edge_gateway.config.model import IotCoreDestination
from edge_gateway.model import Quality, Reading
from simulators.iot_core import MosquittoBroker
from simulators.pki import Pki
from tests.support import Consumer, running_publisher

BACKLOG = 250_000
LIVE_EVERY_S = 0.1
LATENCY_MS = 200
# Live readings appended while at least this many backlog readings were still to arrive must overtake them.
STILL_BEHIND = BACKLOG // 2
MIN_OVERTAKING = 10


def _reading(point: str, value: int, ts_ns: int) -> Reading:
    return Reading("plc", point, value, Quality.GOOD, ts_ns)


async def test_new_readings_overtake_an_old_backlog_that_is_still_draining(
    tmp_path: Path, pki: Pki, broker: MosquittoBroker, consumer: Consumer
) -> None:
    # The consumer's callback runs on this event loop (test_mqtt_transport checks it): appends and arrivals
    # are numbered on one sequence, so "arrived before" is an order, not a clock reading.
    values: dict[str, list[int]] = {"backlog": [], "live": []}
    backlog_seen: set[int] = set()
    live_arrived_at: dict[int, int] = {}  # live value -> arrival number of its message
    backlog_done_at: list[int] = []  # the arrival number of the message completing the backlog
    arrivals = 0

    def on_message(_topic: str, payload: bytes) -> None:
        nonlocal arrivals
        arrivals += 1
        for alias, entries in json.loads(payload)["p"].items():
            lane = alias.split(".")[1]
            values[lane].extend(v for _, v in entries)
            if lane == "backlog":
                backlog_seen.update(v for _, v in entries)
            if lane == "live":
                live_arrived_at.update((v, arrivals) for _, v in entries)
        if not backlog_done_at and len(backlog_seen) == BACKLOG:
            backlog_done_at.append(arrivals)

    await consumer.transport.subscribe("dt/#", on_message)
    buffer = DiskBuffer(tmp_path / "buffer", ["cloud"], segment_bytes=4 << 20, max_bytes=1 << 30)
    hour_ago = time.time_ns() - 3600 * 10**9
    for start in range(0, BACKLOG, 10_000):
        await buffer.append([_reading("plc.backlog", i, hour_ago + i * 10**6) for i in range(start, start + 10_000)])

    dest = IotCoreDestination(type="iotcore", name="cloud", max_latency_ms=LATENCY_MS)
    live = 0
    behind_at_append: list[int] = []  # per live value: backlog readings not yet arrived when it was appended
    split_at_append: list[bool] = []  # per live value: a live lane ran (readings before the split are backlog)
    dead_letter = tmp_path / "dead-letter.jsonl"
    async with running_publisher(dest, buffer, pki, broker, dead_letter, flow_control=True) as publisher:
        async with asyncio.timeout(180):  # only gives up waiting: a healthy run takes about 10 s
            while not backlog_done_at or live < 100:
                behind_at_append.append(BACKLOG - len(backlog_seen))
                split_at_append.append(publisher.status.backlog_split_seq is not None)
                await buffer.append([_reading("plc.live", live, time.time_ns())])
                live += 1
                await asyncio.sleep(LIVE_EVERY_S)
            while len(live_arrived_at) < live:
                await asyncio.sleep(0.05)

    assert any(split_at_append), "the publisher never opened a live lane for the hour-old backlog"
    overtaking = [v for v in range(live) if split_at_append[v] and behind_at_append[v] >= STILL_BEHIND]
    # Strictly before: a batch spanning the boundary (one lane) puts live readings in the message that
    # completes the backlog, which is waiting for all of it too.
    late = [v for v in overtaking if live_arrived_at[v] >= backlog_done_at[0]]
    print(f"LANES {len(overtaking)} live readings appended with >= {STILL_BEHIND} of the backlog still behind")
    assert len(overtaking) >= MIN_OVERTAKING, "the backlog drained too fast to show anything; make it bigger"
    assert not late, f"live readings {late[:10]} waited for the whole backlog (first in, first out?)"
    for lane, count in (("backlog", BACKLOG), ("live", live)):
        assert sorted(values[lane]) == list(range(count)), f"{lane}: lost or duplicated readings"
    assert publisher.status.backlog_split_seq is None  # one lane again once the backlog drained
