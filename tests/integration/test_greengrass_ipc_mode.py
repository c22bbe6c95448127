"""The gateway in IPC mode (``publisher.mqtt.mode: greengrass_ipc``) against the nucleus IPC stand-in.

The gateway runs as a subprocess (``python -m edge_gateway run``) with the environment the nucleus gives a
component (``server.environ()``) and the PLC simulators as sources; the stand-in enforces recipe.yaml's own
``accessControl``. The stand-in serves on this test's event loop, so every wait here is asynchronous.
"""

from __future__ import annotations

import asyncio
import json
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulators.greengrass_ipc import AccessControl, GreengrassIpcServer, IpcComponent
from simulators.iot_core import MosquittoBroker
from simulators.pki import Pki
from simulators.shadow.document import ShadowKey
from tests.support import THING, GatewayProcess, gateway_config

COMPONENT = "com.example.EdgeGateway"
SVCUID = "svcuid-of-the-gateway"
RECIPE = Path(__file__).parents[2] / "recipe.yaml"
SHADOW = ShadowKey(THING, "edge-gateway")
DATA = f"dt/{THING}/press"
STATUS = f"dt/{THING}/status"


class IpcGatewayProcess(GatewayProcess):
    """The gateway run with the nucleus' environment for the component (``environ``)."""

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert self.proc is not None
            assert self.proc.poll() is None, f"gateway exited: {self.log()[-3000:]}"
            if time.monotonic() > deadline:
                pytest.fail(f"{what} within {timeout_s} s; status {self.status()}\nlog:\n{self.log()[-3000:]}")
            await asyncio.sleep(0.1)


@pytest.fixture
def socket_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="gg", dir="/tmp") as directory:  # <= 107 characters
        yield Path(directory) / "ipc.sock"


def recipe_component(*, without_data_grant: bool = False) -> IpcComponent:
    doc = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    access = doc["ComponentConfiguration"]["DefaultConfiguration"]["accessControl"]
    if without_data_grant:  # as if the deployed recipe forgot the data topics: only the status topic
        access["aws.greengrass.ipc.mqttproxy"] = {
            f"{COMPONENT}:mqttproxy:1": {
                "operations": ["aws.greengrass#PublishToIoTCore"],
                "resources": ["dt/{iot:thingName}/status"],
            }
        }
    return IpcComponent(COMPONENT, SVCUID, AccessControl(access, thing_name=THING))


@pytest.fixture
def ipc_gateway(
    tmp_path: Path, pki: Pki, broker: MosquittoBroker, plcs: tuple[int, int], socket_path: Path
) -> Iterator[IpcGatewayProcess]:
    config = gateway_config(tmp_path, pki, broker, opcua_port=plcs[0], modbus_port=plcs[1])
    # No connection of its own: the nucleus' IPC only (the broker fixture only shapes the base config).
    config["publisher"]["mqtt"] = {"mode": "greengrass_ipc", "ack_timeout_s": 5, "reconnect_min_s": 0.2,
                                   "reconnect_max_s": 1.0}  # fmt: skip
    config["shadow"] = {"request_timeout_s": 5, "confirm_window_s": 5}
    environ = {
        "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT": str(socket_path),
        "SVCUID": SVCUID,
        "AWS_IOT_THING_NAME": THING,
    }
    gw = IpcGatewayProcess(config, tmp_path, environ)
    yield gw
    gw.stop()


def counters(server: GreengrassIpcServer, alias: str = "press.counter") -> list[int]:
    out: list[int] = []
    for m in server.published:
        if m.topic == DATA:
            out.extend(int(entry[1]) for entry in json.loads(m.payload)["p"].get(alias, []))
    return out


def presence(server: GreengrassIpcServer) -> list[str]:
    docs = [json.loads(m.payload) for m in server.published if m.topic == STATUS]
    return [d["state"] for d in docs if d["kind"] == "presence"]


def shadow_document(server: GreengrassIpcServer) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(server.shadows.document(SHADOW, int(time.time())) or {}))
    return doc


def reported_status(server: GreengrassIpcServer) -> dict[str, Any]:
    status: dict[str, Any] = shadow_document(server).get("state", {}).get("reported", {}).get("config_status", {})
    return status


async def test_data_and_shadow_config_go_through_the_nucleus_and_sigterm_stops_cleanly(
    ipc_gateway: IpcGatewayProcess, socket_path: Path
) -> None:
    async with GreengrassIpcServer(socket_path, [recipe_component()], thing_name=THING) as server:
        assert server.environ()["SVCUID"] == ipc_gateway.environ["SVCUID"]
        ipc_gateway.start()
        await ipc_gateway.wait_for(lambda: len(counters(server)) >= 10, 30, "ten press counters published")
        await ipc_gateway.wait_for(lambda: "online" in presence(server), 5, "presence online published")
        # The agent found no shadow (404 from ShadowManager) and reported what it runs.
        await ipc_gateway.wait_for(lambda: reported_status(server).get("status") == "applied", 15, "first report")

        desired = {"state": {"desired": {"heartbeat": {"interval_s": 30}}}}
        outcome = server.shadows.update(SHADOW, json.dumps(desired).encode(), int(time.time()))
        version = outcome.response["version"]
        # ShadowManager publishes the delta on local pub/sub when the cloud's change is synced.
        delta = {"version": version, "state": {"heartbeat": {"interval_s": 30}}}
        assert server.publish_local(f"{SHADOW.topic_prefix}/update/delta", json.dumps(delta).encode()) == 1

        def applied() -> bool:
            status = reported_status(server)
            return status.get("status") == "applied" and status.get("version") == version

        await ipc_gateway.wait_for(applied, 15, f"desired version {version} applied and reported")
        doc = shadow_document(server)
        assert doc["state"]["reported"]["heartbeat"] == {"interval_s": 30}
        assert "delta" not in doc["state"]

        assert ipc_gateway.proc is not None
        ipc_gateway.proc.send_signal(signal.SIGTERM)
        # A clean exit whose last word is "stopped" (checked below); the timeout only gives up waiting.
        code = await asyncio.to_thread(ipc_gateway.proc.wait, 60)
        assert code == 0, ipc_gateway.log()[-3000:]

    values = counters(server)
    assert values == list(range(values[0], values[0] + len(values))), "lost or reordered counters"
    assert presence(server)[-1] == "stopped"
    assert "offline" not in presence(server)
    log = ipc_gateway.log()
    assert "greengrass ipc: connected to the nucleus" in log
    assert "Traceback" not in log


async def test_an_ungranted_topic_is_logged_as_unauthorized_and_the_data_stays_buffered(
    ipc_gateway: IpcGatewayProcess, socket_path: Path
) -> None:
    async with GreengrassIpcServer(socket_path, [recipe_component(without_data_grant=True)]) as server:
        ipc_gateway.start()

        def refused() -> bool:
            cloud = ipc_gateway.status().get("destinations", {}).get("cloud", {})
            return bool(cloud.get("failures_by_code", {}).get("135"))

        await ipc_gateway.wait_for(refused, 30, "data refused as not authorized (135)")
        await ipc_gateway.wait_for(lambda: "online" in presence(server), 5, "presence online published")
        await asyncio.sleep(1.5)  # a few more readings held back
        assert counters(server) == []
        held = ipc_gateway.status()["buffer"]["records"]
        assert held > 0

    log = ipc_gateway.log()
    assert "the Greengrass nucleus refused PublishToIoTCore" in log
    assert "not authorized (Not Authorized)" in log
    assert "accessControl (recipe.yaml)" in log

    # The corrected recipe deployed: the nucleus comes back, the gateway reconnects and sends the backlog.
    async with GreengrassIpcServer(socket_path, [recipe_component()], thing_name=THING) as server:

        def drained() -> bool:
            status = ipc_gateway.status()
            return bool(status) and status["buffer"]["unacked"]["cloud"] < held and bool(counters(server))

        await ipc_gateway.wait_for(drained, 30, "the backlog delivered")
        values = counters(server)
    # Retried after the refusals, the in-flight window goes out again concurrently: order may change,
    # nothing may be missing.
    unique = sorted(set(values))
    assert unique == list(range(unique[0], unique[0] + len(unique))), "lost counters"
    assert not (Path(ipc_gateway.config_path.parent) / "var" / "dead-letter.jsonl").exists()
    assert "lost the connection to the nucleus" in ipc_gateway.log()
