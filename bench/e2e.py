"""End-to-end benchmark: PLC simulators -> gateway (pinned to one core) -> Mosquitto over mutual TLS.

For each offered load (Modbus points polled per second, plus the OPC UA simulator's tags), measures what
the gateway sustains: points/s collected and points/s acknowledged by the broker (PUBACK), the gateway's
CPU (user + system, from /proc) and RSS. The gateway runs on CPU 1 (``taskset``); simulators, Mosquitto and
this script share CPU 0. IoT Core flow control is off here (a local broker); with it on, one connection
is capped near 500 KB/s of payload (DESIGN.md §4) and the figures in docs/benchmarks.md say what that means.

    python -m bench.e2e [--seconds 15] [--loads 10000,20000,40000]

Prints a table and writes bench/results/e2e.json (a flat object of numbers).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import cpu_seconds, rss_mb, scratch_dir, write_results
from simulators.iot_core import MosquittoBroker
from simulators.pki import generate_pki
from simulators.ports import free_port

THING = "bench-gateway"
_POLL_MS = 50


def _spawn(args: list[str], cpu: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, *args], stdout=out, stderr=out)


def _wait_ready(log: Path, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while "READY" not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            msg = f"not ready: {log}"
            raise RuntimeError(msg)
        time.sleep(0.1)


def _status(path: Path) -> dict[str, Any]:
    for _ in range(50):
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            time.sleep(0.1)
    msg = f"no status at {path}"
    raise RuntimeError(msg)


def run_level(work: Path, broker_port: int, load: int, seconds: float) -> dict[str, float]:
    points = max(1, load * _POLL_MS // 1000)
    registers = points + 16
    logs = work / f"load-{load}"
    logs.mkdir()
    opcua_port, modbus_port = free_port(), free_port()
    procs = [
        _spawn(["-m", "simulators.opcua_plc", "--port", str(opcua_port)], 0, logs / "opcua.log"),
        _spawn(
            [
                "-m",
                "simulators.modbus_plc",
                "--port",
                str(modbus_port),
                "--registers",
                str(registers),
                "--tick-ms",
                "50",
            ],
            0,
            logs / "modbus.log",
        ),
    ]
    try:
        _wait_ready(logs / "opcua.log")
        _wait_ready(logs / "modbus.log")
        pki = work / "pki"
        config = {
            "gateway": {"thing_name": THING, "data_dir": str(logs / "var")},
            "sources": [
                {
                    "type": "opcua",
                    "name": "press",
                    "endpoint": f"opc.tcp://127.0.0.1:{opcua_port}",
                    "publishing_interval_ms": 100,
                    "nodes": [
                        {"alias": f"press.{t.lower()}", "node_id": f"ns=2;s=Line1.{t}"}
                        for t in ("Counter", "Temperature", "Pressure", "Speed", "Running", "State")
                    ],
                },
                {
                    "type": "modbus",
                    "name": "line",
                    "host": "127.0.0.1",
                    "port": modbus_port,
                    "poll_interval_ms": _POLL_MS,
                    "points": [{"alias": f"line.r{a}", "address": a} for a in range(16, 16 + points)],
                },
            ],
            "publisher": {
                "mqtt": {
                    "endpoint": "127.0.0.1",
                    "port": broker_port,
                    "ca_file": str(pki / "ca.pem"),
                    "cert_file": str(pki / f"{THING}.pem"),
                    "key_file": str(pki / f"{THING}.key"),
                    "iot_core_flow_control": False,
                },
                "destinations": [{"type": "iotcore", "name": "cloud"}],
            },
            "status": {"interval_s": 0.5},
        }
        (logs / "gateway.yaml").write_text(yaml.safe_dump(config))
        gateway = _spawn(["-m", "edge_gateway", "run", "--config", str(logs / "gateway.yaml")], 1, logs / "gateway.log")
        procs.append(gateway)
        status_path = logs / "var" / "status.json"
        time.sleep(5)  # connect, subscribe, reach steady state
        s0, c0, t0 = _status(status_path), cpu_seconds(gateway.pid), time.monotonic()
        time.sleep(seconds)
        s1, c1, t1 = _status(status_path), cpu_seconds(gateway.pid), time.monotonic()
        rss = rss_mb(gateway.pid)
        dt = t1 - t0

        def delta(doc1: dict[str, Any], doc0: dict[str, Any], key: str) -> float:
            return float(sum(v[key] for v in doc1.values()) - sum(v[key] for v in doc0.values()))

        collected = delta(s1["sources"], s0["sources"], "readings") / dt
        published = delta(s1["destinations"], s0["destinations"], "points") / dt
        cpu_percent = 100 * (c1 - c0) / dt
        return {
            "offered_points_per_s": points * 1000 / _POLL_MS,
            "collected_points_per_s": round(collected),
            "published_points_per_s": round(published),
            "cpu_percent": round(cpu_percent, 1),
            "cpu_percent_per_1k_points_per_s": round(cpu_percent / (published / 1000), 3) if published else 0.0,
            "rss_mb": round(rss, 1),
            "backlog_records": s1["buffer"]["unacked"]["cloud"],
            "overruns": s1["sources"]["line"]["errors_by_kind"].get("overrun", 0),
        }
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--loads", default="5000,10000,20000,40000", help="offered Modbus points/s, comma-separated")
    args = parser.parse_args()
    loads = [int(x) for x in args.loads.split(",")]
    with scratch_dir("e2e") as work:
        generate_pki(work / "pki", thing_name=THING)
        broker = MosquittoBroker(generate_pki(work / "pki", thing_name=THING), work / "broker")
        broker.start()
        try:
            rows = [run_level(work, broker.port, load, args.seconds) for load in loads]
        finally:
            broker.stop()
    print(
        f"{'offered/s':>10} {'collected/s':>12} {'published/s':>12} {'CPU %':>7} {'%/1k pts/s':>11}"
        f" {'RSS MB':>7} {'backlog':>8}"
    )
    for r in rows:
        print(
            f"{r['offered_points_per_s']:>10.0f} {r['collected_points_per_s']:>12.0f}"
            f" {r['published_points_per_s']:>12.0f} {r['cpu_percent']:>7.1f}"
            f" {r['cpu_percent_per_1k_points_per_s']:>11.3f} {r['rss_mb']:>7.1f} {r['backlog_records']:>8}"
        )
    # Sustained: the highest load the gateway kept up with (published within 5 % of collected, no backlog).
    kept_up = [r for r in rows if r["published_points_per_s"] >= 0.95 * r["collected_points_per_s"]]
    best = max(kept_up or rows, key=lambda r: r["published_points_per_s"])
    result = {
        "points_per_s_one_core": best["published_points_per_s"],
        "rss_mb": best["rss_mb"],
        "cpu_percent_per_1k_points_per_s": best["cpu_percent_per_1k_points_per_s"],
        "cpu_percent_at_best": best["cpu_percent"],
    }
    for r in rows:
        result[f"cpu_percent_at_{int(r['offered_points_per_s'])}_offered"] = r["cpu_percent"]
        result[f"published_points_per_s_at_{int(r['offered_points_per_s'])}_offered"] = r["published_points_per_s"]
    write_results("e2e", result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
