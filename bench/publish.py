"""Publish benchmark: wire bytes per point, points/s through one connection, backlog drain time, latency.

    python -m bench.publish [--quick] [--throughput-points 1000000] [--backlog-points N] [--latency-seconds 30]

One process, one Mosquitto of its own (mutual TLS, a PKI generated in a temporary directory, listening on
127.0.0.1 only, no subscriber: PUBACK 16 "no matching subscribers" is a success). Everything published goes
through the real ``Publisher`` reading a ``DiskBuffer`` and the real ``MqttTransport`` (awscrt MQTT 5):

- wire bytes: payload bytes per point of full messages from each encoder, for 50 float aliases sampled every
  100 ms (random-walk values like 23.4567, 0-2 ms timestamp jitter); SiteWise encoded with ``now_ns`` just
  after the readings so nothing falls out of its time window.
- throughput: the publisher drains a backlog (readings a minute to an hour old, so it runs its backlog lane)
  of 500 float aliases sampled every 100 ms (5,000 points/s of plant) through one connection, with awscrt's
  IoT Core flow control on and off; points/s from start to the last PUBACK, CPU seconds of this process
  (all threads, awscrt's included; not the broker's). A short run with 1 KB messages shows the 100
  publishes/s cap, the long ones the ~512 KiB/s byte cap.
- drain: an 18 M point backlog (one hour at 5,000 points/s, ~1.5 GB on disk) with flow control on. When the
  flow-control rate just measured says that takes more than ``--drain-budget-s`` (720 s: "about ten minutes"),
  or the disk is short, a 2 M backlog is drained instead and 18 M is extrapolated under its own key
  (``drain_s_18m_backlog_extrapolated``; ``drain_s_18m_backlog`` then stays absent).
- latency: 5,000 points/s appended live (a tick of 500 readings every 100 ms, timestamped when made) while
  the publisher runs with the default latency bound (1,000 ms) and flow control on; latency is from a
  reading's timestamp to the moment its message's ``await transport.publish`` returned (the PUBACK as the
  publisher sees it), per point, from the payload's ``t0`` + offsets (ms resolution), after a warm-up.

Prints a table and writes bench/results/publish.json (a flat object of numbers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import cpu_seconds, print_table, scratch_dir, write_results
from edge_gateway.buffer.base import Record
from edge_gateway.buffer.codec import encode_reading
from edge_gateway.buffer.disk import HEADER, DiskBuffer
from edge_gateway.config.model import IotCoreDestination, MqttSettings
from edge_gateway.model import Quality, Reading
from edge_gateway.publish.deadletter import DeadLetterFile
from edge_gateway.publish.encode import iotcore, sitewise
from edge_gateway.publish.encode.encoder import iotcore_encoder
from edge_gateway.publish.publisher import Publisher
from edge_gateway.publish.transport.mqtt import MqttTransport
from simulators.iot_core import MosquittoBroker
from simulators.pki import Pki, generate_pki

THING = "bench-gateway"
SOURCE = "line1"
DEST = "cloud"
TARGET_BACKLOG = 18_000_000  # one hour at 5,000 points/s
FALLBACK_BACKLOG = 2_000_000
PLANT_ALIASES = 500  # x 100 ms = 5,000 points/s
WIRE_ALIASES = 50
SAMPLE_NS = 100_000_000
FILL_CHUNK = 10_000
_KINDS = ("temp", "pressure", "flow", "speed", "level")
_POOL = 1 << 16


class Plant:
    """Deterministic float readings: ``aliases`` points of one source sampled every ``SAMPLE_NS``.

    Reading ``k`` is alias ``k % aliases`` at tick ``k // aliases``; values are a bounded random walk rounded
    to 4 decimals (23.4567), different per alias; timestamps jitter by 0-2 ms like a real poll.
    """

    def __init__(self, aliases: int, start_ns: int) -> None:
        rng = random.Random(7)
        self.aliases = aliases
        self.start_ns = start_ns
        self.names = [f"{SOURCE}.{_KINDS[i % len(_KINDS)]}{i:03d}" for i in range(aliases)]
        v, pool = 23.0, []
        for _ in range(_POOL):
            v = min(35.0, max(15.0, v + rng.gauss(0, 0.02)))
            pool.append(round(v, 4))
        self.values = pool
        self.jitter_ns = [rng.randrange(2_000_000) for _ in range(4096)]

    def readings(self, first: int, count: int) -> list[Reading]:
        n, names, values, jitter, start = self.aliases, self.names, self.values, self.jitter_ns, self.start_ns
        out = []
        for k in range(first, first + count):
            tick, alias = divmod(k, n)
            ts = start + tick * SAMPLE_NS + jitter[k & 4095]
            out.append(Reading(SOURCE, names[alias], values[(tick + alias * 1031) % _POOL], Quality.GOOD, ts))
        return out


def _mqtt(pki: Pki, broker: MosquittoBroker, *, flow_control: bool) -> MqttSettings:
    return MqttSettings(
        endpoint="127.0.0.1",
        port=broker.port,
        ca_file=pki.ca_file,
        cert_file=pki.client_cert,
        key_file=pki.client_key,
        iot_core_flow_control=flow_control,
    )


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest rank."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# ---- wire bytes --------------------------------------------------------------------------------------------


def wire_bytes(seconds: float) -> dict[str, float]:
    now = time.time_ns()
    count = int(seconds * 1e9 / SAMPLE_NS) * WIRE_ALIASES
    plant = Plant(WIRE_ALIASES, now - int(seconds * 1e9))
    records = [Record(i + 1, r) for i, r in enumerate(plant.readings(0, count))]
    result: dict[str, float] = {}

    c0 = time.process_time()
    msgs = iotcore.encode_batch(records, thing=THING, topic_template="dt/{thing}/{source}", max_bytes=126_000)
    cpu = time.process_time() - c0
    full = msgs[:-1] or msgs  # the last one holds what was left over
    result["wire_bytes_per_point_iotcore"] = round(sum(len(m.payload) for m in full) / sum(m.points for m in full), 2)
    result["payload_bytes_per_message_iotcore"] = round(sum(len(m.payload) for m in full) / len(full))
    result["encode_us_per_point_iotcore"] = round(cpu / count * 1e6, 3)

    c0 = time.process_time()
    batch = sitewise.encode_batch(records, thing=THING, now_ns=time.time_ns())
    cpu = time.process_time() - c0
    if batch.rejected:
        msg = f"SiteWise encoder refused {len(batch.rejected)} reading(s): {batch.rejected[0][1]}"
        raise RuntimeError(msg)
    per_message = sitewise.MAX_ENTRIES * sitewise.MAX_VALUES_PER_ENTRY
    full = [m for m in batch.messages if m.points == per_message] or batch.messages
    result["wire_bytes_per_point_sitewise"] = round(sum(len(m.payload) for m in full) / sum(m.points for m in full), 2)
    result["payload_bytes_per_message_sitewise"] = round(sum(len(m.payload) for m in full) / len(full))
    result["encode_us_per_point_sitewise"] = round(cpu / count * 1e6, 3)
    return result


# ---- draining a backlog ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Drain:
    points: int
    fill_s: float
    seconds: float  # publisher start -> last PUBACK
    cpu_s: float  # this process, all threads
    broker_cpu_s: float
    messages: int
    payload_bytes: int
    failures: int  # publish attempts that failed (retried)
    refused_points: int  # dead-lettered: refused by the broker or never sendable

    @property
    def points_per_s(self) -> float:
        return self.points / self.seconds

    @property
    def publishes_per_s(self) -> float:
        return self.messages / self.seconds

    @property
    def payload_bytes_per_s(self) -> float:
        return self.payload_bytes / self.seconds


def open_buffer(path: Path) -> DiskBuffer:
    # Room for the whole 18 M backlog (~1.5 GB): the default 1 GiB would drop the oldest readings.
    return DiskBuffer(path, [DEST], max_bytes=8 << 30)


def _publisher(
    dest: IotCoreDestination, buffer: DiskBuffer, transport: MqttTransport, path: Path, *, flow_control: bool
) -> Publisher:
    return Publisher(
        dest,
        buffer,
        transport,
        encoder=iotcore_encoder(dest, THING),
        dead_letter=DeadLetterFile(path / "dead-letter.jsonl"),
        flow_control=flow_control,
    )


async def fill(buffer: DiskBuffer, points: int) -> float:
    """Append ``points`` readings that end a minute ago (so the publisher sees a backlog); seconds taken."""
    end_ns = time.time_ns() - 60 * 10**9
    plant = Plant(PLANT_ALIASES, end_ns - points // PLANT_ALIASES * SAMPLE_NS)
    t0 = time.monotonic()
    for first in range(0, points, FILL_CHUNK):
        await buffer.append(plant.readings(first, min(FILL_CHUNK, points - first)))
    return time.monotonic() - t0


async def _maintain(buffer: DiskBuffer) -> None:
    while True:  # as the gateway does: deletes settled segments, writes the ledger
        await asyncio.sleep(1.0)
        await buffer.maintain()


async def drain(
    work: Path,
    pki: Pki,
    broker: MosquittoBroker,
    points: int,
    *,
    flow_control: bool,
    label: str,
    max_message_bytes: int = 126_000,
    progress_s: float = 0.0,
) -> Drain:
    path = work / label
    buffer = open_buffer(path / "buffer")
    try:
        fill_s = await fill(buffer, points)
        transport = MqttTransport(_mqtt(pki, broker, flow_control=flow_control), f"{THING}-{label}")
        await transport.start()
        try:
            await transport.wait_connected(10)
            dest = IotCoreDestination(type="iotcore", name=DEST, max_message_bytes=max_message_bytes)
            publisher = _publisher(dest, buffer, transport, path, flow_control=flow_control)
            status = publisher.status
            b0, c0, start_ns = cpu_seconds(broker.pid), time.process_time(), time.time_ns()
            async with asyncio.TaskGroup() as tg:
                running = tg.create_task(publisher.run(), name=f"publish:{DEST}")
                maintaining = tg.create_task(_maintain(buffer), name="buffer:maintain")
                try:
                    # Generous: a stall (every publish failing) ends the run instead of hanging it.
                    async with asyncio.timeout(60 + points / 2000):
                        next_report = time.monotonic() + progress_s
                        while status.points < points:
                            await asyncio.sleep(0.05)
                            if progress_s and time.monotonic() >= next_report:
                                next_report += progress_s
                                elapsed = (time.time_ns() - start_ns) / 1e9
                                print(
                                    f"  {label}: {status.points:,} / {points:,} points in {elapsed:.0f} s"
                                    f" ({status.points / elapsed:,.0f} points/s)",
                                    file=sys.stderr,
                                    flush=True,
                                )
                except TimeoutError:
                    msg = f"{label}: {status.points:,} of {points:,} points acked before the timeout; {status}"
                    raise RuntimeError(msg) from None
                finally:
                    cpu_s = time.process_time() - c0
                    broker_cpu_s = cpu_seconds(broker.pid) - b0
                    running.cancel()
                    maintaining.cancel()
            assert status.last_ack_ns is not None
            return Drain(
                points=status.points,
                fill_s=fill_s,
                seconds=(status.last_ack_ns - start_ns) / 1e9,
                cpu_s=cpu_s,
                broker_cpu_s=broker_cpu_s,
                messages=status.messages,
                payload_bytes=status.payload_bytes,
                failures=status.failures,
                refused_points=status.rejected_points + status.unsendable_points,
            )
        finally:
            await transport.stop()
    finally:
        await buffer.close()
        shutil.rmtree(path, ignore_errors=True)


# ---- latency at a steady 5,000 points/s --------------------------------------------------------------------


class AckClock(MqttTransport):
    """The real transport, noting when each publish's PUBACK reached the publisher (and the payload)."""

    def __init__(self, settings: MqttSettings, client_id: str) -> None:
        super().__init__(settings, client_id)
        self.acks: list[tuple[int, bytes]] = []

    async def publish(self, topic: str, payload: bytes) -> int:
        code = await super().publish(topic, payload)
        self.acks.append((time.time_ns(), payload))
        return code


async def latency(work: Path, pki: Pki, broker: MosquittoBroker, warmup_s: float, seconds: float) -> dict[str, float]:
    path = work / "latency"
    buffer = open_buffer(path / "buffer")
    transport = AckClock(_mqtt(pki, broker, flow_control=True), f"{THING}-latency")
    plant = Plant(PLANT_ALIASES, 0)
    try:
        await transport.start()
        await transport.wait_connected(10)
        dest = IotCoreDestination(type="iotcore", name=DEST)  # default max_latency_ms (1000)
        publisher = _publisher(dest, buffer, transport, path, flow_control=True)
        loop = asyncio.get_running_loop()
        warmup_ticks = round(warmup_s * 1e9 / SAMPLE_NS)
        ticks = warmup_ticks + round(seconds * 1e9 / SAMPLE_NS)
        appended = in_window = late_ticks = 0
        window_ns = [0, 0]  # timestamps of the first and after the last measured reading
        cpu0 = wall0 = 0.0
        messages0 = 0
        async with asyncio.TaskGroup() as tg:
            running = tg.create_task(publisher.run(), name=f"publish:{DEST}")
            try:
                start = loop.time()
                for tick in range(ticks):
                    delay = start + tick * SAMPLE_NS / 1e9 - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    elif delay < -SAMPLE_NS / 1e9:
                        late_ticks += 1  # the loop fell a whole tick behind: the offered load was lower
                    now = time.time_ns()
                    if tick == warmup_ticks:
                        window_ns[0] = now
                        cpu0, wall0, messages0 = time.process_time(), time.monotonic(), publisher.status.messages
                    readings = [
                        Reading(SOURCE, name, plant.values[(tick + i * 1031) % _POOL], Quality.GOOD, now)
                        for i, name in enumerate(plant.names)
                    ]
                    await buffer.append(readings)
                    appended += len(readings)
                    if tick >= warmup_ticks:
                        in_window += len(readings)
                window_ns[1] = time.time_ns()
                cpu_s, wall_s = time.process_time() - cpu0, time.monotonic() - wall0
                messages = publisher.status.messages - messages0
                async with asyncio.timeout(30):
                    while publisher.status.points < appended:
                        await asyncio.sleep(0.05)
            finally:
                running.cancel()
    finally:
        await transport.stop()
        await buffer.close()
        shutil.rmtree(path, ignore_errors=True)

    # Payload times are whole milliseconds (truncated): a point's latency reads up to 1 ms high.
    lo_ms, hi_ms = window_ns[0] // 1_000_000, window_ns[1] // 1_000_000
    delays: list[float] = []
    for ack_ns, payload in transport.acks:
        doc = json.loads(payload)
        t0 = doc["t0"]
        ack_ms = ack_ns / 1e6
        for entries in doc["p"].values():
            delays.extend((ack_ms - (t0 + dt)) / 1000 for dt, *_ in entries if lo_ms <= t0 + dt < hi_ms)
    delays.sort()
    return {
        "latency_p50_s": round(_percentile(delays, 0.50), 3),
        "latency_p99_s": round(_percentile(delays, 0.99), 3),
        "latency_max_s": round(delays[-1], 3),
        "latency_points": len(delays),
        "latency_points_missing": in_window - len(delays),
        "latency_window_s": seconds,
        "latency_late_ticks": late_ticks,
        "publishes_per_s_at_5k_points_per_s": round(messages / wall_s, 2),
        "cpu_percent_at_5k_points_per_s": round(100 * cpu_s / wall_s, 1),
    }


# ---- the whole run -----------------------------------------------------------------------------------------


def _drain_keys(d: Drain, suffix: str) -> dict[str, float]:
    return {
        f"points_per_s_{suffix}": round(d.points_per_s),
        f"points_{suffix}": d.points,
        f"cpu_s_{suffix}": round(d.cpu_s, 2),
        f"points_per_cpu_s_{suffix}": round(d.points / d.cpu_s),
        f"broker_cpu_s_{suffix}": round(d.broker_cpu_s, 2),
        f"payload_bytes_per_point_{suffix}": round(d.payload_bytes / d.points, 2),
        f"publish_failures_{suffix}": d.failures,
        f"refused_points_{suffix}": d.refused_points,
    }


def _drain_row(d: Drain) -> str:
    return (
        f"{d.points_per_s:,.0f} points/s ({d.points:,} points in {d.seconds:.1f} s; {d.publishes_per_s:,.1f}"
        f" publishes/s; {d.payload_bytes_per_s / 1024:,.0f} KiB/s; {d.payload_bytes / d.points:.2f} B/point)"
    )


def _cpu_row(d: Drain) -> str:
    return (
        f"{d.cpu_s:.1f} s -> {d.points / d.cpu_s:,.0f} points/CPU s ({d.cpu_s / d.points * 1e6:.1f} us/point);"
        f" broker {d.broker_cpu_s:.1f} s"
    )


def _backlog_size(requested: int | None, rate: float, budget_s: float, base: Path) -> tuple[int, str]:
    """How many points to drain for real, and why."""
    if requested is not None:
        return requested, "size as requested (--backlog-points or --quick)"
    sample = Plant(PLANT_ALIASES, time.time_ns()).readings(0, 1000)
    need = TARGET_BACKLOG * sum(HEADER.size + len(encode_reading(r)) for r in sample) / len(sample)
    free = shutil.disk_usage(base).free
    if free < need * 1.2 + (1 << 30):
        return FALLBACK_BACKLOG, f"only {free / 1e9:.1f} GB free for a {need / 1e9:.1f} GB backlog"
    predicted = TARGET_BACKLOG / rate
    if predicted > budget_s:
        return FALLBACK_BACKLOG, f"18 M would take ~{predicted:.0f} s at {rate:,.0f} points/s (> {budget_s:.0f} s)"
    return TARGET_BACKLOG, f"~{predicted:.0f} s predicted at {rate:,.0f} points/s"


async def run(base: Path, args: argparse.Namespace) -> tuple[dict[str, float], list[tuple[str, str]]]:
    rows: list[tuple[str, str]] = []

    def add(name: str, text: str) -> None:
        rows.append((name, text))

    r = wire_bytes(args.wire_seconds)
    add("wire bytes/point IoT Core", f"{r['wire_bytes_per_point_iotcore']:.2f} B (full messages of ~126 KB)")
    add(
        "wire bytes/point SiteWise",
        f"{r['wire_bytes_per_point_sitewise']:.2f} B (full messages: 100 values,"
        f" {r['payload_bytes_per_message_sitewise']:,.0f} B)",
    )
    add(
        "encode CPU/point",
        f"IoT Core {r['encode_us_per_point_iotcore']:.2f} us, SiteWise {r['encode_us_per_point_sitewise']:.2f} us",
    )
    pki = generate_pki(base / "pki", thing_name=THING)
    broker = MosquittoBroker(pki, base / "broker")
    broker.start()
    try:
        runs: dict[bool, Drain] = {}
        for flow_control, drain_key, rate_key, label in (
            (True, "iot_flow_control", "flow_control", "on"),
            (False, "no_flow_control", "no_flow_control", "off"),
        ):
            run = runs[flow_control] = await drain(
                base, pki, broker, args.throughput_points, flow_control=flow_control, label=f"flow-{label}"
            )
            r |= _drain_keys(run, drain_key)
            r[f"publishes_per_s_{rate_key}"] = round(run.publishes_per_s, 2)
            r[f"payload_bytes_per_s_{rate_key}"] = round(run.payload_bytes_per_s)
            add(f"backlog, flow control {label}", _drain_row(run))
            add("  CPU", _cpu_row(run))

        small = await drain(
            base, pki, broker, args.small_points, flow_control=True, label="flow-on-1k", max_message_bytes=1024
        )
        r["publishes_per_s_flow_control_1k_messages"] = round(small.publishes_per_s, 2)
        r["payload_bytes_per_message_flow_control_1k_messages"] = round(small.payload_bytes / small.messages)
        add(
            "flow control on, 1 KB messages",
            f"{small.publishes_per_s:,.1f} publishes/s ({small.payload_bytes / small.messages:,.0f} B each,"
            f" {small.points_per_s:,.0f} points/s)",
        )

        backlog, why = _backlog_size(args.backlog_points, runs[True].points_per_s, args.drain_budget_s, base)
        print(f"draining a backlog of {backlog:,} points: {why}", file=sys.stderr, flush=True)
        big = await drain(base, pki, broker, backlog, flow_control=True, label="backlog", progress_s=30)
        r["drain_backlog_points"] = backlog
        r["drain_s_backlog"] = round(big.seconds, 1)
        r["fill_s_backlog"] = round(big.fill_s, 1)
        r["points_per_s_drain_backlog"] = round(big.points_per_s)
        r["publishes_per_s_drain_backlog"] = round(big.publishes_per_s, 2)
        r["payload_bytes_per_s_drain_backlog"] = round(big.payload_bytes_per_s)
        r["points_per_cpu_s_drain_backlog"] = round(big.points / big.cpu_s)
        r["publish_failures_drain_backlog"] = big.failures
        r["refused_points_drain_backlog"] = big.refused_points
        add(f"drain {backlog / 1e6:g} M backlog", f"{_drain_row(big)}; filled in {big.fill_s:.0f} s")
        add("  CPU", _cpu_row(big))
        if backlog == TARGET_BACKLOG:
            r["drain_s_18m_backlog"] = round(big.seconds, 1)
            add("drain 18 M backlog", f"{big.seconds:,.1f} s MEASURED ({why})")
        else:
            r["drain_s_18m_backlog_extrapolated"] = round(big.seconds * TARGET_BACKLOG / backlog, 1)
            add(
                "drain 18 M backlog",
                f"{r['drain_s_18m_backlog_extrapolated']:,.1f} s EXTRAPOLATED from the {backlog / 1e6:g} M drain"
                f" ({why})",
            )

        r |= await latency(base, pki, broker, args.warmup_seconds, args.latency_seconds)
        add(
            "latency at 5k points/s",
            f"p50 {r['latency_p50_s']:.3f} s, p99 {r['latency_p99_s']:.3f} s, max {r['latency_max_s']:.3f} s"
            f" ({r['latency_points']:,.0f} points over {r['latency_window_s']:g} s after"
            f" {args.warmup_seconds:g} s warm-up; {r['latency_points_missing']:.0f} missing)",
        )
        add(
            "  measured as",
            "reading timestamp -> `await transport.publish` returned (the PUBACK as the publisher sees it)",
        )
        add(
            "  steady state",
            f"{r['cpu_percent_at_5k_points_per_s']:.1f} % of a core (buffer appends + publish),"
            f" {r['publishes_per_s_at_5k_points_per_s']:.2f} publishes/s",
        )
    finally:
        broker.stop()
    return r, rows


def main() -> int:
    parser = argparse.ArgumentParser(description="Publish benchmark (local Mosquitto over mutual TLS)")
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run with small sizes")
    parser.add_argument("--throughput-points", type=int, help="backlog of each throughput run (1,000,000)")
    parser.add_argument("--backlog-points", type=int, help="drain exactly this many points (default: 18 M if it fits)")
    parser.add_argument(
        "--drain-budget-s", type=float, default=720.0, help="longest predicted 18 M drain to measure for real (~10 min)"
    )
    parser.add_argument("--latency-seconds", type=float, help="latency measurement window (30)")
    parser.add_argument("--warmup-seconds", type=float, help="latency warm-up (5)")
    parser.add_argument("--dir", type=Path, help="where to put buffers and the broker (default: a temporary directory)")
    args = parser.parse_args()
    quick = args.quick
    args.wire_seconds = 60.0 if quick else 300.0
    args.small_points = 10_000 if quick else 30_000
    if args.throughput_points is None:
        args.throughput_points = 150_000 if quick else 1_000_000
    if args.backlog_points is None and quick:
        args.backlog_points = 300_000
    if args.latency_seconds is None:
        args.latency_seconds = 10.0 if quick else 30.0
    if args.warmup_seconds is None:
        args.warmup_seconds = 3.0 if quick else 5.0
    t0 = time.monotonic()
    with scratch_dir("publish", args.dir) as tmp:
        result, rows = asyncio.run(run(tmp, args))
    result["wall_s"] = round(time.monotonic() - t0, 1)
    print_table([*rows, ("wall time", f"{result['wall_s']:,.0f} s")], width=32)
    write_results("publish", result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
