"""Fresh data first: the publisher against a real Mosquitto (mTLS) with awscrt's IoT Core flow control on.

A disk buffer holds an hour-old backlog that takes seconds to drain at IoT Core's ~512 KiB/s; meanwhile
a new reading is appended every 100 ms. Each new reading must arrive within the latency bound although
the backlog is still draining, and in the end every reading of both arrives: none lost, none twice.
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


def _reading(point: str, value: int, ts_ns: int) -> Reading:
    return Reading("plc", point, value, Quality.GOOD, ts_ns)


async def test_new_readings_arrive_within_the_latency_bound_while_an_old_backlog_drains(
    tmp_path: Path, pki: Pki, broker: MosquittoBroker, consumer: Consumer
) -> None:
    arrivals: dict[str, list[tuple[float, int, int]]] = {"backlog": [], "live": []}  # (arrived, value, ts ms)
    seen: dict[str, set[int]] = {"backlog": set(), "live": set()}

    def on_message(_topic: str, payload: bytes) -> None:
        now = time.time()
        doc = json.loads(payload)
        for alias, entries in doc["p"].items():
            lane = alias.split(".")[1]
            arrivals[lane].extend((now, v, doc["t0"] + dt) for dt, v in entries)
            seen[lane].update(v for _, v in entries)

    await consumer.transport.subscribe("dt/#", on_message)
    buffer = DiskBuffer(tmp_path / "buffer", ["cloud"], segment_bytes=4 << 20, max_bytes=1 << 30)
    hour_ago = time.time_ns() - 3600 * 10**9
    for start in range(0, BACKLOG, 10_000):
        await buffer.append([_reading("plc.backlog", i, hour_ago + i * 10**6) for i in range(start, start + 10_000)])

    dest = IotCoreDestination(type="iotcore", name="cloud", max_latency_ms=LATENCY_MS)
    live = 0
    dead_letter = tmp_path / "dead-letter.jsonl"
    async with running_publisher(dest, buffer, pki, broker, dead_letter, flow_control=True) as publisher:
        async with asyncio.timeout(90):
            while len(seen["backlog"]) < BACKLOG or live < 100:
                await buffer.append([_reading("plc.live", live, time.time_ns())])
                live += 1
                await asyncio.sleep(LIVE_EVERY_S)
        async with asyncio.timeout(10):
            while len(seen["live"]) < live:
                await asyncio.sleep(0.05)

    backlog_done = max(t for t, _, _ in arrivals["backlog"])
    during = [(t, ts) for t, _, ts in arrivals["live"] if t < backlog_done - 1.0]
    assert len(during) >= 10, "the backlog drained too fast to show anything; make it bigger"
    delays = sorted(t - ts / 1000 for t, ts in during)
    drain_s = backlog_done - min(t for t, _, _ in arrivals["backlog"])
    p50 = delays[len(delays) // 2]
    print(f"LANES drain {drain_s:.1f} s; {len(during)} live during it, delay p50 {p50:.3f} s, max {delays[-1]:.3f} s")
    # Within the latency bound plus transport time, while seconds of backlog were still queued behind them.
    assert delays[-1] < 1.5, f"a fresh reading waited {delays[-1]:.2f} s behind the backlog"
    for lane, count in (("backlog", BACKLOG), ("live", live)):
        values = [v for _, v, _ in arrivals[lane]]
        assert sorted(values) == list(range(count)), f"{lane}: lost or duplicated readings"
    assert publisher.status.backlog_split_seq is None  # one lane again once the backlog drained
