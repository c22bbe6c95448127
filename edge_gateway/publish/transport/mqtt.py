"""MQTT 5 transport over mutual TLS (awscrt/awsiotsdk); with ``mqtt_client`` and ``mqtt_errors`` the only
modules that import them.

Contract:
- ``start()`` builds the client from the certificate, key and CA files (mqtt_client.py), starts it and
  returns; awscrt connects and reconnects by itself (full-jitter backoff, reconnect_min_s..reconnect_max_s,
  from reconnect_min_s again after 30 s connected): there is no second reconnect loop.
- Files that cannot make a client (missing, unreadable, not PEM, a key not matching the certificate) never
  stop the gateway: the transport is "not connected" with the reason (naming the setting and the file) in
  ``status.client_error`` and ``last_error``, logged once per distinct problem. ``watch_files`` (a task in
  the supervisor's TaskGroup) builds again after a capped, jittered backoff, and at once when the files
  change. Once a client exists, awscrt's reconnects take over.
- Certificate rotation: files replaced while a client exists make ``watch_files`` build a client from them
  and reconnect cleanly (NORMAL_DISCONNECTION, no Last Will; publishes in flight fail and are retried), as
  awscrt would present the old certificate at every reconnect. If the new files are not usable yet, the
  current connection stays. The audit trail records the change (gxp/recorder.py), not this module.
- A refused connection is logged once per episode with a hint saying what to fix (TLS handshake, client
  certificate refused, nothing listening); ``status`` counts attempts and failures and keeps the last error.
  Note: awscrt's TLS (s2n) holds a client-side handshake failure (e.g. an untrusted server certificate)
  for 10-30 s before reporting it.
- ``publish(topic, payload)`` is QoS 1 and returns the PUBACK reason code; a code >= 0x80 (e.g. 135 NOT
  AUTHORIZED) or a client error raises ``PublishError`` (retryable while no client exists). Every awscrt
  error, refusal and connect failure is translated in ``mqtt_errors``, nowhere else. Awaiting goes through
  ``asyncio.shield`` because cancelling the wrapped CRT future loses its PUBACK. While offline, publishes
  wait in the client's queue until the connection is back; callers bound how many they submit.
- IoT Core limits are checked before sending (awscrt does not; ``topics.check_iot_core_limits``): topic <= 256
  bytes and <= 7 slashes (a ``$aws/rules/<rule>/`` prefix not counted), payload <= 128 KiB. Breaking one is
  ``retryable=False``.
- Callbacks arrive on CRT threads; exactly one bridge (``loop.call_soon_threadsafe``) carries them onto the
  event loop. Nothing runs on a CRT thread but that hand-over.
- ``subscribe(filter, handler)`` is QoS 1; handlers run on the event loop. After a reconnect into a new
  session (``rejoined_session`` False, e.g. a broker restart) every filter is subscribed again.
- ``stop(final)`` publishes ``final`` when connected, then disconnects with NORMAL_DISCONNECTION so the
  broker does not send the Last Will (a plain ``stop()`` would). TLS versions and suites: mqtt_client.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from awscrt import mqtt5

from edge_gateway.config.model import MqttSettings
from edge_gateway.errors import PublishError
from edge_gateway.publish.transport.base import MessageHandler, publish_final
from edge_gateway.publish.transport.mqtt_client import FILE_POLL_S, Callback, build_client, fingerprint
from edge_gateway.publish.transport.mqtt_errors import (
    check_suback,
    connect_failure,
    disconnect_reason,
    map_awscrt_errors,
    puback_code,
)
from edge_gateway.publish.transport.topics import check_iot_core_limits, topic_matches
from edge_gateway.util.backoff import Backoff

_log = logging.getLogger(__name__)

_STOP_TIMEOUT_S = 3.0


@dataclass(slots=True)
class MqttStatus:
    endpoint: str
    port: int
    client_id: str
    connected: bool = False
    connects: int = 0
    disconnects: int = 0
    connection_failures: int = 0
    connect_attempts: int = 0
    last_attempt_time: float | None = None
    rejoined_session: bool = False
    last_error: str | None = None
    last_connect_time: float | None = None
    # Why no client could be built from the certificate, key and CA files (None once one was), and how often.
    client_error: str | None = None
    build_failures: int = 0


class MqttTransport:
    def __init__(self, settings: MqttSettings, client_id: str, *, will: tuple[str, bytes] | None = None) -> None:
        self.settings = settings
        self.client_id = client_id
        self.will = will
        self.status = MqttStatus(settings.endpoint, settings.port, client_id)
        self._client: mqtt5.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        self._handlers: dict[str, MessageHandler] = {}
        # Re-subscriptions after a reconnect run as tasks; the loop keeps only weak references to tasks.
        self._resubscribing: set[asyncio.Task[None]] = set()
        self._connect_listeners: list[Callable[[], None]] = []
        self._failing = False
        self._generation = 0  # one per CRT client: callbacks of a replaced client are dropped
        self._switching = asyncio.Lock()  # start, stop, reconfigure and rebuilds replace the client one at a time
        self._running = False  # between start() and stop()
        self._read: tuple[str, ...] | None = None  # fingerprint of the files the last build read
        self._problem: str | None = None  # the build problem last logged: each distinct one is logged once

    @property
    def connected(self) -> bool:
        return self.status.connected

    def status_dict(self) -> dict[str, Any]:
        return asdict(self.status)

    # ---- the one thread -> event loop bridge --------------------------------------------------------

    def _bridge(self, fn: Callable[..., None], generation: int) -> Callback:
        def on_loop(data: Any) -> None:  # noqa: ANN401
            if generation == self._generation:
                fn(data)

        def on_crt_thread(data: Any) -> None:  # noqa: ANN401 - awscrt callback data types vary
            loop = self._loop
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # loop closing during shutdown
                    loop.call_soon_threadsafe(on_loop, data)

        return on_crt_thread

    def _callbacks(self, generation: int) -> dict[str, Callback]:
        return {
            "on_publish_received": self._bridge(self._on_message, generation),
            "on_lifecycle_attempting_connect": self._bridge(self._on_attempt, generation),
            "on_lifecycle_connection_success": self._bridge(self._on_connected, generation),
            "on_lifecycle_connection_failure": self._bridge(self._on_connection_failure, generation),
            "on_lifecycle_disconnection": self._bridge(self._on_disconnected, generation),
            "on_lifecycle_stopped": self._bridge(self._on_stopped, generation),
        }

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Build the client from the files and start it; if it cannot be built, stay "not connected" with the
        reason in ``status`` (``watch_files`` retries). Never raises for a bad or missing file."""
        async with self._switching:
            await self._start()

    async def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._connected is None:
            self._connected = asyncio.Event()
        self._running = True
        await self._build_and_switch(await asyncio.to_thread(fingerprint, self.settings), keep_old=False)

    async def _build_and_switch(self, files: tuple[str, ...], *, keep_old: bool) -> bool:
        """Build a client from ``files`` (their fingerprint, read first so a change while building is seen at
        the next poll) and run it in place of the current one, closed normally (no Last Will). When the
        files are not usable: with ``keep_old`` the current client stays, else there is none."""
        self._read = files
        generation = self._generation + 1
        try:
            client = build_client(self.settings, self.client_id, self.will, self._callbacks(generation))
        except PublishError as exc:
            self._cannot_build(str(exc), keeping=keep_old and self._client is not None)
            return False
        if self._client is not None:
            _log.info("mqtt: the certificate, key or CA files changed: reconnecting cleanly with the new ones")
        await self._stop_client()
        self._generation = generation
        self._stopped = asyncio.Event()
        self._client = client
        if self._problem is not None:
            _log.info("mqtt: the client was built from the files now (they were not usable before)")
        self._problem = self.status.client_error = None
        client.start()
        s = self.settings
        via = f" through the HTTP proxy {s.proxy.host}:{s.proxy.port}" if s.proxy else ""
        _log.info("mqtt: connecting to %s:%d as %r%s", s.endpoint, s.port, self.client_id, via)
        return True

    def _cannot_build(self, problem: str, *, keeping: bool) -> None:
        st = self.status
        st.client_error = problem
        st.build_failures += 1
        if not keeping:
            st.last_error = problem
        if problem == self._problem:
            return
        self._problem = problem
        if keeping:
            _log.error("mqtt: %s; the connection made with the previous files stays until they are usable", problem)
        else:
            _log.error("mqtt: %s; not connected, the sources keep collecting into the buffer", problem)

    async def watch_files(self) -> None:
        """Keep the client built from the current files; runs for ever (the supervisor's TaskGroup, "mqtt:files").

        Every ``FILE_POLL_S`` it looks at the files' content. No client (it could not be built): build again at
        once when the files changed, else after a capped, jittered backoff (reconnect_min_s..reconnect_max_s).
        A client exists and the files changed (certificate rotation): build one from the new files and
        reconnect cleanly with it, as awscrt's own reconnects would keep presenting the old certificate; if
        the new files are not usable yet (half written, key not matching), the current connection stays."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.settings.reconnect_min_s, self.settings.reconnect_max_s)
        retry_at = loop.time() + backoff.next_delay()
        while True:
            failed = self._running and self._client is None
            await asyncio.sleep(min(FILE_POLL_S, max(0.0, retry_at - loop.time())) if failed else FILE_POLL_S)
            files = await asyncio.to_thread(fingerprint, self.settings)
            async with self._switching:
                if not self._running or (files == self._read and self._client is not None):
                    continue
                if self._client is not None:
                    await self._build_and_switch(files, keep_old=True)
                elif files != self._read or loop.time() >= retry_at:
                    if await self._build_and_switch(files, keep_old=False):
                        backoff.reset()
                    else:
                        retry_at = loop.time() + backoff.next_delay()

    async def reconfigure(self, settings: MqttSettings) -> None:
        """Reconnect with new settings (endpoint, port, timeouts): the old connection closes normally (no
        Last Will), subscriptions and listeners carry over, publishes in flight fail and are retried."""
        async with self._switching:
            await self._stop_client()
            self.settings = settings
            self.status.connected = False
            self.status.endpoint, self.status.port = settings.endpoint, settings.port
            self._failing = False
            await self._start()

    def on_connect(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` on the event loop after every successful connect (after re-subscribing)."""
        self._connect_listeners.append(listener)

    async def wait_connected(self, timeout_s: float) -> None:
        """Return once connected; PublishError after ``timeout_s``, with the last error (e.g. a file problem)."""
        if self._connected is None:
            raise PublishError("MQTT transport is not started: call start() first", retryable=False)
        where = f"{self.settings.endpoint}:{self.settings.port}"
        try:
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        except TimeoutError:
            last = self.status.last_error or "none"
            raise PublishError(f"no MQTT connection to {where} within {timeout_s:.0f} s (last error: {last})") from None

    async def stop(self, final: tuple[str, bytes] | None = None) -> None:
        if final is not None and self.connected and (why := await publish_final(self.publish, final)):
            _log.warning("mqtt: final message to %r not delivered on shutdown: %s", final[0], why)
        async with self._switching:
            self._running = False
            await self._stop_client()

    async def _stop_client(self) -> None:
        client = self._client
        if client is None or self._stopped is None:
            return
        for task in self._resubscribing:
            task.cancel()
        # NORMAL_DISCONNECTION: the broker discards the Last Will (a plain stop() would have it sent).
        client.stop(mqtt5.DisconnectPacket(reason_code=mqtt5.DisconnectReasonCode.NORMAL_DISCONNECTION))
        try:
            async with asyncio.timeout(_STOP_TIMEOUT_S):
                await self._stopped.wait()
        except TimeoutError:
            _log.warning("mqtt: client did not report stopped within %.0f s", _STOP_TIMEOUT_S)
        self._client = None

    # ---- lifecycle events (on the loop) -------------------------------------------------------

    def _on_connected(self, data: mqtt5.LifecycleConnectSuccessData) -> None:
        st = self.status
        st.connected = True
        st.connects += 1
        st.last_connect_time = time.time()
        settings = data.negotiated_settings
        st.rejoined_session = bool(settings and settings.rejoined_session)
        self._failing = False
        assert self._connected is not None
        self._connected.set()
        session = "resumed" if st.rejoined_session else "new"
        _log.info("mqtt: connected to %s:%d (session %s)", self.settings.endpoint, self.settings.port, session)
        if not st.rejoined_session:
            for topic_filter in self._handlers:
                self._send_subscribe(topic_filter)
        for listener in self._connect_listeners:
            try:
                listener()
            except Exception:  # noqa: BLE001 - a bad listener must not break the connection handling
                _log.exception("mqtt: connect listener failed")

    def _on_connection_failure(self, data: mqtt5.LifecycleConnectFailureData) -> None:
        st = self.status
        st.connection_failures += 1
        reason, hint = connect_failure(data)
        st.last_error = f"connect failed: {reason}"
        if not self._failing:
            self._failing = True
            where = f"{self.settings.endpoint}:{self.settings.port}"
            _log.warning("mqtt: cannot connect to %s: %s%s; retrying with backoff", where, reason, hint)

    def _on_attempt(self, _data: mqtt5.LifecycleAttemptingConnectData) -> None:
        self.status.connect_attempts += 1
        self.status.last_attempt_time = time.time()

    def _on_disconnected(self, data: mqtt5.LifecycleDisconnectData) -> None:
        st = self.status
        was_connected = st.connected
        st.connected = False
        assert self._connected is not None
        self._connected.clear()
        if not was_connected:
            return
        st.disconnects += 1
        reason = disconnect_reason(data)
        st.last_error = f"disconnected: {reason}"
        if reason != "AWS_ERROR_MQTT5_USER_REQUESTED_STOP":
            _log.warning("mqtt: disconnected from %s:%d: %s", self.settings.endpoint, self.settings.port, reason)

    def _on_stopped(self, _data: mqtt5.LifecycleStoppedData) -> None:
        assert self._stopped is not None
        self._stopped.set()

    def _on_message(self, data: mqtt5.PublishReceivedData) -> None:
        packet = data.publish_packet
        for topic_filter, handler in self._handlers.items():
            if topic_matches(topic_filter, packet.topic):
                try:
                    handler(packet.topic, bytes(packet.payload or b""))
                except Exception:  # noqa: BLE001 - a bad handler must not stop message delivery
                    _log.exception("mqtt: handler for %r failed on a message from %r", topic_filter, packet.topic)

    # ---- operations ---------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes) -> int:
        check_iot_core_limits(topic, payload)
        client = self._require_client()
        with map_awscrt_errors("publish", topic, submitting=True):
            crt_future = client.publish(mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE))
        with map_awscrt_errors("publish", topic, payload_bytes=len(payload)):
            result = await _await_crt(crt_future)
        return puback_code(result, topic)

    async def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        self._handlers[topic_filter] = handler
        if self.connected:
            await self._subscribe(topic_filter)

    def _send_subscribe(self, topic_filter: str) -> None:
        assert self._loop is not None
        task = self._loop.create_task(self._subscribe(topic_filter), name=f"mqtt:subscribe:{topic_filter}")
        self._resubscribing.add(task)
        task.add_done_callback(self._resubscribing.discard)
        task.add_done_callback(_log_task_error)

    async def _subscribe(self, topic_filter: str) -> None:
        client = self._require_client()
        packet = mqtt5.SubscribePacket(subscriptions=[mqtt5.Subscription(topic_filter, qos=mqtt5.QoS.AT_LEAST_ONCE)])
        with map_awscrt_errors("subscribe", topic_filter):
            suback = await _await_crt(client.subscribe(packet))
        check_suback(suback, topic_filter)

    def _require_client(self) -> mqtt5.Client:
        if self._client is None:
            if self._running:  # no client could be built yet, or it is being replaced: retry later
                where = f"{self.settings.endpoint}:{self.settings.port}"
                raise PublishError(f"no MQTT connection to {where}: {self.status.client_error or 'reconnecting'}")
            raise PublishError("MQTT transport is not started", retryable=False)
        return self._client


async def _await_crt(crt_future: concurrent.futures.Future[Any]) -> Any:  # noqa: ANN401
    """Await a CRT future without ever cancelling it: cancelling would lose its result (the PUBACK)."""
    wrapped = asyncio.wrap_future(crt_future)
    # If our caller is cancelled, still retrieve the outcome so asyncio does not warn about it.
    wrapped.add_done_callback(lambda f: f.cancelled() or f.exception())
    return await asyncio.shield(wrapped)


def _log_task_error(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.warning("mqtt: %s", task.exception())
