"""The nucleus' rules the IPC stand-in applies: policy resource matching, publish checks, spool capacity."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_gateway.config.model import MqttSettings
from edge_gateway.publish.transport.mqtt import MqttTransport
from simulators.greengrass_auth import (
    MQTT_PROXY,
    PUBLISH_TO_IOT_CORE,
    PUBSUB,
    SHADOW_MANAGER,
    SUBSCRIBE_TO_TOPIC,
    AccessControl,
    resource_pattern,
)
from simulators.greengrass_spool import CloudSpool, IoTCoreMessage, SpoolError, publish_problem


@pytest.mark.parametrize(
    ("resource", "mqtt", "matches", "misses"),
    [
        ("dt/+/data", True, ["dt/a/data", "dt//data"], ["dt/a/b/data", "dt/a/data/x"]),
        ("dt/#", True, ["dt", "dt/a", "dt/a/b/c"], ["dtx", "other/dt"]),
        ("#", True, ["a", "$aws/things/x", ""], []),
        ("dt#", True, ["dt#"], ["dt", "dt/a"]),  # not a whole level: literal
        ("a+b/c", True, ["a+b/c"], ["axb/c"]),
        ("dt/*/data", True, ["dt/a/data", "dt/a/b/data"], ["dt/a/datax"]),
        ("dt/+/data", False, ["dt/+/data"], ["dt/a/data"]),  # pub/sub and shadows: + is literal
        ("$aws/things/t/shadow/name/*", False, ["$aws/things/t/shadow/name/config"], ["$aws/things/u/shadow/name/a"]),
        ("price${*}", False, ["price*"], ["price", "prices"]),
        ("${$}aws/${?}", False, ["$aws/?"], ["$aws/x"]),
        ("*", False, ["anything/at/all"], []),
    ],
)
def test_resource_matching_follows_the_nucleus(
    resource: str, mqtt: bool, matches: list[str], misses: list[str]
) -> None:
    pattern = resource_pattern(resource, mqtt=mqtt)
    assert [m for m in matches if not pattern.fullmatch(m)] == []
    assert [m for m in misses if pattern.fullmatch(m)] == []


@pytest.mark.parametrize(
    ("resource", "error"), [("a?b", "'?' is not a wildcard"), ("a${x}", "invalid escape"), ("", "empty")]
)
def test_invalid_resources_are_refused(resource: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        resource_pattern(resource, mqtt=False)


def test_access_control_grants_per_destination_operation_and_resource() -> None:
    policy = AccessControl(
        {
            MQTT_PROXY: {"p1": {"operations": [PUBLISH_TO_IOT_CORE], "resources": ["dt/{iot:thingName}/#"]}},
            PUBSUB: {"p2": {"operations": ["*"], "resources": ["local/{iot:thingName}"]}},
        },
        thing_name="t1",
    )
    assert policy.allows(MQTT_PROXY, PUBLISH_TO_IOT_CORE, "dt/t1/data")
    assert not policy.allows(MQTT_PROXY, PUBLISH_TO_IOT_CORE, "dt/t2/data")
    assert not policy.allows(MQTT_PROXY, "aws.greengrass#SubscribeToIoTCore", "dt/t1/data")
    assert policy.allows(PUBSUB, SUBSCRIBE_TO_TOPIC, "local/t1")
    assert not policy.allows(SHADOW_MANAGER, "aws.greengrass#GetThingShadow", "local/t1")
    assert not AccessControl().allows(MQTT_PROXY, PUBLISH_TO_IOT_CORE, "dt/t1/data")


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({"aws.greengrass.ipc.mqtt": {}}, "unknown destination"),
        ({MQTT_PROXY: {"p": {"operations": ["aws.greengrass#PublishToTopic"], "resources": ["*"]}}}, "operations"),
        ({MQTT_PROXY: {"p": {"operations": [], "resources": ["*"]}}}, "operations"),
        ({MQTT_PROXY: {"p": {"operations": [PUBLISH_TO_IOT_CORE], "resources": "dt/#"}}}, "resources"),
    ],
)
def test_a_malformed_policy_fails_loudly(doc: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        AccessControl(doc)


def test_access_control_from_a_recipe(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "RecipeFormatVersion: '2020-01-25'\n"
        "ComponentConfiguration:\n"
        "  DefaultConfiguration:\n"
        "    accessControl:\n"
        "      aws.greengrass.ShadowManager:\n"
        "        com.example.EdgeGateway:shadow:1:\n"
        "          operations: ['aws.greengrass#GetThingShadow']\n"
        "          resources: ['$aws/things/{iot:thingName}/shadow/name/edge-gateway']\n"
    )
    policy = AccessControl.from_recipe(recipe, thing_name="t1")
    assert policy.allows(SHADOW_MANAGER, "aws.greengrass#GetThingShadow", "$aws/things/t1/shadow/name/edge-gateway")
    assert not policy.allows(SHADOW_MANAGER, "aws.greengrass#GetThingShadow", "$aws/things/t1/shadow")


@pytest.mark.parametrize(
    ("topic", "size", "problem"),
    [
        ("dt/a/b/c/d/e/f/g", 10, None),
        ("dt/a/b/c/d/e/f/g/h", 10, "no more than 7 forward slashes"),
        ("$aws/rules/edge/a/b/c/d/e/f/g/h", 10, None),  # the Basic Ingest prefix does not count
        ("$aws/rules/edge/a/b/c/d/e/f/g/h/i", 10, "no more than 7 forward slashes"),
        ("$aws/things/t/shadow/name/config/update/delta/x/y", 10, None),  # MQTT 5: left to IoT Core
        ("dt/#", 10, "wildcard"),
        ("", 10, "must not be empty"),
        ("d" * 257, 10, "no larger than 256 bytes"),
        ("dt/x", 128 * 1024 + 1, "exceeds the configured limit of 131072 bytes"),
    ],
)
def test_publish_checks_of_the_nucleus_mqtt_client(topic: str, size: int, problem: str | None) -> None:
    found = publish_problem(topic, b"x" * size)
    assert (found is None) if problem is None else (found is not None and problem in found)


def _offline_transport(tmp_path: Path) -> MqttTransport:
    settings = MqttSettings(endpoint="127.0.0.1", cert_file=tmp_path / "c.pem", key_file=tmp_path / "c.key")
    return MqttTransport(settings, "t1")  # never started: disconnected


def _message(qos: int, size: int, n: int = 0) -> IoTCoreMessage:
    return IoTCoreMessage(f"dt/t1/{n}", b"x" * size, qos, "c")


def test_spool_refuses_when_full_and_qos0_while_offline(tmp_path: Path) -> None:
    spool = CloudSpool(_offline_transport(tmp_path), max_bytes=100)
    spool.add(_message(1, 60))
    with pytest.raises(SpoolError, match="Message spool is full"):
        spool.add(_message(1, 50))
    with pytest.raises(SpoolError, match="Message is larger than the size of message spool"):
        spool.add(_message(1, 101))
    with pytest.raises(SpoolError, match=r"Device is offline\. Dropping QoS 0 message\."):
        spool.add(_message(0, 1))
    spool.add(_message(1, 40))
    assert (spool.pending, spool.published) == (2, [])


def test_spool_without_transport_delivers_at_once() -> None:
    spool = CloudSpool(None, max_bytes=10)
    spool.add(_message(0, 1000))  # capacity is the transport's queue: no queue, no limit but 128 KiB
    assert [m.qos for m in spool.published] == [0]
    assert spool.pending == 0


def test_a_full_spool_evicts_qos0_messages_first(tmp_path: Path) -> None:
    transport = _offline_transport(tmp_path)
    transport.status.connected = True  # as if connected: QoS 0 is accepted into the spool
    spool = CloudSpool(transport, max_bytes=100)
    spool.add(_message(0, 40, 1))
    spool.add(_message(1, 20, 2))
    spool.add(_message(0, 30, 3))
    spool.add(_message(1, 40, 4))  # 130 > 100: the oldest QoS 0 message goes, and that is enough
    assert spool.pending == 3
    assert spool.drops == {"spool full: QoS 0 evicted": 1}
    with pytest.raises(SpoolError, match="spool is full"):
        spool.add(_message(1, 60, 5))  # evicting the other QoS 0 message frees 30: still 120 > 100
    assert spool.drops["spool full: QoS 0 evicted"] == 2
