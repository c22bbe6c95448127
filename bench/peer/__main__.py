"""``make bench-peer``: this gateway and ThingsBoard IoT Gateway 3.8.5 on the same Modbus workload, side by side.

    python -m bench.peer [--seconds 15] [--loads 5000,20000] [--ceiling 80000] [--rounds 2] [--sides ours,peer]

For each round, each offered load (points/s = float32 tags x 10 polls/s) and then the ceiling load, it runs
ours, then the peer (alternating), each on a fresh simulator; the setup is in ``bench/peer/__init__.py``.
A run waits for the side's first points, warms up ``--warmup-s``, then measures ``--seconds``: CPU of the
gateway process tree over the window, RSS at its end, and at the subscriber the points polled within the
window (their poll time is in the payload; counted ``--settle-s`` later, once they have arrived) with
their latency, and the payload bytes per point of the messages that arrived in it. At the ceiling load,
or when a side falls behind (fewer than 90 % of the arrived points were polled in the window), points
are counted by arrival instead: what the saturated gateway delivered. ``CPU0 %`` in the table is what
shares the other core (simulator, Mosquitto, this subscriber); near 100 it would be the bottleneck.

Prints a table and writes bench/results/peer.json (a flat object of numbers, means over the rounds):
``cpu_s_per_1k_points_ours``, ``cpu_s_per_1k_points_peer`` and ``cpu_ratio_vs_peer`` (ours / peer) at 20,000
points/s, the same ``..._at_<load>_points_per_s`` for every load, the one-core ceilings, payload bytes per
point, latency p50/p99 and RSS per side. Without the peer's venv (``make bench-peer`` makes it) or when the
peer fails, ours alone is measured and reported, and the reason is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import print_table, scratch_dir, write_results
from bench.dataset import holding_registers, plant_tags
from bench.peer import configs
from bench.peer.procs import spawn, stop, tree_cpu_seconds, tree_rss_mb, wait_line
from bench.peer.subscriber import Side, Subscriber
from edge_gateway.config.model import MqttSettings
from simulators.iot_core import MosquittoBroker
from simulators.pki import Pki, add_client, generate_pki
from simulators.ports import free_port

THING = "bench-ours"
PEER_CLIENT = "tb-gateway"
SUBSCRIBER = "bench-subscriber"
PEER_PYTHON = Path("bench/.peer-venv/bin/python")
TB_LAUNCH = Path(__file__).with_name("tb_launch.py")
GATEWAY_CPU, REST_CPU = 1, 0
FIRST_POINTS_TIMEOUT_S = 90.0
MAIN_LOAD = 20_000
SIM_FRAMES = 100  # the simulator cycles through 10 s of precomputed polls: its ticks cost CPU 0 nothing


@dataclass(slots=True)
class Run:
    side: Side
    offered: int
    points_per_s: float
    cpu_percent: float
    cpu_s_per_1k_points: float
    payload_bytes_per_point: float
    latency_p50_s: float
    latency_p99_s: float
    rss_mb: float
    messages: int
    counted: str  # "poll": points polled in the window; "arrival": points that arrived in it (saturated)
    rest_cpu_percent: float  # simulator + broker + subscriber, all on the other core: must stay below 100


@dataclass
class Bench:
    work: Path
    pki: Pki
    broker: MosquittoBroker
    subscriber: Subscriber
    args: argparse.Namespace
    runs: list[Run] = field(default_factory=list)
    failures: dict[Side, str] = field(default_factory=dict)


def _rest_cpu_seconds(b: Bench, sim: subprocess.Popen[bytes]) -> float:
    """CPU of what shares the other core: the simulator, Mosquitto and this process (the subscriber)."""
    own = os.times()
    broker = tree_cpu_seconds(b.broker.pid) if b.broker.pid else 0.0
    return own.user + own.system + broker + tree_cpu_seconds(sim.pid)


def _now_ms() -> int:
    return round(time.time() * 1000)


def _peer_env() -> dict[str, str]:
    """A small environment: no proxies, no TB_* overrides, and pip unable to reach any index."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "PIP_NO_INDEX": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PYTHONUNBUFFERED": "1",
    }


def _start_gateway(b: Bench, side: Side, run_dir: Path, modbus_port: int, offered: int) -> subprocess.Popen[bytes]:
    points = holding_registers(plant_tags(offered * configs.POLL_MS // 1000, only="float32"))
    log = run_dir / "gateway.log"
    if side == "ours":
        cfg = configs.ours(
            run_dir / "gateway.yaml",
            thing=THING,
            data_dir=run_dir / "var",
            modbus_port=modbus_port,
            broker_port=b.broker.port,
            pki_dir=b.pki.directory,
            points=points,
        )
        return spawn([sys.executable, "-m", "edge_gateway", "run", "--config", str(cfg)], GATEWAY_CPU, log)
    tb_dir = configs.thingsboard(
        run_dir / "tb",
        modbus_port=modbus_port,
        broker_port=b.broker.port,
        pki_dir=b.pki.directory,
        client=PEER_CLIENT,
        points=points,
    )
    python = str(Path(b.args.peer_python).absolute())
    args = [python, str(TB_LAUNCH.absolute()), str(tb_dir)]
    return spawn(args, GATEWAY_CPU, log, env=_peer_env(), cwd=tb_dir)


async def _first_points(b: Bench, side: Side, mark: int, gateway: subprocess.Popen[bytes], log: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FIRST_POINTS_TIMEOUT_S
    while b.subscriber.points_since(side, mark) == 0:
        if gateway.poll() is not None or loop.time() > deadline:
            state = f"exited with {gateway.returncode}" if gateway.poll() is not None else "sent no points"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            msg = f"{side} gateway {state} within {FIRST_POINTS_TIMEOUT_S:.0f} s; last lines of {log}:\n{tail}"
            raise RuntimeError(msg)
        await asyncio.sleep(0.2)


async def run_one(b: Bench, side: Side, offered: int, label: str, *, ceiling: bool = False) -> Run:
    tags = offered * configs.POLL_MS // 1000
    run_dir = b.work / label
    run_dir.mkdir()
    modbus_port = free_port()
    sim_args = ["-m", "bench.modbus_dataset", "--port", str(modbus_port), "--tags", str(tags), "--only", "float32"]
    sim_args += ["--frames", str(SIM_FRAMES)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sim = spawn([sys.executable, *sim_args], REST_CPU, run_dir / "simulator.log")
        procs.append(sim)
        await wait_line(run_dir / "simulator.log", "READY", 120, sim)
        b.subscriber.forget()
        mark = b.subscriber.mark()
        gateway = _start_gateway(b, side, run_dir, modbus_port, offered)
        procs.append(gateway)
        await _first_points(b, side, mark, gateway, run_dir / "gateway.log")
        await asyncio.sleep(b.args.warmup_s)
        start, cpu0, m0, t0_ms = b.subscriber.mark(), tree_cpu_seconds(gateway.pid), time.monotonic(), _now_ms()
        rest0 = _rest_cpu_seconds(b, sim)
        await asyncio.sleep(b.args.seconds)
        end, cpu1, m1, t1_ms = b.subscriber.mark(), tree_cpu_seconds(gateway.pid), time.monotonic(), _now_ms()
        rest1 = _rest_cpu_seconds(b, sim)
        rss = tree_rss_mb(gateway.pid)
        if gateway.poll() is not None:
            msg = f"{side} gateway exited with {gateway.returncode} during the measurement (see {run_dir})"
            raise RuntimeError(msg)
        arrived = b.subscriber.by_arrival(side, start, end, m1 - m0)
        w, kept_up = arrived, False
        if not ceiling:
            await asyncio.sleep(b.args.settle_s)  # the points polled in the window reach the subscriber
            polled = b.subscriber.by_poll(side, start, t0_ms, t1_ms)
            kept_up = polled.points >= 0.9 * arrived.points
            w = polled if kept_up else arrived
        cpu = cpu1 - cpu0
        return Run(
            side=side,
            offered=offered,
            points_per_s=w.points_per_s,
            cpu_percent=100 * cpu / (m1 - m0),
            cpu_s_per_1k_points=cpu / (w.points / 1000) if w.points else float("nan"),
            payload_bytes_per_point=arrived.payload_bytes / arrived.points if arrived.points else float("nan"),
            latency_p50_s=w.latency_s(0.50),
            latency_p99_s=w.latency_s(0.99),
            rss_mb=rss,
            messages=arrived.messages,
            counted="poll" if kept_up else "arrival",
            rest_cpu_percent=100 * (rest1 - rest0) / (m1 - m0),
        )
    finally:
        for proc in reversed(procs):
            stop(proc)  # SIGTERM; tb_launch turns it into the SIGINT ThingsBoard stops on


def _mean(runs: Sequence[Run], attr: str) -> float:
    return statistics.fmean(getattr(r, attr) for r in runs)


def _result(b: Bench, loads: Sequence[int], ceiling: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for load in [*loads, *([ceiling] if ceiling else [])]:
        for side in ("ours", "peer"):
            runs = [r for r in b.runs if r.side == side and r.offered == load]
            if not runs:
                continue
            at = f"{side}_at_{load}_points_per_s"
            out[f"cpu_s_per_1k_points_{at}"] = round(_mean(runs, "cpu_s_per_1k_points"), 4)
            out[f"cpu_percent_{at}"] = round(_mean(runs, "cpu_percent"), 1)
            out[f"delivered_points_per_s_{at}"] = round(_mean(runs, "points_per_s"))
            out[f"payload_bytes_per_point_{at}"] = round(_mean(runs, "payload_bytes_per_point"), 2)
            out[f"latency_p50_s_{at}"] = round(_mean(runs, "latency_p50_s"), 3)
            out[f"latency_p99_s_{at}"] = round(_mean(runs, "latency_p99_s"), 3)
            out[f"rss_mb_{at}"] = round(_mean(runs, "rss_mb"), 1)
            out[f"runs_{at}"] = len(runs)
        ours_key, peer_key = (
            f"cpu_s_per_1k_points_ours_at_{load}_points_per_s",
            f"cpu_s_per_1k_points_peer_at_{load}_points_per_s",
        )
        if load != ceiling and ours_key in out and peer_key in out:
            out[f"cpu_ratio_vs_peer_at_{load}_points_per_s"] = round(out[ours_key] / out[peer_key], 3)
    main = f"at_{MAIN_LOAD}_points_per_s"
    for side in ("ours", "peer"):
        for name in ("cpu_s_per_1k_points", "payload_bytes_per_point", "latency_p50_s", "latency_p99_s", "rss_mb"):
            if f"{name}_{side}_{main}" in out:
                out[f"{name}_{side}"] = out[f"{name}_{side}_{main}"]
        if ceiling and f"delivered_points_per_s_{side}_at_{ceiling}_points_per_s" in out:
            out[f"points_per_s_one_core_ceiling_{side}"] = out[
                f"delivered_points_per_s_{side}_at_{ceiling}_points_per_s"
            ]
    if f"cpu_ratio_vs_peer_{main}" in out:
        out["cpu_ratio_vs_peer"] = out[f"cpu_ratio_vs_peer_{main}"]
    if "points_per_s_one_core_ceiling_ours" in out and "points_per_s_one_core_ceiling_peer" in out:
        ratio = out["points_per_s_one_core_ceiling_ours"] / out["points_per_s_one_core_ceiling_peer"]
        out["ceiling_ratio_ours_vs_peer"] = round(ratio, 2)
    if ceiling:
        out["ceiling_offered_points_per_s"] = ceiling
    return out


def _table(b: Bench) -> None:
    head = f"{'side':<5} {'offered/s':>9} {'points/s':>9} {'CPU %':>6} {'CPU-s/1k':>9} {'B/point':>8}"
    print(f"{head} {'p50 s':>6} {'p99 s':>6} {'RSS MB':>7} {'msgs':>5} {'CPU0 %':>6} counted by")
    for r in b.runs:
        print(
            f"{r.side:<5} {r.offered:>9} {r.points_per_s:>9.0f} {r.cpu_percent:>6.1f} {r.cpu_s_per_1k_points:>9.4f}"
            f" {r.payload_bytes_per_point:>8.2f} {r.latency_p50_s:>6.3f} {r.latency_p99_s:>6.3f} {r.rss_mb:>7.1f}"
            f" {r.messages:>5} {r.rest_cpu_percent:>6.1f} {r.counted}"
        )


async def _bench(work: Path, args: argparse.Namespace, sides: list[Side]) -> Bench:
    pki = generate_pki(work / "pki", thing_name=THING)
    add_client(pki.directory, PEER_CLIENT)
    add_client(pki.directory, SUBSCRIBER)
    broker = MosquittoBroker(pki, work / "broker")
    broker.start()
    settings = MqttSettings(
        endpoint="127.0.0.1",
        port=broker.port,
        ca_file=pki.ca_file,
        cert_file=pki.directory / f"{SUBSCRIBER}.pem",
        key_file=pki.directory / f"{SUBSCRIBER}.key",
        keep_alive_s=30,
        iot_core_flow_control=False,
    )
    subscriber = Subscriber(settings, SUBSCRIBER, f"dt/{THING}/plant")
    b = Bench(work, pki, broker, subscriber, args)
    this = asyncio.current_task()
    assert this is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, this.cancel)  # stop like Ctrl-C: clean up
    try:
        await subscriber.start()
        loads = [int(x) for x in args.loads.split(",") if x]
        schedule = [*loads, *([args.ceiling] if args.ceiling else [])]
        for round_no in range(1, args.rounds + 1):
            for load in schedule:
                for side in sides:
                    if side in b.failures:
                        continue
                    label = f"r{round_no}-{load}-{side}"
                    print(f"run {label} ...", flush=True)
                    try:
                        run = await run_one(b, side, load, label, ceiling=load == args.ceiling)
                    except RuntimeError as exc:
                        b.failures[side] = str(exc)
                        print(f"{side} failed, continuing without it: {exc}", flush=True)
                        continue
                    b.runs.append(run)
                    print(
                        f"  {run.points_per_s:.0f} points/s, {run.cpu_percent:.1f} % CPU,"
                        f" {run.cpu_s_per_1k_points:.4f} CPU-s/1k points, {run.payload_bytes_per_point:.1f} B/point,"
                        f" p99 {run.latency_p99_s:.3f} s, {run.rss_mb:.0f} MB (counted by {run.counted})",
                        flush=True,
                    )
    finally:
        with contextlib.suppress(Exception):
            await subscriber.stop()
        broker.stop()
    print(f"undecodable messages: {dict(subscriber.undecodable)}; RPCs answered: {subscriber.rpc_answered}")
    for side, payload in subscriber.samples.items():
        (work / f"sample-{side}.json").write_bytes(payload)
    return b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=15, help="measurement window per run")
    parser.add_argument("--warmup-s", type=float, default=6, help="after the first points, before measuring")
    parser.add_argument("--settle-s", type=float, default=3, help="after the window, for its points to arrive")
    parser.add_argument("--loads", default="5000,20000", help="offered points/s, comma-separated (x 10 = tags)")
    parser.add_argument("--ceiling", type=int, default=80000, help="offered points/s for the ceiling (0: none)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sides", default="ours,peer")
    parser.add_argument("--peer-python", default=str(PEER_PYTHON))
    parser.add_argument("--dir", type=Path, default=None, help="parent of the scratch directory")
    parser.add_argument("--keep", type=Path, default=None, help="run in this directory and keep its logs")
    args = parser.parse_args(argv)
    sides: list[Side] = [s for s in ("ours", "peer") if s in args.sides.split(",")]
    if "peer" in sides and not Path(args.peer_python).exists():
        print(f"peer not measured: {args.peer_python} is missing (`make bench-peer` installs it)")
        sides.remove("peer")
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {REST_CPU})  # this process, the broker and the simulators: CPU 0
    started = time.monotonic()
    try:
        if args.keep is not None:
            args.keep.mkdir(parents=True)
            b = asyncio.run(_bench(args.keep, args, sides))
        else:
            with scratch_dir("peer", args.dir) as work:
                b = asyncio.run(_bench(work, args, sides))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: every process this benchmark started was stopped; no results written")
        return 130
    elapsed = time.monotonic() - started
    _table(b)
    loads = [int(x) for x in args.loads.split(",") if x]
    result = _result(b, loads, args.ceiling)
    result["rounds"] = args.rounds
    result["measure_s"] = args.seconds
    result["run_time_s"] = round(elapsed)
    points = holding_registers(plant_tags(MAIN_LOAD * configs.POLL_MS // 1000, only="float32"))
    ours_chars, peer_chars = configs.key_chars(points)
    result["key_chars_mean_ours"], result["key_chars_mean_peer"] = round(ours_chars, 1), round(peer_chars, 1)
    print_table([(k, str(v)) for k, v in result.items()])
    for side, reason in b.failures.items():
        print(f"{side}: not (fully) measured: {reason.splitlines()[0]}")
    write_results("peer", result)
    return 0 if b.runs else 1


if __name__ == "__main__":
    sys.exit(main())
