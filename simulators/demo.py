"""`make demo`: the whole product on one machine, with a live view.

Starts on 127.0.0.1: the OPC UA and Modbus PLC simulators, Mosquitto with mutual TLS (test PKI in
``var/demo/pki``), the Device Shadow service stand-in (``python -m simulators.shadow serve --dir var/demo``,
log in ``var/demo/shadow.log``), the gateway (``edge-gateway run --config var/demo/gateway.yaml``, log in
``var/demo/gateway.log``) and a consumer standing in for the cloud. Every second it redraws the gateway's
status table plus what the consumer received. Ctrl-C stops everything.

The gateway follows the named shadow ``edge-gateway`` of its thing ``demo-gateway`` (the default
``shadow`` settings); the startup output shows the ``python -m simulators.shadow set|get`` commands that
change its desired state by hand.

Options: ``--duration S`` stops after S seconds; ``--outage S`` stops the broker for S seconds, 10 s in,
so you can watch the buffer fill and drain; ``--dir`` (default ``var/demo``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from edge_gateway.config.model import MqttSettings, ShadowSettings
from edge_gateway.observe.status import render
from edge_gateway.publish.transport.mqtt import MqttTransport
from simulators.iot_core import MosquittoBroker
from simulators.pki import add_client, generate_pki
from simulators.ports import free_port
from simulators.process import stop_process

THING = "demo-gateway"
SHADOW = ShadowSettings().name  # the gateway config leaves `shadow` at its defaults
# Clients of the shadow service and of its CLI, made with the PKI so the service and a person's first
# `simulators.shadow` command find them instead of writing certificates while the demo runs.
SHADOW_CLIENTS = ("shadow-service", "shadow-cli")


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *args], stdout=out, stderr=out, env=os.environ | {"PYTHONUNBUFFERED": "1"}
        )


def _wait_ready(log: Path, proc: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if "READY" in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    msg = f"{' '.join(str(a) for a in proc.args)} did not start; see {log}"  # type: ignore[union-attr]
    raise RuntimeError(msg)


def _mqtt(directory: Path, port: int, client: str) -> dict[str, Any]:
    return {
        "endpoint": "127.0.0.1",
        "port": port,
        "ca_file": str(directory / "pki" / "ca.pem"),
        "cert_file": str(directory / "pki" / f"{client}.pem"),
        "key_file": str(directory / "pki" / f"{client}.key"),
        "keep_alive_s": 10,
        "reconnect_min_s": 0.5,
        "reconnect_max_s": 5,
    }


def write_config(directory: Path, broker_port: int, opcua_port: int, modbus_port: int) -> Path:
    config = {
        "gateway": {"thing_name": THING, "data_dir": str(directory / "gateway")},
        "buffer": {"max_bytes": 256 << 20},
        "sources": [
            {
                "type": "opcua",
                "name": "press",
                "endpoint": f"opc.tcp://127.0.0.1:{opcua_port}",
                "publishing_interval_ms": 200,
                "nodes": [
                    {"alias": f"press.{tag.lower()}", "node_id": f"ns=2;s=Line1.{tag}"}
                    for tag in ("Counter", "Temperature", "Pressure", "Speed", "Running", "State")
                ],
            },
            {
                "type": "modbus",
                "name": "boiler",
                "host": "127.0.0.1",
                "port": modbus_port,
                "poll_interval_ms": 100,
                "points": [
                    {"alias": "boiler.counter", "address": 0, "data_type": "uint32"},
                    {"alias": "boiler.temperature", "address": 2, "data_type": "int16", "scale": 0.1},
                    {"alias": "boiler.pressure", "address": 3, "data_type": "float32"},
                    {"alias": "boiler.speed", "address": 5, "data_type": "uint16"},
                    {"alias": "boiler.position", "address": 6, "data_type": "int32"},
                    {"alias": "boiler.energy", "table": "input", "address": 0, "data_type": "uint32"},
                    {
                        "alias": "boiler.flow",
                        "table": "input",
                        "address": 2,
                        "data_type": "float32",
                        "word_order": "little",
                    },
                ],
            },
        ],
        "publisher": {
            "mqtt": _mqtt(directory, broker_port, THING) | {"port": broker_port},
            "destinations": [{"type": "iotcore", "name": "cloud", "topic": "dt/{thing}/{source}"}],
        },
        "status": {"interval_s": 1.0},
    }
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def shadow_hint(directory: Path) -> str:
    """The commands that set and read the gateway's shadow by hand, as a person would type them here."""
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):
        python = python.relative_to(Path.cwd())  # `.venv/bin/python` under `make demo`
    command = [str(python), "-m", "simulators.shadow"]
    where = [] if directory == Path("var/demo").resolve() else ["--dir", str(directory)]
    target = [*where, "--thing", THING, "--name", SHADOW]
    desired = json.dumps({"heartbeat": {"interval_s": 10}})
    set_line = shlex.join([*command, "set", *target, "--desired", desired])
    get_line = shlex.join([*command, "get", *target])
    return (
        f"shadow  the gateway follows the shadow {SHADOW!r} of thing {THING!r} "
        f"(service log: {directory / 'shadow.log'}). Set desired state, then read what it reports:\n"
        f"  {set_line}\n"
        f"  {get_line}"
    )


class CloudView:
    """The consumer: counts what reaches the broker, per source."""

    def __init__(self) -> None:
        self.points: Counter[str] = Counter()
        self.messages = 0
        self.bytes = 0
        self.last_counter: dict[str, Any] = {}

    def on_message(self, topic: str, payload: bytes) -> None:
        if topic.endswith(("/status", "/audit")):  # the gateway's own status and audit trail, not data
            return
        doc = json.loads(payload)
        self.messages += 1
        self.bytes += len(payload)
        self.points[doc["src"]] += doc["n"]
        for alias, entries in doc["p"].items():
            if alias.endswith(".counter") and entries:
                self.last_counter[alias] = entries[-1][1]

    def line(self) -> str:
        per_source = ", ".join(f"{src} {n}" for src, n in sorted(self.points.items())) or "nothing yet"
        counters = ", ".join(f"{a}={v}" for a, v in sorted(self.last_counter.items()))
        return (
            f"cloud   received {sum(self.points.values())} points in {self.messages} messages "
            f"({self.bytes / 1e3:.0f} kB): {per_source}; last {counters}"
        )


def prepare(directory: Path) -> MosquittoBroker:
    """Certificates (made once, kept) and the broker, before the event loop starts."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = generate_pki(directory / "pki", thing_name=THING)
    for client in ("demo-consumer", *SHADOW_CLIENTS):
        if not (directory / "pki" / f"{client}.pem").exists():
            add_client(directory / "pki", client)
    return MosquittoBroker(pki, directory / "broker")


async def run(args: argparse.Namespace, directory: Path, broker: MosquittoBroker) -> int:
    broker.start()
    opcua_port, modbus_port = free_port(), free_port()
    procs = []
    try:
        for module, port in (("simulators.opcua_plc", opcua_port), ("simulators.modbus_plc", modbus_port)):
            log = directory / f"{module.split('.')[-1]}.log"
            log.write_text("")
            proc = _spawn(["-m", module, "--port", str(port)], log)
            procs.append(proc)
            _wait_ready(log, proc)
        shadow_log = directory / "shadow.log"
        shadow_log.write_text("")
        # Before the gateway, so its first shadow `get` is answered rather than retried after a backoff.
        shadow = _spawn(["-m", "simulators.shadow", "serve", "--dir", str(directory)], shadow_log)
        procs.append(shadow)
        _wait_ready(shadow_log, shadow)
        hint = shadow_hint(directory)
        print(hint, flush=True)
        config = write_config(directory, broker.port, opcua_port, modbus_port)
        gateway = _spawn(["-m", "edge_gateway", "run", "--config", str(config)], directory / "gateway.log")
        procs.append(gateway)
        view = CloudView()
        cloud = MqttTransport(MqttSettings(**_mqtt(directory, broker.port, "demo-consumer")), "demo-consumer")
        await cloud.start()
        await cloud.subscribe("dt/#", view.on_message)
        await _live(args, directory, broker, gateway, view, hint=hint)
        await cloud.stop()
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        broker.stop()
    print(f"\nstopped. logs and config in {directory}")
    return 0


async def _live(
    args: argparse.Namespace,
    directory: Path,
    broker: MosquittoBroker,
    gateway: subprocess.Popen[bytes],
    view: CloudView,
    *,
    hint: str,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    status_file = directory / "gateway" / "status.json"
    outage_from, outage_to = 10.0, 10.0 + args.outage
    while not stop.is_set():
        elapsed = time.monotonic() - started
        if args.outage and outage_from <= elapsed < outage_to and broker.running:
            broker.stop()
        elif args.outage and elapsed >= outage_to and not broker.running:
            broker.start()
        if gateway.poll() is not None:
            print(f"the gateway exited with {gateway.returncode}; see {directory / 'gateway.log'}")
            return
        try:
            status = render(json.loads(status_file.read_text()))
        except (OSError, ValueError):
            status = "gateway starting..."
        banner = f"edge-gateway demo - {elapsed:.0f} s - broker {'UP' if broker.running else 'DOWN (outage)'}"
        screen = f"{banner}\n\n{status}\n\n{view.line()}\n\nCtrl-C to stop. Logs: {directory}"
        if sys.stdout.isatty():
            # The startup output is cleared by the first redraw: keep the shadow commands on screen.
            print(f"\033[2J\033[H{screen}\n\n{hint}", flush=True)
        else:
            print(screen + "\n" + "-" * 100, flush=True)
        if args.duration and elapsed >= args.duration:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run simulators, a local mTLS broker and the gateway, with a live view"
    )
    parser.add_argument("--dir", type=Path, default=Path("var/demo"))
    parser.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: until Ctrl-C)")
    parser.add_argument("--outage", type=float, default=0, help="stop the broker for this many seconds, 10 s in")
    args = parser.parse_args(argv)
    directory = args.dir.resolve()
    return asyncio.run(run(args, directory, prepare(directory)))


if __name__ == "__main__":
    sys.exit(main())
