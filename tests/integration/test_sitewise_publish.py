"""SiteWise destination end to end: the publisher drains a disk buffer to a Basic Ingest topic on a real
Mosquitto (mTLS); what SiteWise would refuse goes to the dead-letter file, never to the broker."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from edge_gateway.buffer.disk import DiskBuffer
from edge_gateway.config.model import SiteWiseDestination
from edge_gateway.model import Quality, Reading
from simulators.iot_core import MosquittoBroker
from simulators.pki import Pki
from tests.support import THING, Consumer, running_publisher

DAY_NS = 86_400 * 10**9


async def test_sitewise_values_arrive_in_the_batch_put_shape_and_out_of_window_ones_are_dead_lettered(
    tmp_path: Path, pki: Pki, broker: MosquittoBroker, consumer: Consumer
) -> None:
    now = time.time_ns()
    good = [Reading("press", "press.temp", 20.0 + i / 8, Quality.GOOD, now - (500 - i) * 10**6) for i in range(500)]
    counters = [Reading("press", "press.count", i, Quality.GOOD, now - (500 - i) * 10**6) for i in range(500)]
    too_old = Reading("press", "press.temp", 1.5, Quality.GOOD, now - 8 * DAY_NS)
    too_new = Reading("press", "press.temp", 2.5, Quality.GOOD, now + 11 * 60 * 10**9)
    bad = Reading("press", "press.count", None, Quality.BAD, now, None, "BadNotConnected")
    buffer = DiskBuffer(tmp_path / "buffer", ["sitewise"])
    await buffer.append([too_old, *good[:250], too_new, *counters, bad, *good[250:]])

    received: list[tuple[str, dict[str, Any]]] = []
    await consumer.transport.subscribe("$aws/rules/#", lambda t, p: received.append((t, json.loads(p))))
    dest = SiteWiseDestination(type="sitewise", name="sitewise", max_latency_ms=100)
    dead_letter = tmp_path / "dead-letter.jsonl"
    async with running_publisher(dest, buffer, pki, broker, dead_letter, flow_control=False) as publisher:
        async with asyncio.timeout(30):
            while buffer.stats().unacked["sitewise"]:
                await asyncio.sleep(0.05)
        async with asyncio.timeout(10):
            while publisher.status.points > sum(_count(d) for _, d in received):
                await asyncio.sleep(0.05)

    by_alias: dict[str, list[tuple[int, Any]]] = {}
    for topic, doc in received:
        assert len(doc["entries"]) <= 10
        for entry in doc["entries"]:
            assert len(entry["propertyValues"]) <= 10
            for pv in entry["propertyValues"]:
                ts = pv["timestamp"]["timeInSeconds"] * 10**9 + pv["timestamp"]["offsetInNanos"]
                (value,) = pv["value"].values()
                assert pv["quality"] == "GOOD"
                by_alias.setdefault(entry["propertyAlias"], []).append((ts, value))
        (field,) = doc["entries"][0]["propertyValues"][0]["value"]
        assert topic == f"$aws/rules/edge_sitewise_{field.removesuffix('Value')}/{THING}/press"  # a rule per type
    assert by_alias[f"/{THING}/press/press.temp"] == [(r.ts_ns, r.value) for r in good]
    assert by_alias[f"/{THING}/press/press.count"] == [(r.ts_ns, r.value) for r in counters]
    lines = [json.loads(line) for line in dead_letter.read_text().splitlines()]
    reasons = {(e["value"], e["quality"]): e["reason"] for e in lines}
    assert set(reasons) == {(1.5, "GOOD"), (2.5, "GOOD"), (None, "BAD")}
    assert "7 days" in reasons[1.5, "GOOD"]
    assert "10 minutes" in reasons[2.5, "GOOD"]
    assert publisher.status.unsendable_points == 3
    assert publisher.status.points == 1000


def _count(doc: dict[str, Any]) -> int:
    return sum(len(e["propertyValues"]) for e in doc["entries"])
