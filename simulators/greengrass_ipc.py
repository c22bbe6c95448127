"""Local stand-in for the Greengrass nucleus IPC service, for the real awsiotsdk ``GreengrassCoreIPCClientV2``.

``GreengrassIpcServer`` listens on a Unix socket (path <= 107 characters) and speaks eventstream RPC
(``simulators.eventstream_rpc``). Point a client at it with ``server.environ()`` (the nucleus' variables:
``AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT``, ``SVCUID``, ``AWS_IOT_THING_NAME``) or with
``awsiot.greengrasscoreipc.connect(ipc_socket=..., authtoken=...)``. Each ``IpcComponent`` has a token
(its SVCUID) and an ``accessControl`` policy (``simulators.greengrass_auth``); an unknown token gets a
CONNECT_ACK without the accepted flag, which the client raises as ``AccessDeniedError``.

Operations, answered as the nucleus 2.x and ShadowManager answer them (read in their Java sources):

- ``PublishToIoTCore`` (destination ``aws.greengrass.ipc.mqttproxy``): topic present, authorized (else
  UnauthorizedError "Not Authorized"), payload present, QoS "0" or "1" (else InvalidArgumentsError), then
  queued in ``spool`` (``simulators.greengrass_spool``; a refusal is ServiceError "Publish to topic T failed:
  <reason>"). The answer ``{}`` means **queued**, not delivered: ``published`` lists what was delivered.
- ``GetThingShadow`` / ``UpdateThingShadow`` (destination ``aws.greengrass.ShadowManager``, resource the
  topic prefix ``$aws/things/<thing>/shadow[/name/<shadow>]``): names checked as ShadowManager does, then
  ``ShadowStore`` (``simulators.shadow.document``, the MQTT stand-in's semantics); payloads are JSON bytes.
  404 is ResourceNotFoundError("No shadow found", resourceType "shadow"), 409 ConflictError, other 4xx
  InvalidArgumentsError. Like ShadowManager, each request is also published on local pub/sub, after the IPC
  response: ``<prefix>/get|update/accepted|rejected``, and after an update ``/update/delta`` whenever the
  document has a delta (ShadowManager does not look at what the update touched; the cloud does), then
  ``/update/documents`` and ``/update/accepted``.
- ``SubscribeToTopic`` (destination ``aws.greengrass.ipc.pubsub``): a stream of SubscriptionResponseMessage
  (``binaryMessage`` for bytes, ``jsonMessage`` for a JSON object) until the client closes the operation;
  by default a wildcard subscription does not receive its own component's messages. ``publish_local``
  publishes as another component (ShadowManager by default).
- Any other operation of the IPC model: ServiceError "Operation X is not supported by Greengrass" (the
  nucleus' answer when no plugin provides it). A name outside the model: APPLICATION_ERROR without
  ``service-model-type`` (the client raises StreamClosedError). A request that does not deserialize: the
  Java framework's "InternalServerError" (text/plain), which the client also sees as StreamClosedError.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final

from edge_gateway.publish.transport.mqtt import MqttTransport
from simulators.eventstream import Header, Message
from simulators.eventstream_rpc import CONTENT_TYPE_JSON, MessageType, RpcServerConnection, RpcStream
from simulators.greengrass_auth import (
    GET_THING_SHADOW,
    MODEL_OPERATIONS,
    MQTT_PROXY,
    NAMESPACE,
    PUBLISH_TO_IOT_CORE,
    PUBSUB,
    SHADOW_MANAGER,
    SUBSCRIBE_TO_TOPIC,
    UPDATE_THING_SHADOW,
    AccessControl,
    IpcComponent,
    unauthorized_message,
)
from simulators.greengrass_spool import DEFAULT_SPOOL_BYTES, CloudSpool, IoTCoreMessage, SpoolError
from simulators.service import AsyncService
from simulators.shadow.document import JsonObject, ShadowKey, ShadowRequestError, ShadowStore, delta_metadata

__all__ = ["AccessControl", "GreengrassIpcServer", "IoTCoreMessage", "IpcComponent", "IpcError"]

_log = logging.getLogger(__name__)

MAX_SOCKET_PATH: Final = 107
_SHADOW_NAME: Final = re.compile(r"[a-zA-Z0-9:_-]+")


# ---- errors and messages -----------------------------------------------------------------------------


class IpcError(Exception):
    """A modeled error (``aws.greengrass#<shape>``) answered on the request's stream."""

    def __init__(self, shape: str, message: str, **fields: str) -> None:
        super().__init__(f"{shape}: {message}")
        self.shape = shape
        self.body: dict[str, str] = {"message": message, **fields}


class _BadRequestError(Exception):
    """A request the nucleus' Java model would fail to deserialize: answered "InternalServerError"."""


def _json_headers(model_type: str) -> tuple[Header, ...]:
    return (Header.string(":content-type", CONTENT_TYPE_JSON), Header.string("service-model-type", model_type))


def _send_error(stream: RpcStream, error: IpcError) -> None:
    body = json.dumps(error.body).encode()
    stream.send(MessageType.APPLICATION_ERROR, _json_headers(NAMESPACE + error.shape), body, terminate=True)


def _send_internal_error(stream: RpcStream) -> None:
    headers = (Header.string(":content-type", "text/plain"),)
    stream.send(MessageType.APPLICATION_ERROR, headers, b"InternalServerError", terminate=True)


def _parse_request(payload: bytes) -> JsonObject:
    try:
        request = json.loads(payload or b"{}")
    except ValueError as exc:
        raise _BadRequestError(f"the request is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise _BadRequestError("the request is not a JSON object")
    return request


def _opt_str(request: JsonObject, key: str) -> str | None:
    value = request.get(key)
    if value is not None and not isinstance(value, str):
        raise _BadRequestError(f"{key} must be a string")
    return value


def _opt_b64(request: JsonObject, key: str) -> bytes | None:
    value = _opt_str(request, key)
    try:
        return None if value is None else base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise _BadRequestError(f"{key} is not base64: {exc}") from None


def _b64_json(doc: JsonObject) -> str:
    return base64.b64encode(json.dumps(doc).encode()).decode()


def _filter_matches(topic_filter: str, topic: str) -> bool:
    """Local pub/sub matching: MQTT ``+``/``#``, and (unlike a broker) ``#`` also matches ``$aws/...``."""
    f_parts, t_parts = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(f_parts):
        if part == "#":
            return True
        if i >= len(t_parts) or part not in ("+", t_parts[i]):
            return False
    return len(f_parts) == len(t_parts)


def _name_problem(label: str, value: str, max_length: int) -> str | None:
    if len(value) > max_length:
        return f"{label} has a maximum length of {max_length}"
    if not _SHADOW_NAME.fullmatch(value):
        return f"{label} must match pattern {_SHADOW_NAME.pattern}"
    return None


# ---- the server ----------------------------------------------------------------------------------------


class GreengrassIpcServer(AsyncService):
    """The nucleus IPC stand-in: ``async with GreengrassIpcServer(path, [IpcComponent(...)]) as server``."""

    def __init__(
        self,
        socket_path: Path | str,
        components: Sequence[IpcComponent],
        *,
        thing_name: str | None = None,
        mqtt: MqttTransport | None = None,
        shadows: ShadowStore | None = None,
        spool_max_bytes: int = DEFAULT_SPOOL_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.socket_path = Path(socket_path)
        if len(str(self.socket_path)) > MAX_SOCKET_PATH:
            msg = f"socket path {self.socket_path} is over the {MAX_SOCKET_PATH} characters a Unix socket allows"
            raise ValueError(msg)
        if not components:
            raise ValueError("give at least one IpcComponent (the principal a client authenticates as)")
        self.components = {c.name: c for c in components}
        self._by_token = {c.token: c for c in components}
        self.thing_name = thing_name
        self.shadows = shadows if shadows is not None else ShadowStore()
        self.spool = CloudSpool(mqtt, max_bytes=spool_max_bytes)
        self._clock = clock
        self._subscriptions: dict[RpcStream, tuple[str, bool]] = {}  # stream -> (filter, receives its own)
        self._connections: set[RpcServerConnection] = set()
        self._server: asyncio.Server | None = None
        self._spooler: asyncio.Task[None] | None = None
        self._handlers: dict[str, Callable[[RpcStream, JsonObject], JsonObject]] = {
            PUBLISH_TO_IOT_CORE: self._publish_to_iot_core,
            GET_THING_SHADOW: self._get_thing_shadow,
            UPDATE_THING_SHADOW: self._update_thing_shadow,
            SUBSCRIBE_TO_TOPIC: self._subscribe_to_topic,
        }

    @property
    def published(self) -> list[IoTCoreMessage]:
        """Messages delivered: every accepted one without ``mqtt``, else those PUBACKed, in order."""
        return self.spool.published

    async def wait_published(self, count: int, timeout_s: float = 5.0) -> list[IoTCoreMessage]:
        return await self.spool.wait_published(count, timeout_s)

    def environ(self, component: str | None = None) -> dict[str, str]:
        """The environment the nucleus gives a component's processes (the only component by default)."""
        if component is None and len(self.components) == 1:
            component = next(iter(self.components))
        if component not in self.components:
            raise KeyError(f"no component {component!r}; known: {sorted(self.components)}")
        env = {
            "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT": str(self.socket_path),
            "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH": str(self.socket_path),
            "SVCUID": self.components[component].token,
        }
        if self.thing_name is not None:
            env["AWS_IOT_THING_NAME"] = self.thing_name
        return env

    # ---- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.socket_path.is_socket():
            self.socket_path.unlink()  # left by a killed run; the nucleus cleans up the same way
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.socket_path))
        self._spooler = asyncio.create_task(self.spool.run(), name="greengrass-ipc:spooler")
        _log.info("greengrass ipc: listening on %s for %s", self.socket_path, sorted(self.components))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            await conn.aclose()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._spooler is not None:
            self._spooler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._spooler
            self._spooler = None
        self.socket_path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = RpcServerConnection(reader, writer, self)
        self._connections.add(conn)
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)

    # ---- RpcService ----------------------------------------------------------------------------------

    def authenticate(self, payload: bytes) -> str | None:
        try:
            doc = json.loads(payload)
        except ValueError:
            return None
        token = doc.get("authToken") if isinstance(doc, dict) else None
        component = self._by_token.get(token) if isinstance(token, str) and token else None
        return component.name if component is not None else None

    def on_request(self, stream: RpcStream, message: Message) -> None:
        operation = stream.operation
        handler = self._handlers.get(operation)
        if handler is None:
            if operation in MODEL_OPERATIONS:
                _send_error(stream, IpcError("ServiceError", f"Operation {operation} is not supported by Greengrass"))
            else:  # the eventstream framework's answer: no service-model-type, so the client cannot map it
                text = {"error": "Unsupported Operation", "message": f"{operation} is an unsupported operation."}
                only_type = (Header.string(":content-type", CONTENT_TYPE_JSON),)
                stream.send(MessageType.APPLICATION_ERROR, only_type, json.dumps(text).encode(), terminate=True)
            return
        try:
            response = handler(stream, _parse_request(message.payload))
        except IpcError as exc:
            _send_error(stream, exc)
        except _BadRequestError as exc:
            _log.warning("greengrass ipc: unreadable %s request from %s: %s", operation, stream.principal, exc)
            _send_internal_error(stream)
        except Exception as exc:  # noqa: BLE001 - the nucleus' translateExceptions: a bug answers ServiceError
            _log.exception("greengrass ipc: %s from %s failed", operation, stream.principal)
            _send_error(stream, IpcError("ServiceError", str(exc)))
        else:
            headers = _json_headers(operation + "Response")
            streaming = operation == SUBSCRIBE_TO_TOPIC
            stream.send(
                MessageType.APPLICATION_MESSAGE, headers, json.dumps(response).encode(), terminate=not streaming
            )

    def on_stream_message(self, stream: RpcStream, message: Message) -> None:  # noqa: ARG002
        _send_internal_error(stream)  # no operation here takes a request stream (the Java framework's answer)

    def on_stream_closed(self, stream: RpcStream) -> None:
        self._subscriptions.pop(stream, None)

    def _allows(self, principal: str, destination: str, operation: str, resource: str) -> bool:
        component = self.components.get(principal)
        return component is not None and component.access_control.allows(destination, operation, resource)

    # ---- PublishToIoTCore ---------------------------------------------------------------------------

    def _publish_to_iot_core(self, stream: RpcStream, request: JsonObject) -> JsonObject:
        topic = _opt_str(request, "topicName")
        if topic is None:
            raise IpcError("InvalidArgumentsError", "Topic is required")
        if not self._allows(stream.principal, MQTT_PROXY, PUBLISH_TO_IOT_CORE, topic):
            _log.info("greengrass ipc: %s is not authorized to publish to %r", stream.principal, topic)
            raise IpcError("UnauthorizedError", "Not Authorized")
        payload = _opt_b64(request, "payload")
        if payload is None:
            raise IpcError("InvalidArgumentsError", "Payload is required")
        qos = request.get("qos")
        if qos is None:
            raise IpcError("InvalidArgumentsError", "QoS is required")
        if str(qos) not in ("0", "1"):
            raise IpcError("InvalidArgumentsError", f"Invalid QoS value: {qos}")
        try:
            self.spool.add(IoTCoreMessage(topic, payload, int(str(qos)), stream.principal))
        except SpoolError as exc:
            raise IpcError("ServiceError", f"Publish to topic {topic} failed: {exc}") from None
        return {}

    # ---- local pub/sub ----------------------------------------------------------------------------------

    def publish_local(self, topic: str, message: bytes | JsonObject, *, source: str = SHADOW_MANAGER) -> int:
        """Deliver to the matching SubscribeToTopic streams as ``source`` would; returns how many got it."""
        context: JsonObject = {"topic": topic}
        if isinstance(message, bytes):
            event: JsonObject = {"binaryMessage": {"message": base64.b64encode(message).decode(), "context": context}}
        else:
            event = {"jsonMessage": {"message": message, "context": context}}
        body = json.dumps(event).encode()
        headers = _json_headers(NAMESPACE + "SubscriptionResponseMessage")
        delivered = 0
        for stream, (topic_filter, receive_own) in list(self._subscriptions.items()):
            if _filter_matches(topic_filter, topic) and (receive_own or stream.principal != source):
                stream.send(MessageType.APPLICATION_MESSAGE, headers, body, terminate=False)
                delivered += 1
        return delivered

    def _subscribe_to_topic(self, stream: RpcStream, request: JsonObject) -> JsonObject:
        topic = _opt_str(request, "topic")
        if not topic:
            raise IpcError("InvalidArgumentsError", "Subscribe topic must not be empty")
        if not self._allows(stream.principal, PUBSUB, SUBSCRIBE_TO_TOPIC, topic):
            raise IpcError(
                "UnauthorizedError", unauthorized_message(stream.principal, PUBSUB, SUBSCRIBE_TO_TOPIC, topic)
            )
        mode = _opt_str(request, "receiveMode")
        if mode not in (None, "RECEIVE_ALL_MESSAGES", "RECEIVE_MESSAGES_FROM_OTHERS"):
            raise _BadRequestError(f"receiveMode {mode!r} is not a ReceiveMode")
        receive_own = mode == "RECEIVE_ALL_MESSAGES" or (mode is None and "+" not in topic and "#" not in topic)
        # Registered before the response is written, but nothing can be sent in between (no await).
        self._subscriptions[stream] = (topic, receive_own)
        return {}

    # ---- ShadowManager ----------------------------------------------------------------------------------

    def _later(self, key: ShadowKey, events: Iterable[tuple[str, JsonObject]]) -> None:
        """Publish ShadowManager's local events once the IPC response has been written."""
        events = list(events)

        def publish() -> None:
            for suffix, doc in events:
                self.publish_local(f"{key.topic_prefix}/{suffix}", json.dumps(doc).encode())

        asyncio.get_running_loop().call_soon(publish)

    def _reject(self, key: ShadowKey, verb: str, code: int, message: str, token: str | None = None) -> None:
        error: JsonObject = {"code": code, "message": message, "timestamp": int(self._clock())}
        if token is not None:
            error["clientToken"] = token
        self._later(key, [(f"{verb}/rejected", error)])

    def _shadow_key(self, stream: RpcStream, request: JsonObject, operation: str) -> ShadowKey:
        """The shadow a request names, validated and authorized in ShadowManager's order."""
        thing, name = _opt_str(request, "thingName"), _opt_str(request, "shadowName") or None
        key = ShadowKey(thing or "", name)
        verb = "get" if operation == GET_THING_SHADOW else "update"
        problem = _name_problem("ThingName", thing, 128) if thing else "ThingName is missing"
        if problem is None and name is not None:
            problem = _name_problem("ShadowName", name, 64)
        if problem is not None:
            self._reject(key, verb, 400, problem)
            raise IpcError("InvalidArgumentsError", problem)
        if not self._allows(stream.principal, SHADOW_MANAGER, operation, key.topic_prefix):
            self._reject(key, verb, 401, "Unauthorized")
            text = unauthorized_message(stream.principal, SHADOW_MANAGER, operation, key.topic_prefix)
            raise IpcError("UnauthorizedError", text)
        return key

    def _shadow_error(self, key: ShadowKey, verb: str, exc: ShadowRequestError) -> IpcError:
        if exc.code == 404:
            self._reject(key, verb, 404, f"No shadow exists with name: {key.name or 'Unnamed Shadow'}")
            return IpcError("ResourceNotFoundError", "No shadow found", resourceType="shadow")
        self._reject(key, verb, exc.code, exc.message, exc.client_token)
        if exc.code == 409:
            return IpcError("ConflictError", exc.message)
        return IpcError("InvalidArgumentsError" if exc.code < 500 else "ServiceError", exc.message)

    def _get_thing_shadow(self, stream: RpcStream, request: JsonObject) -> JsonObject:
        key = self._shadow_key(stream, request, GET_THING_SHADOW)
        try:
            doc = self.shadows.get(key, b"", int(self._clock())).response
        except ShadowRequestError as exc:
            raise self._shadow_error(key, "get", exc) from None
        self._later(key, [("get/accepted", doc)])
        return {"payload": _b64_json(doc)}

    def _update_thing_shadow(self, stream: RpcStream, request: JsonObject) -> JsonObject:
        payload = _opt_b64(request, "payload")
        key = self._shadow_key(stream, request, UPDATE_THING_SHADOW)
        if not payload:
            self._reject(key, "update", 400, "Missing update payload")
            raise IpcError("InvalidArgumentsError", "Missing update payload")
        now = int(self._clock())
        try:
            outcome = self.shadows.update(key, payload, now)
        except ShadowRequestError as exc:
            raise self._shadow_error(key, "update", exc) from None
        events = [(s, doc) for s, doc in outcome.events if s == "update/documents"]
        delta_event = self._delta_event(key, now, outcome.response.get("clientToken"))
        if delta_event is not None:  # ShadowManager: whenever desired and reported differ, before documents
            events.insert(0, ("update/delta", delta_event))
        self._later(key, [*events, ("update/accepted", outcome.response)])
        return {"payload": _b64_json(outcome.response)}

    def _delta_event(self, key: ShadowKey, now: int, token: object) -> JsonObject | None:
        current = self.shadows.document(key, now) or {}
        state, metadata = current.get("state"), current.get("metadata")
        delta = state.get("delta") if isinstance(state, dict) else None
        if not isinstance(delta, dict) or not delta:
            return None
        desired_meta = metadata.get("desired") if isinstance(metadata, dict) else None
        event: JsonObject = {
            "version": current.get("version"),
            "timestamp": now,
            "state": delta,
            "metadata": delta_metadata(delta, desired_meta if isinstance(desired_meta, dict) else {}),
        }
        if isinstance(token, str):
            event["clientToken"] = token
        return event


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m simulators.greengrass_ipc --socket PATH [--recipe recipe.yaml] [--thing T] [--token X]``."""
    import argparse  # noqa: PLC0415 - only the CLI needs it

    parser = argparse.ArgumentParser(description="Greengrass nucleus IPC stand-in (publishes are kept in memory)")
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--component", default="com.example.EdgeGateway")
    parser.add_argument("--token", default=None, help="the SVCUID to accept (default: random)")
    parser.add_argument("--recipe", type=Path, default=None, help="take accessControl from this recipe")
    parser.add_argument("--thing", default="demo-gateway")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    policy = AccessControl.from_recipe(args.recipe, thing_name=args.thing) if args.recipe else AccessControl()
    component = IpcComponent(args.component, args.token or secrets.token_urlsafe(24), policy)

    async def serve() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        async with GreengrassIpcServer(args.socket, [component], thing_name=args.thing) as server:
            for name, value in server.environ().items():
                print(f"export {name}={value}")
            print("READY", flush=True)
            await stop.wait()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
