"""What an operator sees: the heartbeat on MQTT, `edge-gateway status`, the Prometheus endpoint and the
health summary in the shadow, all from the same running gateway (a subprocess) with real PLC simulators,
Mosquitto and the shadow service stand-in. A PLC stopped mid-run must show up everywhere."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from edge_gateway.observe.status import clock_synchronised
from simulators.iot_core import MosquittoBroker
from simulators.pki import Pki
from simulators.ports import free_port
from simulators.process import stop_process
from simulators.shadow import ShadowService
from tests.support import (
    THING,
    Consumer,
    GatewayProcess,
    PlcProcesses,
    gateway_config,
)

STATUS = f"dt/{THING}/status"
SHADOW = "edge-gateway"
HEARTBEAT_S = 2


async def until(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout_s} s waiting for {what}"
            raise AssertionError(msg)
        await asyncio.sleep(0.1)


def cli(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "edge_gateway", *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def health(svc: ShadowService) -> dict[str, Any] | None:
    doc = svc.document(THING, SHADOW)
    if doc is None:
        return None
    value = doc.get("state", {}).get("reported", {}).get("health")
    return value if isinstance(value, dict) else None


async def test_heartbeat_status_metrics_and_shadow_health_agree_and_follow_a_stopped_plc(  # noqa: PLR0917
    tmp_path: Path,
    pki: Pki,
    broker: MosquittoBroker,
    plc_processes: PlcProcesses,
    consumer: Consumer,
    shadow: ShadowService,
) -> None:
    opcua_port, modbus_port = plc_processes.ports
    config = gateway_config(tmp_path, pki, broker, opcua_port=opcua_port, modbus_port=modbus_port)
    metrics_port = free_port()
    config["heartbeat"] = {"interval_s": HEARTBEAT_S, "shadow_min_interval_s": 1}
    config["metrics"] = {"enabled": True, "port": metrics_port}
    config["shadow"] = {"request_timeout_s": 3}
    gateway = GatewayProcess(config, tmp_path)
    beats: list[dict[str, Any]] = []
    raw: dict[float, dict[str, Any]] = {}

    def on_status(_topic: str, payload: bytes) -> None:
        doc = json.loads(payload)
        if doc["kind"] == "heartbeat":
            beats.append(doc)
            raw[doc["time"]] = doc

    await consumer.transport.subscribe(STATUS, on_status)
    gateway.start()
    try:
        await until(
            lambda: len(beats) >= 3 and beats[-1]["status"]["destinations"]["cloud"]["points"] > 0, 40, "3 beats"
        )
        ok = await until(
            lambda: (h := health(shadow)) and h["sources"].get("boiler") == "connected" and h, 20, "health"
        )

        # `status --last-heartbeat --json` is, byte for byte, a heartbeat the subscriber received.
        last = json.loads(cli("status", "--config", str(gateway.config_path), "--json", "--last-heartbeat"))
        assert last == raw[last["time"]]
        live = json.loads(cli("status", "--config", str(gateway.config_path), "--json"))
        assert live["v"] == 2
        assert set(live) == set(last["status"])
        assert live["destinations"]["cloud"]["points"] >= last["status"]["destinations"]["cloud"]["points"]
        table = cli("status", "--config", str(gateway.config_path), "--last-heartbeat")
        assert table.startswith("last heartbeat acknowledged by the broker")
        assert "DESTINATION" in table
        assert "BACKLOG" in table

        metrics = scrape(metrics_port)
        assert metrics["edge_gateway_source_up", (("source", "press"),)] == 1
        assert metrics["edge_gateway_source_up", (("source", "boiler"),)] == 1
        assert metrics["edge_gateway_mqtt_connected", ()] == 1
        acked = metrics["edge_gateway_destination_points_total", (("destination", "cloud"),)]
        assert acked >= last["status"]["destinations"]["cloud"]["points"] > 0
        assert metrics["edge_gateway_buffer_dropped_total", (("reason", "full"),)] == 0
        info = [labels for (name, labels) in metrics if name == "edge_gateway_info"]
        assert dict(info[0])["config_hash"] == live["gateway"]["config"]["hash"]

        # This machine's kernel may say the clock is not synchronised (containers often do): then that is a
        # problem the health summary must name, and the only one.
        clock = ["clock not synchronised"] if clock_synchronised() is False else []
        assert ok["sources"] == {"press": "connected", "boiler": "connected"}
        assert ok["problems"] == clock
        assert ok["state"] == ("degraded" if clock else "ok")
        assert ok["clock_synchronised"] == clock_synchronised()
        assert ok["config_hash"] == live["gateway"]["config"]["hash"]

        # A PLC stopped: a heartbeat soon says reconnecting, with the error, and the reconnect count grows.
        stop_process(plc_processes.procs["boiler"])
        stopped_at = time.time()

        def after_stop() -> list[dict[str, Any]]:
            return [b for b in beats if b["time"] > stopped_at]

        def reconnecting() -> dict[str, Any] | None:
            return next((b for b in after_stop() if b["status"]["sources"]["boiler"]["state"] == "reconnecting"), None)

        beat = await until(reconnecting, 10 * HEARTBEAT_S + 10, "a heartbeat saying boiler reconnects")
        # Counted in heartbeats, not seconds: the one being built as the PLC went away may still say
        # connected (a poll every 50 ms notices), the one after it must not.
        assert after_stop().index(beat) <= 1, [b["status"]["sources"]["boiler"] for b in after_stop()]
        boiler = beat["status"]["sources"]["boiler"]
        assert boiler["last_error"]
        again = await until(
            lambda: next(
                (b for b in after_stop() if b["status"]["sources"]["boiler"]["reconnects"] > boiler["reconnects"]), None
            ),
            10 * HEARTBEAT_S + 10,
            "a heartbeat counting more reconnects",
        )
        assert again["status"]["sources"]["boiler"]["state"] == "reconnecting"  # the PLC is still away
        assert beat["status"]["sources"]["press"]["state"] == "connected"
        degraded = await until(
            lambda: (h := health(shadow)) and h["sources"]["boiler"] != "connected" and h, 30, "health degraded"
        )
        assert degraded["state"] == "degraded"
        assert degraded["problems"] == ["source boiler reconnecting", *clock]
        assert degraded["sources"] == {"press": "connected", "boiler": "reconnecting"}
        assert scrape(metrics_port)["edge_gateway_source_up", (("source", "boiler"),)] == 0
        assert "boiler" in cli("status", "--config", str(gateway.config_path))
    finally:
        assert gateway.stop() == 0
    log = gateway.log()
    assert f"Prometheus metrics at http://127.0.0.1:{metrics_port}/metrics" in log
    # One heartbeat per interval at most (after the one that follows the connect): the loop sleeps a whole
    # interval between beats, and a loaded machine only stretches the gaps, so this lower bound cannot
    # fail for being slow. That beats keep coming is shown above (a later one counted more reconnects).
    times = [b["time"] for b in beats[1:]]
    assert times == sorted(set(times)), times
    assert all(b - a > HEARTBEAT_S * 0.5 for a, b in itertools.pairwise(times)), times


async def test_a_taken_metrics_port_is_logged_and_the_gateway_runs_on(
    tmp_path: Path, pki: Pki, broker: MosquittoBroker, plcs: tuple[int, int], consumer: Consumer
) -> None:
    import socket  # noqa: PLC0415

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    config = gateway_config(tmp_path, pki, broker, opcua_port=plcs[0], modbus_port=plcs[1])
    config["metrics"] = {"enabled": True, "port": taken.getsockname()[1]}
    config["shadow"] = {"enabled": False}
    gateway = GatewayProcess(config, tmp_path)
    await consumer.subscribe("dt/#")
    gateway.start()
    try:
        await consumer.wait_for(lambda: len(consumer.docs()) >= 3, 30)
    finally:
        taken.close()
        assert gateway.stop() == 0
    assert f"Prometheus metrics not served: cannot listen on 127.0.0.1:{config['metrics']['port']}" in gateway.log()
