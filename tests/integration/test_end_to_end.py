"""The whole pipeline: PLC simulators -> gateway (a subprocess, from a config file) -> Mosquitto (mTLS)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from edge_gateway.observe.status import clock_synchronised
from simulators.iot_core import MosquittoBroker
from simulators.pki import Pki
from tests.support import COUNTERS, THING, Consumer, GatewayProcess, gateway_config

STATUS = f"dt/{THING}/status"
AUDIT = f"dt/{THING}/audit"


def assert_complete(values: list[Any], alias: str) -> list[int]:
    """Every counter value from the first received to the last is there, in order; returns the distinct ones."""
    assert values, f"no {alias} values received"
    distinct = sorted(set(values))
    missing = sorted(set(range(distinct[0], distinct[-1] + 1)) - set(distinct))
    assert not missing, f"{alias}: {len(missing)} value(s) missing, first {missing[:10]}"
    return distinct


def assert_in_order(values: list[Any], alias: str) -> None:
    firsts = list(dict.fromkeys(values))  # first arrival of each value, in arrival order
    assert firsts == sorted(firsts), f"{alias}: values arrived out of order"


async def test_counters_of_both_sources_arrive_complete_and_in_order(
    gateway: GatewayProcess, consumer: Consumer
) -> None:
    await consumer.subscribe("dt/#")
    gateway.start()
    await consumer.wait_for(lambda: all(len(set(consumer.values(a))) >= 40 for a in COUNTERS), 40)
    for alias in COUNTERS:
        assert_complete(consumer.values(alias), alias)
        assert_in_order(consumer.values(alias), alias)
    docs = consumer.docs()
    assert {d["src"] for d in docs} == {"press", "boiler"}
    assert {t for t, _ in consumer.messages} == {"dt/test-gateway/press", "dt/test-gateway/boiler", STATUS, AUDIT}
    assert all(d["v"] == 1 and d["gw"] == "test-gateway" for d in docs)
    for doc in docs:
        assert doc["n"] == sum(len(entries) for entries in doc["p"].values())
    # Without failures each reading is published once: per source, sequence ranges never overlap.
    for src in ("press", "boiler"):
        ranges = sorted(tuple(d["seq"]) for d in docs if d["src"] == src)
        for (_, last), (first, _) in itertools.pairwise(ranges):
            assert first > last, f"{src}: overlapping sequence ranges {ranges}"
    status = gateway.wait_status(lambda s: s["destinations"]["cloud"]["points"] > 0, 10)
    assert status["mqtt"]["connected"] is True
    assert status["sources"]["press"]["state"] == "connected"
    assert status["sources"]["boiler"]["state"] == "connected"
    assert gateway.stop() == 0
    assert "gateway test-gateway stopped" in gateway.log()


async def test_presence_online_then_offline_on_kill_then_stopped_on_a_clean_stop(
    gateway: GatewayProcess, consumer: Consumer
) -> None:
    await consumer.subscribe(STATUS)
    gateway.start()
    await consumer.wait_for(lambda: consumer.presence() == ["online"], 30)
    gateway.kill()  # no DISCONNECT: the broker publishes the Last Will
    await consumer.wait_for(lambda: consumer.presence() == ["online", "offline"], 30)
    gateway.start()
    await consumer.wait_for(lambda: consumer.presence() == ["online", "offline", "online"], 30)
    assert gateway.stop() == 0
    await consumer.wait_for(lambda: len(consumer.presence()) == 4, 10)
    await asyncio.sleep(1.0)  # a Last Will would follow the DISCONNECT at once
    assert consumer.presence() == ["online", "offline", "online", "stopped"]  # and no Last Will after it
    docs = consumer.status_docs("presence")
    assert all(d["v"] == 1 and d["gw"] == "test-gateway" and d["client_id"] == "test-gateway-gateway" for d in docs)
    assert "time" not in docs[1]  # the Last Will was set at connect time
    assert docs[2]["started"] > docs[0]["started"]  # a new process


async def test_heartbeats_carry_the_status_at_the_interval_and_agree_with_what_arrived(
    tmp_path: Path, pki: Pki, broker: MosquittoBroker, plcs: tuple[int, int], consumer: Consumer
) -> None:
    config = gateway_config(tmp_path, pki, broker, opcua_port=plcs[0], modbus_port=plcs[1])
    config["heartbeat"] = {"interval_s": 1}
    gateway = GatewayProcess(config, tmp_path)
    received: list[tuple[str, int]] = []  # (kind, data points received so far) in arrival order
    beats: list[dict[str, Any]] = []

    def on_message(_topic: str, payload: bytes) -> None:
        doc = json.loads(payload)
        seen = received[-1][1] if received else 0
        received.append(("data", seen + int(doc["n"])) if "n" in doc else (doc["kind"], seen))
        if doc.get("kind") == "heartbeat":
            beats.append(doc)

    await consumer.transport.subscribe("dt/#", on_message)
    gateway.start()
    try:
        async with asyncio.timeout(30):
            while len(beats) < 6:
                await asyncio.sleep(0.1)
        table = subprocess.run(
            [sys.executable, "-m", "edge_gateway", "status", "--config", str(gateway.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    finally:
        gateway.stop()
    assert "host    cpu " in table
    synchronised = clock_synchronised()
    assert ("the system clock is not synchronised" in gateway.log()) == (synchronised is False)
    assert ("CLOCK NOT SYNCHRONISED" in table) == (synchronised is False)
    assert "press" in table
    assert "boiler" in table
    # At most one heartbeat per interval (the first follows the connect): a lower bound a loaded machine
    # cannot break, as it only stretches the gaps; that they keep coming is the wait for six above.
    times = [b["time"] for b in beats[1:]]
    assert times == sorted(set(times)), times
    assert all(b - a > 0.5 for a, b in itertools.pairwise(times)), times
    for beat in beats:
        assert beat["state"] == "online"
        assert beat["gw"] == THING
        status = beat["status"]
        assert set(status["sources"]) == {"press", "boiler"}
        assert status["buffer"]["dropped"] == {"full": 0, "expired": 0, "corrupt": 0, "io_error": 0}
        host = status["host"]
        assert host["rss_mb"] > 10
        assert host["disk_free_mb"] > 0
        assert type(host["load_1m"]) is float  # os.getloadavg()[0], rounded: never None, an int or a string
        assert 0 <= host["load_1m"] < 1000
        clock = status["clock"]
        assert isinstance(clock["synchronised"], bool)  # Linux: the kernel's NTP state
        assert clock["synchronised"] == synchronised
        # The kernel's maxerror is in microseconds and capped at 16 s (NTP_PHASE_LIMIT): in ms, 0..16,000.
        # A value left in microseconds would exceed it on an unsynchronised clock (maxerror at its cap).
        assert type(clock["max_error_ms"]) in {int, float}
        assert 0 <= clock["max_error_ms"] <= 16_000
        assert clock["jumps"] == 0
    cpu = [b["status"]["host"]["cpu_percent"] for b in beats]
    # This process's CPU time over the wall time since the previous snapshot, in % of one core: between 0 and
    # 100 per core (a ratio upside down, or CPU seconds over wall milliseconds, falls outside). The very first
    # snapshot may have no interval to measure over (None).
    measured = [c for c in cpu if c is not None]
    assert len(measured) >= len(cpu) - 1, cpu
    assert all(0 <= c <= 100 * (os.cpu_count() or 1) for c in measured), cpu
    assert any(c > 0 for c in measured), cpu  # collecting and publishing for seconds costs some CPU
    # What a heartbeat says was acknowledged had arrived at the subscriber by the next heartbeat.
    received_at = [seen for kind, seen in received if kind == "heartbeat"]
    acked = [b["status"]["destinations"]["cloud"]["points"] for b in beats]
    assert acked == sorted(acked)
    assert acked[-1] > 0
    for said, later in zip(acked, received_at[1:], strict=False):
        assert later >= said


def test_invalid_config_names_the_field_and_starts_nothing(tmp_path: Path, pki: Pki, broker: MosquittoBroker) -> None:
    config = gateway_config(tmp_path, pki, broker, opcua_port=4840, modbus_port=5020)
    config["sources"][1]["points"][0]["data_type"] = "int24"
    config["publisher"]["mqtt"]["port"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    for command in ("validate", "run"):
        result = subprocess.run(
            [sys.executable, "-m", "edge_gateway", command, "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert "sources.1.modbus.points.0.data_type: Input should be 'int16', 'uint16'" in result.stderr
        assert "publisher.mqtt.port: Input should be greater than or equal to 1" in result.stderr
    assert not (tmp_path / "var").exists()  # no buffer, no status file: nothing started
