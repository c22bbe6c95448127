"""The cloud transport through the Greengrass nucleus (``publisher.mqtt.mode: greengrass_ipc``).

The gateway opens no MQTT connection of its own: it talks eventstream RPC to the nucleus over its Unix
socket (``AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT``, token ``SVCUID``) with awsiotsdk's
``GreengrassCoreIPCClientV2``, the only module that imports it. Same contract as ``transport.Transport``;
what differs:

- ``publish`` is ``PublishToIoTCore`` QoS 1. Its success means the nucleus has **queued** the message
  (in memory by default: lost if the nucleus restarts before its PUBACK), not that IoT Core has it. The
  buffer acknowledges on that weaker signal; configure the nucleus' disk spooler to keep it durable
  (docs/deployment.md). IoT Core limits are checked here first, as in the direct transport.
- Errors map to ``PublishError`` in one place (``_publish_error``): ``UnauthorizedError`` (the recipe's
  accessControl does not grant it: permanent until a redeploy) has ``reason_code`` 135 like a broker's
  NOT AUTHORIZED PUBACK, so ``dead_letter_codes`` decides between the dead-letter file and holding the
  data in the buffer; ``InvalidArgumentsError`` is not retryable; ``ServiceError`` (e.g. the nucleus'
  spooler full), timeouts and a lost connection are retryable.
- The device shadow works over ShadowManager with the MQTT shadow protocol unchanged for the caller: a
  publish to ``$aws/things/<thing>/shadow[/name/<n>]/get|update`` becomes ``GetThingShadow`` /
  ``UpdateThingShadow``, and its answer goes to the subscribers of ``…/get|update/accepted|rejected`` as
  the MQTT service would send it (the same document, with the request's ``clientToken``; a refusal as
  ``{"code", "message", "clientToken"}``: ResourceNotFoundError 404, ConflictError 409,
  InvalidArgumentsError 400, UnauthorizedError 401, ServiceError 500). A subscription to ``…/update/delta``
  is ``SubscribeToTopic`` on local pub/sub, where ShadowManager publishes the delta after **every** update
  that leaves desired and reported different (the ShadowAgent handles the same desired content once).
  Other subscriptions are refused (``PublishError``, not retryable).
- ``connected`` is the IPC connection being up. There is no Last Will over IPC: presence ``offline`` does
  not exist in this mode (the nucleus' own status shows a dead device).
- Connecting is synchronous in awsiotsdk: it runs in a thread. Callbacks (connection lost, stream events)
  arrive on the CRT thread (``executor=None``, so they stay in order) and only hand over to the event
  loop. One task reconnects with jittered backoff after a lost connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from awsiot import eventstreamrpc
from awsiot.greengrasscoreipc import connect as ipc_connect
from awsiot.greengrasscoreipc import model
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

from edge_gateway.config.model import MqttSettings
from edge_gateway.errors import PublishError
from edge_gateway.publish.transport.base import MessageHandler, publish_final
from edge_gateway.publish.transport.topics import check_iot_core_limits, topic_matches
from edge_gateway.util.backoff import Backoff

_log = logging.getLogger(__name__)

NOT_AUTHORIZED = 0x87  # the MQTT 5 reason code an unauthorized PublishToIoTCore is reported with
_CONNECT_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 2.0
_SHADOW_REQUEST = re.compile(
    r"(?P<prefix>\$aws/things/(?P<thing>[^/]+)/shadow(?:/name/(?P<name>[^/]+))?)/(?P<op>get|update)"
)
_SHADOW_ANSWER = re.compile(r"\$aws/things/[^/]+/shadow(?:/name/[^/]+)?/(?:get|update)/(?:accepted|rejected)")
_SHADOW_DELTA = re.compile(r"\$aws/things/[^/]+/shadow(?:/name/[^/]+)?/update/delta")
# The shadow rejection code of each nucleus error, as the MQTT shadow service would send it.
_SHADOW_CODES: dict[type[Exception], int] = {
    model.ResourceNotFoundError: 404,
    model.ConflictError: 409,
    model.InvalidArgumentsError: 400,
    model.UnauthorizedError: 401,
    model.ServiceError: 500,
}


@dataclass(slots=True)
class IpcStatus:
    endpoint: str  # the nucleus socket
    client_id: str  # the nucleus connects to IoT Core as the thing
    port: int = 0
    mode: str = "greengrass_ipc"
    connected: bool = False
    connects: int = 0
    disconnects: int = 0
    connection_failures: int = 0
    last_error: str | None = None
    last_connect_time: float | None = None


def _message(exc: BaseException) -> str:
    """The nucleus' own text: awsiotsdk keeps it in ``message``; str(exc) is the whole shape."""
    text = getattr(exc, "message", None)
    return str(text) if text else (str(exc) or type(exc).__name__)


def _publish_error(exc: BaseException, what: str) -> PublishError:
    """The one translation of nucleus and connection errors into PublishError."""
    name = type(exc).__name__
    if isinstance(exc, model.UnauthorizedError):
        msg = (
            f"the Greengrass nucleus refused {what}: not authorized ({_message(exc)}); grant it in the component's "
            "accessControl (recipe.yaml) and redeploy"
        )
        return PublishError(msg, reason_code=NOT_AUTHORIZED)
    if isinstance(exc, model.InvalidArgumentsError):
        return PublishError(f"the Greengrass nucleus refused {what} as invalid: {_message(exc)}", retryable=False)
    if isinstance(exc, model.ServiceError):
        return PublishError(f"the Greengrass nucleus failed {what}: {_message(exc)}")
    if isinstance(exc, TimeoutError):
        return PublishError(f"no answer from the Greengrass nucleus to {what} in time")
    return PublishError(f"{what} over Greengrass IPC failed: {name}: {_message(exc)}")


def shadow_rejection(exc: BaseException, token: str | None) -> dict[str, Any] | None:
    """The ``…/rejected`` document the MQTT shadow service would send for this nucleus error, or None when
    it is not a shadow answer (a connection error: no answer at all, the request is asked again)."""
    code = next((c for cls, c in _SHADOW_CODES.items() if isinstance(exc, cls)), None)
    if code is None:
        return None
    doc: dict[str, Any] = {"code": code, "message": _message(exc), "timestamp": int(time.time())}
    if token is not None:
        doc["clientToken"] = token
    return doc


class _Lifecycle(eventstreamrpc.LifecycleHandler):  # type: ignore[misc] # awsiot is untyped
    def __init__(self, on_disconnect: Callable[[Exception | None], None]) -> None:
        super().__init__()
        self._on_disconnect = on_disconnect

    def on_disconnect(self, reason: Exception | None) -> None:
        self._on_disconnect(reason)

    def on_error(self, error: Exception) -> bool:
        _log.warning("greengrass ipc: connection error: %s", _message(error))
        return True  # close: the reconnect loop starts over cleanly


class GreengrassIpcTransport:
    def __init__(self, settings: MqttSettings, thing: str, *, socket_path: str, token: str) -> None:
        self.settings = settings
        self.thing = thing
        self.socket_path = socket_path
        self._token = token
        self.status = IpcStatus(socket_path, thing)
        self._client: Any = None  # GreengrassCoreIPCClientV2
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: asyncio.Task[None] | None = None
        self._lost: asyncio.Event | None = None
        self._handlers: dict[str, MessageHandler] = {}
        self._streams: dict[str, Any] = {}  # local pub/sub filter -> its SubscribeToTopic operation
        self._connect_listeners: list[Callable[[], None]] = []
        self._generation = 0  # one per connection: callbacks of an old one are dropped

    @property
    def connected(self) -> bool:
        return self.status.connected

    def status_dict(self) -> dict[str, Any]:
        return asdict(self.status)

    @property
    def _timeout_s(self) -> float:
        return float(self.settings.ack_timeout_s)

    # ---- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._lost = asyncio.Event()
        self._runner = self._loop.create_task(self._run(), name="greengrass-ipc:connection")
        self._runner.add_done_callback(_log_crash)
        _log.info("greengrass ipc: connecting to the nucleus at %s (no MQTT connection of our own)", self.socket_path)

    async def reconfigure(self, settings: MqttSettings) -> None:
        """Only the request timeout (``ack_timeout_s``) matters here; the nucleus holds the connection."""
        self.settings = settings

    def on_connect(self, listener: Callable[[], None]) -> None:
        self._connect_listeners.append(listener)

    async def stop(self, final: tuple[str, bytes] | None = None) -> None:
        if final is not None and self.connected and (why := await publish_final(self.publish, final)):
            _log.warning("greengrass ipc: final message to %r not queued: %s", final[0], why)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        await self._close()

    async def _close(self) -> None:
        client, self._client = self._client, None
        self._generation += 1
        self._streams.clear()
        self.status.connected = False
        if client is None:
            return
        try:
            async with asyncio.timeout(_STOP_TIMEOUT_S):
                await asyncio.wrap_future(client.close(executor_wait=False))
        except Exception as exc:  # noqa: BLE001 - after a lost connection the close future holds that error
            _log.debug("greengrass ipc: close: %s", _message(exc))

    async def _run(self) -> None:
        assert self._lost is not None
        backoff = Backoff(self.settings.reconnect_min_s, self.settings.reconnect_max_s)
        failing = False
        while True:
            try:
                await self._connect()
            except Exception as exc:  # noqa: BLE001 - awscrt raises its own AwsCrtError too: retry whatever it is
                self.status.connection_failures += 1
                self.status.last_error = f"connect failed: {type(exc).__name__}: {_message(exc)}"
                if not failing:
                    failing = True
                    hint = (
                        " (the SVCUID was refused: is this process the component the nucleus started?)"
                        if isinstance(exc, eventstreamrpc.AccessDeniedError)
                        else ""
                    )
                    _log.warning(
                        "greengrass ipc: cannot connect to the nucleus at %s: %s%s; retrying with backoff",
                        self.socket_path,
                        self.status.last_error,
                        hint,
                    )
                await asyncio.sleep(backoff.next_delay())
                continue
            failing = False
            backoff.reset()
            await self._lost.wait()
            await self._close()

    async def _connect(self) -> None:
        assert self._loop is not None
        assert self._lost is not None
        self._generation += 1
        generation, loop = self._generation, self._loop

        def lost(reason: Exception | None) -> None:  # on the CRT thread
            with contextlib.suppress(RuntimeError):  # loop closing during shutdown
                loop.call_soon_threadsafe(self._on_lost, generation, reason)

        def make() -> Any:  # noqa: ANN401 - awsiot is untyped
            connection = ipc_connect(
                ipc_socket=self.socket_path,
                authtoken=self._token,
                lifecycle_handler=_Lifecycle(lost),
                timeout=_CONNECT_TIMEOUT_S,
            )
            return GreengrassCoreIPCClientV2(client=connection, executor=None)

        self._client = await asyncio.to_thread(make)
        self._lost.clear()
        st = self.status
        st.connected, st.connects, st.last_connect_time = True, st.connects + 1, time.time()
        _log.info("greengrass ipc: connected to the nucleus at %s", self.socket_path)
        for topic_filter in list(self._handlers):
            if _SHADOW_DELTA.fullmatch(topic_filter):
                try:
                    await self._subscribe_local(topic_filter)
                except PublishError as exc:
                    _log.error("greengrass ipc: %s", exc)
        for listener in self._connect_listeners:
            try:
                listener()
            except Exception:  # noqa: BLE001 - a bad listener must not break the connection handling
                _log.exception("greengrass ipc: connect listener failed")

    def _on_lost(self, generation: int, reason: Exception | None) -> None:
        if generation != self._generation or self._lost is None:
            return
        st = self.status
        if st.connected:
            st.disconnects += 1
            st.last_error = f"disconnected: {_message(reason) if reason else 'closed'}"
            _log.warning("greengrass ipc: lost the connection to the nucleus: %s; reconnecting", st.last_error)
        st.connected = False
        self._lost.set()

    # ---- operations ------------------------------------------------------------------------------------

    async def _call(self, future: concurrent.futures.Future[Any]) -> Any:  # noqa: ANN401 - awsiot is untyped
        wrapped = asyncio.wrap_future(future)
        wrapped.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even if we time out
        async with asyncio.timeout(self._timeout_s):
            return await asyncio.shield(wrapped)

    def _require_client(self, what: str) -> Any:  # noqa: ANN401 - awsiot is untyped
        if self._client is None or not self.connected:
            raise PublishError(f"{what}: not connected to the Greengrass nucleus at {self.socket_path}")
        return self._client

    async def publish(self, topic: str, payload: bytes) -> int:
        check_iot_core_limits(topic, payload)
        shadow = _SHADOW_REQUEST.fullmatch(topic)
        if shadow is not None:
            await self._shadow(shadow, payload)
            return 0
        what = f"PublishToIoTCore of {len(payload)} bytes to {topic!r}"
        client = self._require_client(what)
        try:
            await self._call(
                client.publish_to_iot_core_async(topic_name=topic, qos=model.QOS.AT_LEAST_ONCE, payload=payload)
            )
        except (RuntimeError, TimeoutError) as exc:  # awsiot's errors are RuntimeErrors
            raise _publish_error(exc, what) from exc
        return 0  # queued by the nucleus (not a PUBACK)

    async def _shadow(self, request: re.Match[str], payload: bytes) -> None:
        """One shadow request through ShadowManager; its answer goes to the ``…/accepted|rejected`` handlers."""
        prefix, op = request["prefix"], request["op"]
        try:
            body = json.loads(payload) if payload else {}
        except ValueError:
            body = {}
        token = body.get("clientToken") if isinstance(body, dict) else None
        token = token if isinstance(token, str) else None
        what = f"{'GetThingShadow' if op == 'get' else 'UpdateThingShadow'} on {prefix}"
        client = self._require_client(what)
        names = {"thing_name": request["thing"], "shadow_name": request["name"] or ""}
        try:
            if op == "get":
                response = await self._call(client.get_thing_shadow_async(**names))
            else:
                response = await self._call(client.update_thing_shadow_async(**names, payload=payload))
        except (RuntimeError, TimeoutError) as exc:
            rejected = shadow_rejection(exc, token)
            if rejected is None:
                raise _publish_error(exc, what) from exc
            if isinstance(exc, model.UnauthorizedError):
                _log.error("greengrass ipc: %s", _publish_error(exc, what))
            self._dispatch(f"{prefix}/{op}/rejected", json.dumps(rejected).encode())
            return
        try:
            doc = json.loads(response.payload or b"{}")
        except ValueError as exc:
            raise PublishError(f"{what}: ShadowManager answered a document that is not JSON: {exc}") from exc
        if isinstance(doc, dict) and token is not None:
            doc.setdefault("clientToken", token)  # GetThingShadow has no request body to echo it from
        self._dispatch(f"{prefix}/{op}/accepted", json.dumps(doc).encode())

    async def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        if not (_SHADOW_ANSWER.fullmatch(topic_filter) or _SHADOW_DELTA.fullmatch(topic_filter)):
            msg = (
                f"subscribe to {topic_filter!r}: with publisher.mqtt.mode greengrass_ipc only the device shadow's "
                "topics can be subscribed to"
            )
            raise PublishError(msg, retryable=False)
        self._handlers[topic_filter] = handler
        if _SHADOW_DELTA.fullmatch(topic_filter) and self.connected:
            await self._subscribe_local(topic_filter)

    async def _subscribe_local(self, topic_filter: str) -> None:
        """SubscribeToTopic on local pub/sub, where ShadowManager publishes the shadow's delta."""
        assert self._loop is not None
        loop, generation = self._loop, self._generation
        client = self._require_client(f"SubscribeToTopic {topic_filter!r}")

        def on_event(event: Any) -> None:  # noqa: ANN401 - on the CRT thread; hand over only
            if event.binary_message is not None:
                topic, payload = event.binary_message.context.topic, bytes(event.binary_message.message or b"")
            elif event.json_message is not None:
                topic, payload = event.json_message.context.topic, json.dumps(event.json_message.message).encode()
            else:
                return
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._dispatch_current, generation, topic, payload)

        future, operation = client.subscribe_to_topic_async(topic=topic_filter, on_stream_event=on_event)
        what = f"SubscribeToTopic {topic_filter!r} (local pub/sub, ShadowManager's delta)"
        try:
            await self._call(future)
        except (RuntimeError, TimeoutError) as exc:
            raise _publish_error(exc, what) from exc
        self._streams[topic_filter] = operation

    def _dispatch_current(self, generation: int, topic: str, payload: bytes) -> None:
        if generation == self._generation:
            self._dispatch(topic, payload)

    def _dispatch(self, topic: str, payload: bytes) -> None:
        for topic_filter, handler in list(self._handlers.items()):
            if topic_matches(topic_filter, topic):
                try:
                    handler(topic, payload)
                except Exception:  # noqa: BLE001 - a bad handler must not stop message delivery
                    _log.exception("greengrass ipc: handler for %r failed on a message from %r", topic_filter, topic)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.error("greengrass ipc: the connection task failed; no more reconnects", exc_info=task.exception())
