"""The Greengrass IPC stand-in driven by the real awsiotsdk GreengrassCoreIPCClientV2 over a Unix socket.

The client is synchronous where it connects (so it connects in a thread while the server runs on the
test's loop) and calls back on its CRT thread (``executor=None``; callbacks only hand over to the loop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from awsiot import eventstreamrpc
from awsiot.greengrasscoreipc import client as ipc_client
from awsiot.greengrasscoreipc import connect, model
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

from edge_gateway.publish.transport.mqtt import MqttTransport
from simulators.eventstream import Header, encode_message, read_message
from simulators.eventstream_rpc import MessageFlag, MessageType, rpc_fields, rpc_message
from simulators.greengrass_auth import (
    GET_THING_SHADOW,
    MODEL_OPERATIONS,
    MQTT_PROXY,
    PUBLISH_TO_IOT_CORE,
    PUBSUB,
    SHADOW_MANAGER,
    SUBSCRIBE_TO_TOPIC,
    UPDATE_THING_SHADOW,
)
from simulators.greengrass_ipc import AccessControl, GreengrassIpcServer, IpcComponent
from simulators.iot_core import MosquittoBroker
from simulators.pki import Pki
from tests.support import THING, Consumer, mqtt_settings

COMPONENT = "com.example.EdgeGateway"
SVCUID = "svcuid-of-the-gateway"
NOW = 1_700_000_000
SHADOW = "edge-gateway"
PREFIX = f"$aws/things/{THING}/shadow/name/{SHADOW}"
# As a recipe grants it (the nucleus interpolates {iot:thingName} with interpolateComponentConfiguration).
POLICY = {
    MQTT_PROXY: {
        f"{COMPONENT}:mqttproxy:1": {
            "policyDescription": "data and status",
            "operations": [PUBLISH_TO_IOT_CORE],
            "resources": ["dt/{iot:thingName}/#"],
        }
    },
    SHADOW_MANAGER: {
        f"{COMPONENT}:shadow:1": {
            "operations": [GET_THING_SHADOW, UPDATE_THING_SHADOW],
            "resources": ["$aws/things/{iot:thingName}/shadow/name/edge-gateway"],
        }
    },
    PUBSUB: {
        f"{COMPONENT}:pubsub:1": {
            "operations": [SUBSCRIBE_TO_TOPIC],
            "resources": ["$aws/things/{iot:thingName}/shadow/name/edge-gateway/update/delta"],
        }
    },
}


@pytest.fixture
def socket_path() -> Iterator[Path]:
    # pytest's tmp_path can exceed the 107 characters a Unix socket path allows.
    with tempfile.TemporaryDirectory(prefix="gg", dir="/tmp") as directory:
        yield Path(directory) / "ipc.sock"


def _component() -> IpcComponent:
    return IpcComponent(COMPONENT, SVCUID, AccessControl(POLICY, thing_name=THING))


@pytest.fixture
async def nucleus(socket_path: Path) -> AsyncIterator[GreengrassIpcServer]:
    async with GreengrassIpcServer(socket_path, [_component()], thing_name=THING, clock=lambda: NOW) as server:
        yield server


class Ipc:
    """The V2 client with awaitable calls (``*_async`` futures, bounded: its sync calls wait forever)."""

    def __init__(self, client: GreengrassCoreIPCClientV2) -> None:
        self.client = client

    @classmethod
    async def connect(cls, make: Callable[[], GreengrassCoreIPCClientV2]) -> Ipc:
        return cls(await asyncio.to_thread(make))

    async def call(self, operation: str, **kwargs: Any) -> Any:
        future: concurrent.futures.Future[Any] = getattr(self.client, f"{operation}_async")(**kwargs)
        return await asyncio.wait_for(asyncio.wrap_future(future), 5)

    async def subscribe(self, topic: str) -> tuple[asyncio.Queue[model.SubscriptionResponseMessage], Any]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[model.SubscriptionResponseMessage] = asyncio.Queue()
        future, operation = self.client.subscribe_to_topic_async(
            topic=topic, on_stream_event=lambda e: loop.call_soon_threadsafe(events.put_nowait, e)
        )
        await asyncio.wait_for(asyncio.wrap_future(future), 5)
        return events, operation

    async def close(self) -> None:
        closed = self.client.close(executor_wait=False)
        await asyncio.wait_for(asyncio.wrap_future(closed), 5)


def _explicit(path: Path, svcuid: str = SVCUID) -> Callable[[], GreengrassCoreIPCClientV2]:
    return lambda: GreengrassCoreIPCClientV2(client=connect(ipc_socket=str(path), authtoken=svcuid), executor=None)


@pytest.fixture
async def ipc(nucleus: GreengrassIpcServer) -> AsyncIterator[Ipc]:
    client = await Ipc.connect(_explicit(nucleus.socket_path))
    yield client
    await client.close()


def _shadow(response: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(response.payload)
    return doc


# ---- PublishToIoTCore ------------------------------------------------------------------------------------


async def test_client_set_up_by_the_nucleus_environment_publishes(
    nucleus: GreengrassIpcServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in nucleus.environ().items():
        monkeypatch.setenv(name, value)
    client = await Ipc.connect(lambda: GreengrassCoreIPCClientV2(executor=None))
    try:
        for i, qos in enumerate(("1", "0", "1")):
            response = await client.call(
                "publish_to_iot_core", topic_name=f"dt/{THING}/data", qos=qos, payload=f"m{i}".encode()
            )
            assert isinstance(response, model.PublishToIoTCoreResponse)
    finally:
        await client.close()
    assert [(m.topic, m.payload, m.qos, m.component) for m in nucleus.published] == [
        (f"dt/{THING}/data", b"m0", 1, COMPONENT),
        (f"dt/{THING}/data", b"m1", 0, COMPONENT),
        (f"dt/{THING}/data", b"m2", 1, COMPONENT),
    ]


async def test_publish_through_mosquitto_is_answered_when_queued_not_on_puback(
    socket_path: Path, pki: Pki, broker: MosquittoBroker, consumer: Consumer
) -> None:
    await consumer.subscribe(f"dt/{THING}/#")
    transport = MqttTransport(mqtt_settings(pki, broker), THING)  # the nucleus connects as the thing
    await transport.start()
    await transport.wait_connected(10)
    try:
        async with GreengrassIpcServer(socket_path, [_component()], mqtt=transport) as nucleus:
            client = await Ipc.connect(_explicit(socket_path))
            try:
                await client.call("publish_to_iot_core", topic_name=f"dt/{THING}/a", qos="1", payload=b"first")
                await nucleus.wait_published(1)
                await consumer.wait_for(lambda: len(consumer.messages) == 1, 5)

                broker.freeze()  # connected, but no PUBACK will come
                try:
                    await client.call("publish_to_iot_core", topic_name=f"dt/{THING}/a", qos="1", payload=b"second")
                    assert nucleus.spool.pending == 1
                    assert len(nucleus.published) == 1
                finally:
                    broker.thaw()
                await nucleus.wait_published(2)
                await consumer.wait_for(lambda: len(consumer.messages) == 2, 5)
            finally:
                await client.close()
    finally:
        await transport.stop()
    assert consumer.messages == [(f"dt/{THING}/a", b"first"), (f"dt/{THING}/a", b"second")]
    assert [m.reason_code for m in nucleus.published] == [0, 0]
    assert nucleus.spool.pending == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"topic_name": "elsewhere/data", "qos": "1", "payload": b"x"}, "UnauthorizedError", "Not Authorized"),
        (
            {"topic_name": f"dt/{THING}/data", "qos": "2", "payload": b"x"},
            "InvalidArgumentsError",
            "Invalid QoS value: 2",
        ),
        ({"topic_name": f"dt/{THING}/data", "qos": "1"}, "InvalidArgumentsError", "Payload is required"),
        (
            {"topic_name": f"dt/{THING}/big", "qos": "1", "payload": b"x" * (128 * 1024 + 1)},
            "ServiceError",
            (
                f"Publish to topic dt/{THING}/big failed: The publishing message size 131073 bytes exceeds the "
                "configured limit of 131072 bytes"
            ),
        ),
        (
            {"topic_name": f"dt/{THING}/1/2/3/4/5/6/7", "qos": "1", "payload": b"x"},
            "ServiceError",
            (
                f"Publish to topic dt/{THING}/1/2/3/4/5/6/7 failed: The request topic must have no more than 7 "
                "forward slashes (/)"
            ),
        ),
    ],
)
async def test_publish_refusals_are_the_nucleus_errors(
    nucleus: GreengrassIpcServer, ipc: Ipc, kwargs: dict[str, Any], error: str, message: str
) -> None:
    with pytest.raises(getattr(model, error)) as caught:
        await ipc.call("publish_to_iot_core", **kwargs)
    assert caught.value.message == message
    assert nucleus.published == []


# ---- shadows ---------------------------------------------------------------------------------------------


async def test_get_and_update_thing_shadow_with_versions_delta_and_conflicts(ipc: Ipc) -> None:
    with pytest.raises(model.ResourceNotFoundError) as missing:
        await ipc.call("get_thing_shadow", thing_name=THING, shadow_name=SHADOW)
    assert (missing.value.message, missing.value.resource_type) == ("No shadow found", "shadow")

    desired = {"state": {"desired": {"interval_s": 5}}, "clientToken": "t1"}
    first = _shadow(
        await ipc.call(
            "update_thing_shadow", thing_name=THING, shadow_name=SHADOW, payload=json.dumps(desired).encode()
        )
    )
    assert first == {
        "state": {"desired": {"interval_s": 5}},
        "metadata": {"desired": {"interval_s": {"timestamp": NOW}}},
        "version": 1,
        "timestamp": NOW,
        "clientToken": "t1",
    }
    reported = json.dumps({"state": {"reported": {"interval_s": 1}}, "version": 1}).encode()
    second = _shadow(await ipc.call("update_thing_shadow", thing_name=THING, shadow_name=SHADOW, payload=reported))
    assert second["version"] == 2

    doc = _shadow(await ipc.call("get_thing_shadow", thing_name=THING, shadow_name=SHADOW))
    assert doc["version"] == 2
    assert doc["state"] == {"desired": {"interval_s": 5}, "reported": {"interval_s": 1}, "delta": {"interval_s": 5}}

    with pytest.raises(model.ConflictError) as conflict:
        await ipc.call("update_thing_shadow", thing_name=THING, shadow_name=SHADOW, payload=reported)
    assert conflict.value.message == "Version conflict"
    with pytest.raises(model.InvalidArgumentsError) as invalid:
        await ipc.call("update_thing_shadow", thing_name=THING, shadow_name=SHADOW, payload=b"{not json")
    assert invalid.value.message == "Invalid JSON"
    with pytest.raises(model.InvalidArgumentsError) as bad_name:
        await ipc.call("get_thing_shadow", thing_name="bad thing", shadow_name=SHADOW)
    assert bad_name.value.message == "ThingName must match pattern [a-zA-Z0-9:_-]+"
    assert _shadow(await ipc.call("get_thing_shadow", thing_name=THING, shadow_name=SHADOW))["version"] == 2


async def test_subscribe_to_topic_streams_the_delta_after_each_update(nucleus: GreengrassIpcServer, ipc: Ipc) -> None:
    events, operation = await ipc.subscribe(f"{PREFIX}/update/delta")

    async def update(state: dict[str, Any]) -> None:
        payload = json.dumps({"state": state}).encode()
        await ipc.call("update_thing_shadow", thing_name=THING, shadow_name=SHADOW, payload=payload)

    async def next_delta() -> dict[str, Any]:
        event = await asyncio.wait_for(events.get(), 5)
        assert event.binary_message is not None
        assert event.binary_message.context.topic == f"{PREFIX}/update/delta"
        doc: dict[str, Any] = json.loads(event.binary_message.message)
        return doc

    await update({"desired": {"interval_s": 5, "mode": "fast"}})
    assert await next_delta() == {
        "version": 1,
        "timestamp": NOW,
        "state": {"interval_s": 5, "mode": "fast"},
        "metadata": {"interval_s": {"timestamp": NOW}, "mode": {"timestamp": NOW}},
    }
    await update({"reported": {"interval_s": 5}})  # ShadowManager republishes a standing delta
    assert (await next_delta())["state"] == {"mode": "fast"}
    await update({"reported": {"mode": "fast"}})  # in sync: no delta
    await update({"desired": {"interval_s": 7}})
    delta = await next_delta()
    assert (delta["version"], delta["state"]) == (4, {"interval_s": 7})
    assert events.empty()

    await asyncio.wait_for(asyncio.wrap_future(operation.close()), 5)
    await update({"desired": {"interval_s": 9}})
    assert nucleus.publish_local(f"{PREFIX}/update/delta", b"{}") == 0
    await asyncio.sleep(0.1)
    assert events.empty()


# ---- authorization, authentication, unknown operations ----------------------------------------------------


async def test_operations_the_policy_does_not_grant_raise_unauthorized(ipc: Ipc) -> None:
    with pytest.raises(model.UnauthorizedError) as other_shadow:
        await ipc.call("get_thing_shadow", thing_name=THING, shadow_name="other")
    assert other_shadow.value.message == (
        f"Principal {COMPONENT} is not authorized to perform {SHADOW_MANAGER}:{GET_THING_SHADOW} "
        f"on resource $aws/things/{THING}/shadow/name/other"
    )
    with pytest.raises(model.UnauthorizedError) as classic:
        await ipc.call("update_thing_shadow", thing_name=THING, payload=b'{"state": {"reported": {"a": 1}}}')
    assert classic.value.message.endswith(f"on resource $aws/things/{THING}/shadow")
    with pytest.raises(model.UnauthorizedError) as everything:
        await ipc.subscribe("#")
    assert everything.value.message == (
        f"Principal {COMPONENT} is not authorized to perform {PUBSUB}:{SUBSCRIBE_TO_TOPIC} on resource #"
    )


async def test_a_bad_auth_token_is_refused_at_connect(nucleus: GreengrassIpcServer) -> None:
    with pytest.raises(eventstreamrpc.AccessDeniedError):
        await Ipc.connect(_explicit(nucleus.socket_path, svcuid="not-the-svcuid"))
    client = await Ipc.connect(_explicit(nucleus.socket_path))  # the server goes on serving
    try:
        await client.call("publish_to_iot_core", topic_name=f"dt/{THING}/x", qos="1", payload=b"ok")
    finally:
        await client.close()
    assert [m.payload for m in nucleus.published] == [b"ok"]


class _NoSuchOperation(ipc_client.PublishToIoTCoreOperation):  # type: ignore[misc] # awsiot is untyped
    @classmethod
    def _model_name(cls) -> str:
        return "aws.greengrass#NoSuchOperation"


async def test_operations_nobody_provides_are_answered_as_the_nucleus_does(ipc: Ipc) -> None:
    with pytest.raises(model.ServiceError) as not_provided:
        await ipc.call("get_configuration", key_path=["a"])
    assert not_provided.value.message == "Operation aws.greengrass#GetConfiguration is not supported by Greengrass"

    operation = ipc.client.client._new_operation(_NoSuchOperation)
    operation.activate(model.PublishToIoTCoreRequest(topic_name=f"dt/{THING}/x", qos="1", payload=b"x"))
    with pytest.raises(eventstreamrpc.StreamClosedError):
        await asyncio.wait_for(asyncio.wrap_future(operation.get_response()), 5)
    await ipc.call("publish_to_iot_core", topic_name=f"dt/{THING}/x", qos="1", payload=b"still connected")


async def test_rpc_rules_are_enforced_like_the_eventstream_server(nucleus: GreengrassIpcServer) -> None:
    """A raw peer breaking the rules the awscrt client never breaks: each is a PROTOCOL_ERROR, then EOF."""
    version = Header.string(":version", "0.1.0")
    connect_frame = rpc_message(
        MessageType.CONNECT, MessageFlag.NONE, 0, [version], json.dumps({"authToken": SVCUID}).encode()
    )
    operation = Header.string("operation", "aws.greengrass#PublishToIoTCore")
    cases = [
        ([], rpc_message(MessageType.PING, MessageFlag.NONE, 0), "A CONNECT message must be received"),
        (
            [connect_frame],
            rpc_message(MessageType.APPLICATION_MESSAGE, MessageFlag.NONE, 2, [operation]),
            "incremented by more than 1",
        ),
        (
            [connect_frame],
            rpc_message(MessageType.APPLICATION_MESSAGE, MessageFlag.NONE, 1),
            "must contain an operation",
        ),
    ]
    for before, offending, expected in cases:
        reader, writer = await asyncio.open_unix_connection(str(nucleus.socket_path))
        try:
            for frame in before:
                writer.write(encode_message(frame))
                ack = await asyncio.wait_for(read_message(reader), 5)
                assert ack is not None
                assert rpc_fields(ack)[:2] == (MessageType.CONNECT_ACK, MessageFlag.CONNECTION_ACCEPTED)
            writer.write(encode_message(offending))
            error = await asyncio.wait_for(read_message(reader), 5)
            assert error is not None
            assert rpc_fields(error)[0] == MessageType.PROTOCOL_ERROR
            assert expected in json.loads(error.payload)["message"]
            assert await asyncio.wait_for(read_message(reader), 5) is None
        finally:
            writer.close()


async def test_ping_is_answered_with_its_headers_and_payload(nucleus: GreengrassIpcServer) -> None:
    reader, writer = await asyncio.open_unix_connection(str(nucleus.socket_path))
    try:
        payload = json.dumps({"authToken": SVCUID}).encode()
        writer.write(
            encode_message(
                rpc_message(MessageType.CONNECT, MessageFlag.NONE, 0, [Header.string(":version", "0.1.0")], payload)
            )
        )
        assert await asyncio.wait_for(read_message(reader), 5) is not None
        writer.write(
            encode_message(rpc_message(MessageType.PING, MessageFlag.NONE, 0, [Header.string("echo", "me")], b"p"))
        )
        pong = await asyncio.wait_for(read_message(reader), 5)
        assert pong is not None
        assert rpc_fields(pong)[0] == MessageType.PING_RESPONSE
        assert (pong.header("echo"), pong.payload) == (Header.string("echo", "me"), b"p")
    finally:
        writer.close()


def test_the_stand_in_knows_every_operation_of_the_sdk_model() -> None:
    operations: list[Any] = [
        cls
        for name, cls in vars(model).items()
        if inspect.isclass(cls) and name.startswith("_") and issubclass(cls, eventstreamrpc.ClientOperation)
    ]
    sdk = {cls._model_name() for cls in operations}
    assert sdk == MODEL_OPERATIONS
