"""A gateway started the Greengrass way (``run --greengrass``, ``gatewayConfig`` inline) with no sources: it
connects, heartbeats and says "no sources configured"; then the shadow stand-in gives it a Modbus source,
data flows from it, and the audit trail records the change. The gateway is a subprocess; Mosquitto with
mutual TLS, the shadow service stand-in and the Modbus simulator run on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulators.iot_core import MosquittoBroker
from simulators.pki import Pki
from simulators.ports import free_port
from simulators.process import stop_process
from simulators.shadow import ShadowService
from tests.integration.test_audit_trail import entries, shadow_outcomes
from tests.integration.test_shadow_config import SHADOW, reported_status, until
from tests.support import MODBUS_TICK_MS, THING, Consumer, GatewayProcess, start_sim


class GreengrassGateway(GatewayProcess):
    """``python -m edge_gateway run --greengrass`` with the environment recipe.yaml's Run step sets."""

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_gateway", "run", "--greengrass"],
                stdout=log,
                stderr=log,
                env=os.environ | self.environ | {"PYTHONUNBUFFERED": "1"},
            )


@pytest.fixture
def gw(tmp_path: Path, pki: Pki, broker: MosquittoBroker) -> Iterator[GreengrassGateway]:
    inline = {  # the deployment's gatewayConfig: no sources; each gateway gets its own from its shadow
        "publisher": {
            "mqtt": {"keep_alive_s": 5, "ack_timeout_s": 5, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0,
                     "iot_core_flow_control": False},
            "destinations": [{"type": "iotcore", "name": "cloud", "max_latency_ms": 200}],
        },
        "status": {"interval_s": 0.5},
        "heartbeat": {"interval_s": 1, "shadow_min_interval_s": 1},
        "shadow": {"request_timeout_s": 3, "confirm_window_s": 10, "allowed_source_hosts": ["127.0.0.1"]},
    }  # fmt: skip
    work = tmp_path / "work"
    environ = {
        "AWS_IOT_THING_NAME": THING,
        "EDGE_GATEWAY_WORK_DIR": str(work),
        "EDGE_GATEWAY_CONFIG_JSON": json.dumps(inline),
        "EDGE_GATEWAY_ENDPOINT": "127.0.0.1",
        "EDGE_GATEWAY_PORT": str(broker.port),
        "EDGE_GATEWAY_CERT_FILE": str(pki.client_cert),
        "EDGE_GATEWAY_KEY_FILE": str(pki.client_key),
        "EDGE_GATEWAY_CA_FILE": str(pki.ca_file),
    }
    # GatewayProcess finds the status and the audit trail under data_dir: the nucleus' <work>/data.
    gateway = GreengrassGateway({"gateway": {"data_dir": str(work / "data")}}, tmp_path, environ)
    yield gateway
    gateway.stop()


def health(shadow: ShadowService) -> dict[str, Any]:
    doc = shadow.document(THING, SHADOW) or {}
    return dict(doc.get("state", {}).get("reported", {}).get("health") or {})


async def test_started_without_sources_it_heartbeats_then_takes_a_source_from_the_shadow(
    gw: GreengrassGateway, consumer: Consumer, shadow: ShadowService
) -> None:
    await consumer.subscribe("dt/#")
    gw.start()

    def empty_heartbeat() -> bool:
        return any(d["status"]["sources"] == {} for d in consumer.status_docs("heartbeat"))

    await consumer.wait_for(empty_heartbeat, 20)
    await reported_status(shadow, "applied", None)  # first contact: it reports what runs
    await until(lambda: "no sources configured" in health(shadow).get("problems", []), 10, "health: no sources")
    assert not health(shadow).get("sources")  # an empty object: the shadow keeps no key for it
    assert "no sources configured" in gw.log()

    port = free_port()
    plc = start_sim("simulators.modbus_plc", port, tick_ms=MODBUS_TICK_MS)
    try:
        boiler = {
            "type": "modbus",
            "name": "boiler",
            "host": "127.0.0.1",
            "port": port,
            "poll_interval_ms": 50,
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
            "points": [{"alias": "boiler.counter", "address": 0, "data_type": "uint32"}],
        }
        accepted = await shadow.set_desired(THING, SHADOW, {"sources": [boiler]})
        await reported_status(shadow, "applied", accepted["version"], 15)
        await consumer.wait_for(lambda: len(set(consumer.values("boiler.counter"))) >= 3, 15)
        outcomes = await until(lambda: shadow_outcomes(gw), 15, "the change confirmed and in the audit trail")
        await until(lambda: health(shadow).get("sources") == {"boiler": "connected"}, 10, "health: boiler")
    finally:
        stop_process(plc)

    assert [(e["event"], e["fields"]["shadow_version"]) for e in outcomes] == [("config.applied", accepted["version"])]
    assert outcomes[0]["fields"]["changed"] == ["sources.0"]
    assert "no sources configured" not in health(shadow)["problems"]
    boot = entries(gw, "config.applied")[0]["fields"]
    assert boot["source"] == "file"  # the start without sources is in the trail too
    assert gw.stop() == 0
    assert "Traceback" not in gw.log()
