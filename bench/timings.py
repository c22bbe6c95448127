"""Timings the test suite used to assert, measured and reported here instead (never asserted).

    python -m bench.timings [--backlog 250000]

The tests check order, counts and states, which hold on a loaded machine; how long things take is a figure
to watch, not a pass/fail line. Each scenario runs the real parts against a Mosquitto of its own (mutual
TLS, a PKI in a temporary directory, 127.0.0.1 only), as the test it came from does:

- lanes (tests/integration/test_publisher_lanes.py): an hour-old backlog of ``--backlog`` readings drains
  with IoT Core flow control on while a fresh reading is appended every 100 ms (``max_latency_ms`` 200);
  the delay from a fresh reading's timestamp to its arrival at a subscriber while the backlog is still
  draining (p50, max), and the drain time.
- flow control (tests/integration/test_mqtt_transport.py): 400 small publishes and 40 x 96 KiB with
  awscrt's IoT Core flow control; publishes/s and KiB/s from the first send to the last PUBACK.
- frozen broker (test_mqtt_transport.py, tests/faults/test_network.py): the broker SIGSTOPped; seconds
  until the client notices (keep-alive 5 s + ping timeout 1 s is the design figure).
- refused (tests/integration/test_mqtt_refusals.py): a client whose certificate the broker's CA did not
  sign, retrying with backoff 0.5-2 s for 6 s; connect failures and this process's CPU share meanwhile.

Prints a table and writes bench/results/timings.json (a flat object of numbers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from bench.common import print_table, scratch_dir, write_results
from edge_gateway.buffer.disk import DiskBuffer
from edge_gateway.config.model import IotCoreDestination, MqttSettings
from edge_gateway.model import Quality, Reading
from edge_gateway.publish.deadletter import DeadLetterFile
from edge_gateway.publish.encode.encoder import encoder_for
from edge_gateway.publish.publisher import Publisher
from edge_gateway.publish.transport.mqtt import MqttTransport
from simulators.iot_core import MosquittoBroker, loopback_mqtt_settings
from simulators.pki import Pki, add_client, generate_pki

THING = "bench-gateway"
LIVE_EVERY_S = 0.1


async def _started(settings: MqttSettings, client_id: str) -> MqttTransport:
    t = MqttTransport(settings, client_id)
    await t.start()
    await t.wait_connected(30)
    return t


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def lanes(work: Path, pki: Pki, broker: MosquittoBroker, backlog: int) -> dict[str, float]:
    arrivals: dict[str, list[tuple[float, int]]] = {"backlog": [], "live": []}  # (arrived, reading ts ms)

    def on_message(_topic: str, payload: bytes) -> None:
        now = time.time()
        doc = json.loads(payload)
        for alias, entries in doc["p"].items():
            arrivals[alias.split(".")[1]].extend((now, doc["t0"] + dt) for dt, _ in entries)

    consumer = await _started(loopback_mqtt_settings(pki, broker, "bench-consumer"), "bench-consumer")
    await consumer.subscribe("dt/#", on_message)
    buffer = DiskBuffer(work / "buffer", ["cloud"], segment_bytes=4 << 20, max_bytes=1 << 30)
    hour_ago = time.time_ns() - 3600 * 10**9
    for start in range(0, backlog, 10_000):
        await buffer.append(
            [Reading("plc", "plc.backlog", i, Quality.GOOD, hour_ago + i * 10**6) for i in range(start, start + 10_000)]
        )
    transport = await _started(
        loopback_mqtt_settings(pki, broker, THING, iot_core_flow_control=True), f"{THING}-gateway"
    )
    dest = IotCoreDestination(type="iotcore", name="cloud", max_latency_ms=200)
    publisher = Publisher(
        dest,
        buffer,
        transport,
        encoder=encoder_for(dest, THING),
        dead_letter=DeadLetterFile(work / "dead-letter.jsonl"),
        flow_control=True,
    )
    running = asyncio.create_task(publisher.run(), name="bench:publisher")
    live = 0
    try:
        while len(arrivals["backlog"]) < backlog:
            await buffer.append([Reading("plc", "plc.live", live, Quality.GOOD, time.time_ns())])
            live += 1
            await asyncio.sleep(LIVE_EVERY_S)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await transport.stop()
        await consumer.stop()
        await buffer.close()
    done = max(t for t, _ in arrivals["backlog"])
    delays = sorted(t - ts / 1000 for t, ts in arrivals["live"] if t < done)
    return {
        "lanes_backlog_readings": float(backlog),
        "lanes_drain_s": round(done - min(t for t, _ in arrivals["backlog"]), 2),
        "lanes_fresh_during_drain": float(len(delays)),
        "lanes_fresh_delay_p50_s": round(_percentile(delays, 0.5), 3),
        "lanes_fresh_delay_max_s": round(delays[-1] if delays else float("nan"), 3),
    }


async def flow_control(pki: Pki, broker: MosquittoBroker) -> dict[str, float]:
    t = await _started(loopback_mqtt_settings(pki, broker, THING, iot_core_flow_control=True), f"{THING}-gateway")
    try:
        started = time.monotonic()
        await asyncio.gather(*(t.publish("flow/small", b"x") for _ in range(400)))
        small_s = time.monotonic() - started
        started = time.monotonic()
        await asyncio.gather(*(t.publish("flow/big", b"y" * 96 * 1024) for _ in range(40)))
        big_s = time.monotonic() - started
    finally:
        await t.stop()
    return {"flow_publishes_per_s": round(400 / small_s, 1), "flow_kib_per_s": round(40 * 96 / big_s, 1)}


async def frozen_broker(pki: Pki, broker: MosquittoBroker) -> dict[str, float]:
    t = await _started(loopback_mqtt_settings(pki, broker, THING), f"{THING}-gateway")
    broker.freeze()
    frozen_at = time.monotonic()
    try:
        while t.connected:
            await asyncio.sleep(0.02)
        notice_s = time.monotonic() - frozen_at
    finally:
        broker.thaw()
        await t.stop()
    return {"mqtt_frozen_notice_s": round(notice_s, 2)}


async def refused(work: Path, pki: Pki, broker: MosquittoBroker, window_s: float = 6.0) -> dict[str, float]:
    foreign = generate_pki(work / "foreign", thing_name="intruder")
    settings = loopback_mqtt_settings(
        pki, broker, THING, cert_file=foreign.client_cert, key_file=foreign.client_key, reconnect_min_s=0.5
    )
    settings = settings.model_copy(update={"reconnect_max_s": 2.0})
    t = MqttTransport(settings, "intruder")
    cpu0, t0 = time.process_time(), time.monotonic()
    await t.start()
    try:
        await asyncio.sleep(window_s)
    finally:
        wall_s, cpu_s = time.monotonic() - t0, time.process_time() - cpu0
        await t.stop()
    if t.status.connects:
        msg = "refused: the foreign client connected; the broker does not check client certificates"
        raise RuntimeError(msg)
    return {
        "refused_failures": float(t.status.connection_failures),
        "refused_window_s": round(wall_s, 2),
        "refused_cpu_share": round(cpu_s / wall_s, 4),
    }


async def run(work: Path, backlog: int) -> dict[str, float]:
    pki = generate_pki(work / "pki", thing_name=THING)
    add_client(work / "pki", "bench-consumer")
    broker = MosquittoBroker(pki, work / "broker")
    broker.start()
    try:
        result = await lanes(work, pki, broker, backlog)
        result |= await flow_control(pki, broker)
        result |= await frozen_broker(pki, broker)
        result |= await refused(work, pki, broker)
    finally:
        broker.stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--backlog", type=int, default=250_000, help="readings in the lanes scenario's backlog")
    args = parser.parse_args()
    with scratch_dir("timings") as work:
        r = asyncio.run(run(work, args.backlog))
    print_table(
        [
            (
                "fresh reading while backlog drains",
                (
                    f"p50 {r['lanes_fresh_delay_p50_s']:.3f} s, max {r['lanes_fresh_delay_max_s']:.3f} s"
                    f" ({r['lanes_fresh_during_drain']:.0f} readings; {r['lanes_backlog_readings']:,.0f} drained"
                    f" in {r['lanes_drain_s']:.1f} s)"
                ),
            ),
            ("IoT Core flow control", f"{r['flow_publishes_per_s']:.0f} publishes/s, {r['flow_kib_per_s']:.0f} KiB/s"),
            ("frozen broker noticed after", f"{r['mqtt_frozen_notice_s']:.1f} s (keep-alive 5 s + ping 1 s)"),
            (
                "refused, retrying with backoff",
                (
                    f"{r['refused_failures']:.0f} failures in {r['refused_window_s']:.1f} s,"
                    f" CPU {r['refused_cpu_share']:.1%} of one core"
                ),
            ),
        ]
    )
    write_results("timings", r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
