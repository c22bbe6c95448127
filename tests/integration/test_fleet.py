"""One deployment for a fleet, end to end against the local stand-ins: two gateways started the Greengrass
way (``run --greengrass``) with the *same* component configuration, deploy/fleet-deployment.json's merge
(no sources, nothing per device; the PLC network it names stands for loopback here), each on its own
thing's certificate. Then a folder of per-device desired documents is pushed, one to each thing's named
shadow, as docs/deployment.md does it with ``aws iot-data update-thing-shadow``; each gateway applies its
own, reports ``config_status`` and ``health`` in its own shadow, and the data of its own Modbus simulator
arrives on its own topics.

The broker's ACL is deploy/iot-policy.json itself, translated: Mosquitto's ``%u`` (the certificate's CN,
which these test certificates set to the thing name) stands for ``${iot:Connection.Thing.ThingName}``, so
one rule set serves both gateways and keeps each to its own topics, as the one IoT policy does in AWS.
(tests/integration/test_no_sources.py follows one gateway with an inline document through the same start.)
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_gateway.errors import PublishError
from edge_gateway.publish.transport.mqtt import MqttTransport
from simulators.iot_core import MosquittoBroker
from simulators.pki import Pki, add_client
from simulators.ports import free_port
from simulators.process import stop_process
from simulators.shadow import ShadowService
from tests.integration.test_no_sources import GreengrassGateway
from tests.integration.test_shadow_config import SHADOW, until
from tests.support import MODBUS_TICK_MS, Consumer, is_data, mqtt_settings, start_sim

ROOT = Path(__file__).parents[2]
THINGS = ("line1-gw", "line2-gw")
THING_VARIABLE = "${iot:Connection.Thing.ThingName}"
TEST_PACE = {"heartbeat": {"interval_s": 1, "shadow_min_interval_s": 1}, "status": {"interval_s": 0.5}}


def policy_acl() -> str:
    """deploy/iot-policy.json as a Mosquitto ACL: Publish → write, Subscribe/Receive → read, per thing (%u)."""
    policy = json.loads((ROOT / "deploy" / "iot-policy.json").read_text(encoding="utf-8"))
    lines = []
    for statement in policy["Statement"]:
        access = {"iot:Publish": "write", "iot:Subscribe": "read", "iot:Receive": "read"}.get(statement["Action"])
        if access is None:
            continue  # iot:Connect: Mosquitto checks the certificate, not the client id
        for resource in statement["Resource"]:
            topic = resource.split(":", 5)[5].split("/", 1)[1].replace(THING_VARIABLE, "%u")
            # IoT policy '*' matches across levels: a whole last level becomes '#', a part of one '+'.
            topic = re.sub(r"/\*$", "/#", topic)
            topic = re.sub(r"[^/]*\*[^/]*", "+", topic)
            lines.append(f"pattern {access} {topic}")
    others = (
        "user test-consumer\ntopic read #\ntopic read $aws/#\n\nuser shadow-service\ntopic readwrite $aws/things/#\n"
    )
    return "\n".join(sorted(set(lines))) + "\n\n" + others


def run_environment(thing: str, work: Path, pki: Pki, broker: MosquittoBroker) -> dict[str, str]:
    """What the nucleus and recipe.yaml's Run step give the gateway on ``thing`` after the fleet deployment."""
    recipe = yaml.safe_load((ROOT / "recipe.yaml").read_text(encoding="utf-8"))
    deployment = json.loads((ROOT / "deploy" / "fleet-deployment.json").read_text(encoding="utf-8"))
    merge_text = deployment["components"][recipe["ComponentName"]]["configurationUpdate"]["merge"]
    merge = json.loads(merge_text.replace("<PLC_NETWORK>", "127.0.0.0/8"))  # loopback is the plant network here
    # Test pace, the same for every gateway: health in the shadow within seconds, not the default 5 minutes.
    merge["gatewayConfig"] |= TEST_PACE
    configuration = recipe["ComponentConfiguration"]["DefaultConfiguration"] | merge
    configuration |= {  # the IoT Core stand-in, and this gateway's certificate (what the docs install)
        "endpoint": "127.0.0.1",
        "port": str(broker.port),
        "certFile": str(pki.directory / f"{thing}.pem"),
        "keyFile": str(pki.directory / f"{thing}.key"),
        "caFile": str(pki.ca_file),
    }
    env = {"AWS_IOT_THING_NAME": thing, "EDGE_GATEWAY_WORK_DIR": str(work)}
    variables = {"iot:thingName": thing, "work:path": str(work)}
    for name, value in recipe["Manifests"][0]["Lifecycle"]["Run"]["Setenv"].items():
        key = re.fullmatch(r"\{configuration:/(\w+)\}", value)
        if key:
            item = configuration[key.group(1)]
            env[name] = json.dumps(item) if isinstance(item, dict) else str(item)
        else:
            env[name] = variables[value.strip("{}")]
    return env


@pytest.fixture
def fleet_broker(pki: Pki, tmp_path: Path) -> Iterator[MosquittoBroker]:
    for thing in THINGS:
        if not (pki.directory / f"{thing}.pem").exists():
            add_client(pki.directory, thing)
    broker = MosquittoBroker(pki, tmp_path / "broker")
    broker.set_acl(policy_acl())
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def gateways(tmp_path: Path, pki: Pki, fleet_broker: MosquittoBroker) -> Iterator[dict[str, GreengrassGateway]]:
    out = {}
    for thing in THINGS:
        work = tmp_path / thing / "work"
        work.mkdir(parents=True)
        environ = run_environment(thing, work, pki, fleet_broker)
        out[thing] = GreengrassGateway({"gateway": {"data_dir": str(work / "data")}}, tmp_path / thing, environ)
    yield out
    for gateway in out.values():
        gateway.stop()


@pytest.fixture
async def fleet_consumer(pki: Pki, fleet_broker: MosquittoBroker) -> AsyncIterator[Consumer]:
    transport = MqttTransport(mqtt_settings(pki, fleet_broker, client="test-consumer"), "test-consumer")
    await transport.start()
    await transport.wait_connected(10)
    yield Consumer(transport)
    await transport.stop()


@pytest.fixture
async def fleet_shadow(pki: Pki, fleet_broker: MosquittoBroker) -> AsyncIterator[ShadowService]:
    settings = mqtt_settings(pki, fleet_broker, client="shadow-service")
    async with ShadowService(settings, client_id="shadow-service") as svc:
        yield svc


def reported(shadow: ShadowService, thing: str) -> dict[str, Any]:
    doc = shadow.document(thing, SHADOW) or {}
    return dict(doc.get("state", {}).get("reported", {}))


def config_status(shadow: ShadowService, thing: str) -> dict[str, Any]:
    return dict(reported(shadow, thing).get("config_status") or {})


def desired_folder(directory: Path, ports: dict[str, int]) -> Path:
    """deploy/fleet/ for this test: one update-thing-shadow payload per thing, named <thing>.json."""
    directory.mkdir()
    for thing, port in ports.items():
        source = {
            "type": "modbus",
            "name": f"plc-{thing}",
            "host": "127.0.0.1",
            "port": port,
            "poll_interval_ms": 50,
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
            "points": [{"alias": f"{thing}.counter", "address": 0, "data_type": "uint32"}],
        }
        desired = {"sources": [source]}
        (directory / f"{thing}.json").write_text(json.dumps({"state": {"desired": desired}}), encoding="utf-8")
    return directory


async def test_one_deployment_then_each_gateway_takes_its_sources_from_its_own_shadow(
    tmp_path: Path,
    gateways: dict[str, GreengrassGateway],
    fleet_consumer: Consumer,
    fleet_shadow: ShadowService,
) -> None:
    await fleet_consumer.subscribe("dt/#")
    first = {thing: gw.environ for thing, gw in gateways.items()}
    shared = {k: v for k, v in first["line1-gw"].items() if first["line2-gw"].get(k) == v}
    fleet = {"shadow": {"allowed_source_hosts": ["127.0.0.0/8"]}}
    assert json.loads(shared["EDGE_GATEWAY_CONFIG_JSON"]) == fleet | TEST_PACE  # nothing per device
    for gateway in gateways.values():
        gateway.start()
    for thing in THINGS:  # first contact: each reports what runs (no sources) in its own shadow

        def reported_at_all(t: str = thing) -> bool:
            return bool(config_status(fleet_shadow, t).get("status"))

        await until(reported_at_all, 30, f"{thing}: first config_status")
        assert config_status(fleet_shadow, thing)["status"] == "applied"

    ports = {thing: free_port() for thing in THINGS}
    plcs = [start_sim("simulators.modbus_plc", port, tick_ms=MODBUS_TICK_MS) for port in ports.values()]
    try:
        folder = desired_folder(tmp_path / "fleet", ports)
        versions = {}
        for path in sorted(folder.glob("*.json")):  # docs/deployment.md: one update-thing-shadow per file
            payload = json.loads(path.read_text(encoding="utf-8"))
            accepted = await fleet_shadow.set_desired(path.stem, SHADOW, payload["state"]["desired"])
            versions[path.stem] = accepted["version"]
        for thing in THINGS:

            def applied(t: str = thing) -> bool:
                status = config_status(fleet_shadow, t)
                return status.get("status") == "applied" and status.get("version") == versions[t]

            def counting(t: str = thing) -> bool:
                return len(set(fleet_consumer.values(f"{t}.counter"))) >= 3

            def healthy(t: str = thing) -> bool:
                health = reported(fleet_shadow, t).get("health") or {}
                return bool(health.get("sources") == {f"plc-{t}": "connected"})

            await until(applied, 20, f"{thing}: config_status applied")
            await fleet_consumer.wait_for(counting, 20)
            await until(healthy, 20, f"{thing}: health in its shadow")
    finally:
        for plc in plcs:
            stop_process(plc)

    for thing in THINGS:  # each gateway's data only on its own topics, from its own PLC
        topics = {t for t, p in fleet_consumer.messages if is_data(t) and f"{thing}.counter".encode() in p}
        assert topics == {f"dt/{thing}/plc-{thing}"}
        assert "no sources configured" not in (reported(fleet_shadow, thing).get("health") or {}).get("problems", [])
    for thing, gateway in gateways.items():
        assert gateway.stop() == 0, gateway.log()[-3000:]
        assert "Traceback" not in gateway.log()
        assert "publisher.destinations = [{'type': 'iotcore', 'name': 'cloud'}]" in gateway.log(), thing


async def test_the_one_policy_keeps_each_gateway_to_its_own_topics(pki: Pki, fleet_broker: MosquittoBroker) -> None:
    """The broker's rules are the fleet's one IoT policy: line2-gw's certificate may publish on its own data
    topic and its own shadow, never on line1-gw's."""
    transport = MqttTransport(mqtt_settings(pki, fleet_broker, client="line2-gw"), "line2-gw-gateway")
    await transport.start()
    try:
        await transport.wait_connected(10)
        assert await transport.publish("dt/line2-gw/plc", b"{}") < 0x80
        assert await transport.publish(f"$aws/things/line2-gw/shadow/name/{SHADOW}/update", b"{}") < 0x80
        for topic in ("dt/line1-gw/plc", f"$aws/things/line1-gw/shadow/name/{SHADOW}/update"):
            with pytest.raises(PublishError, match=r"NOT_AUTHORIZED \(135\)"):
                await transport.publish(topic, b"{}")
    finally:
        await transport.stop()
