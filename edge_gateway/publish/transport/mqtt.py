"""MQTT 5 transport over mutual TLS (awscrt/awsiotsdk); with ``mqtt_errors`` the only modules that import them.

Contract:
- ``start()`` starts the client and returns; awscrt connects and reconnects by itself (exponential
  backoff with full jitter: attempt n waits a random time in [0, min(reconnect_max_s, reconnect_min_s * 2^n)];
  it starts again from reconnect_min_s only after 30 s connected): there is no second loop.
- A refused connection is logged once per episode with a hint saying what to fix (TLS handshake, client
  certificate refused, nothing listening); ``status`` counts attempts and failures and keeps the last error.
  Note: awscrt's TLS (s2n) holds a client-side handshake failure (e.g. an untrusted server certificate)
  for 10-30 s before reporting it.
- ``publish(topic, payload)`` is QoS 1 and returns the PUBACK reason code; a code >= 0x80 (e.g. 135 NOT
  AUTHORIZED) or a client error raises ``PublishError``. Every awscrt error, refusal and connect failure is
  translated in ``mqtt_errors`` (``map_awscrt_errors`` and its helpers), nowhere else. Awaiting goes
  through ``asyncio.shield`` because cancelling the wrapped CRT future loses its PUBACK. While offline,
  publishes wait in the client's queue until the connection is back; callers bound how many they submit
  (that queue has no size limit).
- IoT Core limits are checked before sending (awscrt does not; ``topics.check_iot_core_limits``): topic <= 256
  bytes and <= 7 slashes (a ``$aws/rules/<rule>/`` prefix not counted), payload <= 128 KiB. Breaking one is
  ``retryable=False``.
- Callbacks arrive on CRT threads; exactly one bridge (``loop.call_soon_threadsafe``) carries them onto the
  event loop. Nothing runs on a CRT thread but that hand-over.
- ``subscribe(filter, handler)`` is QoS 1; handlers run on the event loop. After a reconnect into a new
  session (``rejoined_session`` False, e.g. a broker restart) every filter is subscribed again.
- ``stop(final)`` publishes ``final`` when connected, then disconnects with NORMAL_DISCONNECTION so the
  broker does not send the Last Will (a plain ``stop()`` would).
- TLS: only TLS 1.2 and 1.3 with AEAD suites (ECDHE with AES-GCM; TLS 1.3's own suites) are offered, never
  TLS 1.0/1.1 or CBC (``TLS_CIPHER_PREF``, awscrt's ``TLSv1_2_2025_07``; awscrt's DEFAULT offers both).
  Not a setting: nothing local or from the shadow can weaken it. ALPN ``x-amzn-mqtt-ca`` on port 443.
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

from awscrt import http, io, mqtt5
from awsiot import mqtt5_client_builder

from edge_gateway.config.model import MqttSettings
from edge_gateway.errors import PublishError
from edge_gateway.publish.transport.base import MessageHandler
from edge_gateway.publish.transport.mqtt_errors import (
    check_suback,
    connect_failure,
    disconnect_reason,
    map_awscrt_errors,
    puback_code,
)
from edge_gateway.publish.transport.topics import check_iot_core_limits, topic_matches

_log = logging.getLogger(__name__)

_SESSION_EXPIRY_S = 3600
_FINAL_PUBLISH_TIMEOUT_S = 1.0
_STOP_TIMEOUT_S = 3.0
# TLS 1.2+ only, ECDHE + AES-GCM (TLS 1.2) and the TLS 1.3 suites: no TLS 1.0/1.1, no CBC, no static RSA.
TLS_CIPHER_PREF = io.TlsCipherPref.TLSv1_2_2025_07


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


def _proxy_options(s: MqttSettings) -> http.HttpProxyOptions | None:
    proxy = s.proxy
    if proxy is None:
        return None
    if proxy.username is None or proxy.password_file is None:
        return http.HttpProxyOptions(proxy.host, proxy.port, connection_type=http.HttpProxyConnectionType.Tunneling)
    try:
        password = proxy.password_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        msg = f"cannot read the proxy password file {proxy.password_file}: {exc.strerror}"
        raise PublishError(msg, retryable=False) from exc
    return http.HttpProxyOptions(
        proxy.host,
        proxy.port,
        auth_type=http.HttpProxyAuthenticationType.Basic,
        auth_username=proxy.username,
        auth_password=password,
        connection_type=http.HttpProxyConnectionType.Tunneling,
    )


def tls_cipher_pref() -> io.TlsCipherPref:
    """``TLS_CIPHER_PREF``, or a clear error where the platform's TLS library does not have it."""
    if not TLS_CIPHER_PREF.is_supported():
        msg = (
            f"the TLS library of this platform lacks the cipher preference {TLS_CIPHER_PREF.name} (TLS 1.2+ with"
            " AEAD suites only): run the gateway on Linux with awscrt >= 0.36 (s2n)"
        )
        raise PublishError(msg, retryable=False)
    return TLS_CIPHER_PREF


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

    @property
    def connected(self) -> bool:
        return self.status.connected

    def status_dict(self) -> dict[str, Any]:
        return asdict(self.status)

    # ---- the one thread -> event loop bridge --------------------------------------------------------

    def _bridge(self, fn: Callable[..., None]) -> Callable[[Any], None]:
        generation = self._generation

        def on_loop(data: Any) -> None:  # noqa: ANN401
            if generation == self._generation:
                fn(data)

        def on_crt_thread(data: Any) -> None:  # noqa: ANN401 - awscrt callback data types vary
            loop = self._loop
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # loop closing during shutdown
                    loop.call_soon_threadsafe(on_loop, data)

        return on_crt_thread

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._generation += 1
        self._loop = asyncio.get_running_loop()
        self._connected = asyncio.Event()
        self._stopped = asyncio.Event()
        s = self.settings
        will = None
        if self.will is not None:
            will = mqtt5.PublishPacket(topic=self.will[0], payload=self.will[1], qos=mqtt5.QoS.AT_LEAST_ONCE)
        flow = (
            mqtt5.ExtendedValidationAndFlowControlOptions.AWS_IOT_CORE_DEFAULTS
            if s.iot_core_flow_control
            else mqtt5.ExtendedValidationAndFlowControlOptions.NONE
        )
        self._client = mqtt5_client_builder.mtls_from_path(
            cipher_pref=tls_cipher_pref(),
            http_proxy_options=_proxy_options(s),
            cert_filepath=str(s.cert_file),
            pri_key_filepath=str(s.key_file),
            endpoint=s.endpoint,
            port=s.port,
            ca_filepath=str(s.ca_file) if s.ca_file else None,
            client_id=self.client_id,
            keep_alive_interval_sec=s.keep_alive_s,
            ping_timeout_ms=s.ping_timeout_ms,
            ack_timeout_sec=s.ack_timeout_s,
            min_reconnect_delay_ms=int(s.reconnect_min_s * 1000),
            max_reconnect_delay_ms=int(s.reconnect_max_s * 1000),
            retry_jitter_mode=mqtt5.ExponentialBackoffJitterMode.FULL,
            session_behavior=mqtt5.ClientSessionBehaviorType.REJOIN_POST_SUCCESS,
            session_expiry_interval_sec=_SESSION_EXPIRY_S,
            offline_queue_behavior=mqtt5.ClientOperationQueueBehaviorType.FAIL_QOS0_PUBLISH_ON_DISCONNECT,
            extended_validation_and_flow_control_options=flow,
            will=will,
            enable_metrics_collection=False,
            on_publish_received=self._bridge(self._on_message),
            on_lifecycle_attempting_connect=self._bridge(self._on_attempt),
            on_lifecycle_connection_success=self._bridge(self._on_connected),
            on_lifecycle_connection_failure=self._bridge(self._on_connection_failure),
            on_lifecycle_disconnection=self._bridge(self._on_disconnected),
            on_lifecycle_stopped=self._bridge(self._on_stopped),
        )
        self._client.start()
        via = f" through the HTTP proxy {s.proxy.host}:{s.proxy.port}" if s.proxy else ""
        _log.info("mqtt: connecting to %s:%d as %r%s", s.endpoint, s.port, self.client_id, via)

    async def reconfigure(self, settings: MqttSettings) -> None:
        """Reconnect with new settings (endpoint, port, timeouts): the old connection closes normally (no
        Last Will), subscriptions and listeners carry over, publishes in flight fail and are retried."""
        await self.stop()
        self.settings = settings
        self.status.connected = False
        self.status.endpoint, self.status.port = settings.endpoint, settings.port
        self._failing = False
        await self.start()

    def on_connect(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` on the event loop after every successful connect (after re-subscribing)."""
        self._connect_listeners.append(listener)

    async def wait_connected(self, timeout_s: float) -> None:
        if self._connected is None:
            raise PublishError("MQTT transport is not started: call start() first", retryable=False)
        try:
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        except TimeoutError:
            raise PublishError(
                f"no MQTT connection to {self.settings.endpoint}:{self.settings.port} within {timeout_s:.0f} s"
                f" (last error: {self.status.last_error or 'none'})"
            ) from None

    async def stop(self, final: tuple[str, bytes] | None = None) -> None:
        if self._client is None or self._stopped is None:
            return
        if final is not None and self.connected:
            try:
                async with asyncio.timeout(_FINAL_PUBLISH_TIMEOUT_S):
                    await self.publish(*final)
            except (PublishError, TimeoutError) as exc:
                _log.warning(
                    "mqtt: final message to %r not delivered on shutdown: %s", final[0], str(exc) or "timed out"
                )
        for task in self._resubscribing:
            task.cancel()
        # NORMAL_DISCONNECTION: the broker discards the Last Will (a plain stop() would have it sent).
        self._client.stop(mqtt5.DisconnectPacket(reason_code=mqtt5.DisconnectReasonCode.NORMAL_DISCONNECTION))
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
        _log.info(
            "mqtt: connected to %s:%d (session %s)",
            self.settings.endpoint,
            self.settings.port,
            "resumed" if st.rejoined_session else "new",
        )
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
            _log.warning(
                "mqtt: cannot connect to %s:%d: %s%s; retrying with backoff",
                self.settings.endpoint,
                self.settings.port,
                reason,
                hint,
            )

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
