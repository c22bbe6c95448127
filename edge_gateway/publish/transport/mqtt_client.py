"""Building the awscrt MQTT 5 client from ``publisher.mqtt`` and its files, and noticing when those files change.

Contract:
- ``build_client`` reads the certificate, key and CA (and the proxy password) when it is called, and only
  then: awscrt keeps what it read in the client's TLS context, so a client never sees a file replaced after
  it was built. Whatever building raises is a ``PublishError`` naming the setting, the file and what to do
  (translated in ``mqtt_errors.map_client_build_errors``); it never connects (``client.start()`` does).
- ``fingerprint(settings)`` is the content of every file ``build_client`` reads (a SHA-256 per file, or why
  it cannot be read): equal fingerprints mean a rebuild would read the same bytes. Content, not mtime, so
  a file copied over with its old mtime (``cp -p``, ``rsync -t``) is still noticed. Blocking: call it in a
  thread. The transport polls it every ``FILE_POLL_S`` (mqtt.py ``watch_files``).
- TLS: only TLS 1.2 and 1.3 with AEAD suites (ECDHE with AES-GCM; TLS 1.3's own suites) are offered, never
  TLS 1.0/1.1 or CBC (``TLS_CIPHER_PREF``, awscrt's ``TLSv1_2_2025_07``; awscrt's DEFAULT offers both).
  Not a setting: nothing local or from the shadow can weaken it. ALPN ``x-amzn-mqtt-ca`` on port 443.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from awscrt import http, io, mqtt5
from awsiot import mqtt5_client_builder

from edge_gateway.config.model import MqttSettings
from edge_gateway.errors import PublishError
from edge_gateway.publish.transport.mqtt_errors import map_client_build_errors

FILE_POLL_S = 2.0
_SESSION_EXPIRY_S = 3600
# TLS 1.2+ only, ECDHE + AES-GCM (TLS 1.2) and the TLS 1.3 suites: no TLS 1.0/1.1, no CBC, no static RSA.
TLS_CIPHER_PREF = io.TlsCipherPref.TLSv1_2_2025_07

Callback = Callable[[Any], None]


def tls_files(s: MqttSettings) -> dict[str, Path]:
    """The certificate, key and CA the client is built from, by their field in ``publisher.mqtt``."""
    candidates = {"cert_file": s.cert_file, "key_file": s.key_file, "ca_file": s.ca_file}
    return {field: path for field, path in candidates.items() if path is not None}


def fingerprint(s: MqttSettings) -> tuple[str, ...]:
    """What every file the client is built from holds now (blocking: run it in a thread)."""
    paths = list(tls_files(s).values())
    if s.proxy is not None and s.proxy.password_file is not None:
        paths.append(s.proxy.password_file)
    return tuple(_digest(p) for p in paths)


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror}"


def tls_cipher_pref() -> io.TlsCipherPref:
    """``TLS_CIPHER_PREF``, or a clear error where the platform's TLS library does not have it."""
    if not TLS_CIPHER_PREF.is_supported():
        msg = (
            f"the TLS library of this platform lacks the cipher preference {TLS_CIPHER_PREF.name} (TLS 1.2+ with"
            " AEAD suites only): run the gateway on Linux with awscrt >= 0.36 (s2n)"
        )
        raise PublishError(msg, retryable=False)
    return TLS_CIPHER_PREF


def _proxy_options(s: MqttSettings) -> http.HttpProxyOptions | None:
    proxy = s.proxy
    if proxy is None:
        return None
    if proxy.username is None or proxy.password_file is None:
        return http.HttpProxyOptions(proxy.host, proxy.port, connection_type=http.HttpProxyConnectionType.Tunneling)
    try:
        password = proxy.password_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        msg = (
            f"cannot read publisher.mqtt.proxy.password_file {str(proxy.password_file)!r}: {exc.strerror}; fix it"
            " (the gateway retries, and picks up a fixed file without a restart)"
        )
        raise PublishError(msg) from exc
    return http.HttpProxyOptions(
        proxy.host,
        proxy.port,
        auth_type=http.HttpProxyAuthenticationType.Basic,
        auth_username=proxy.username,
        auth_password=password,
        connection_type=http.HttpProxyConnectionType.Tunneling,
    )


def build_client(
    s: MqttSettings, client_id: str, will: tuple[str, bytes] | None, callbacks: dict[str, Callback]
) -> mqtt5.Client:
    """A new, not yet started client that reconnects by itself with full-jitter backoff (attempt n waits a
    random time in [0, min(reconnect_max_s, reconnect_min_s * 2^n)]); ``callbacks``: the ``on_…`` hooks."""
    last_will = None
    if will is not None:
        last_will = mqtt5.PublishPacket(topic=will[0], payload=will[1], qos=mqtt5.QoS.AT_LEAST_ONCE)
    flow = (
        mqtt5.ExtendedValidationAndFlowControlOptions.AWS_IOT_CORE_DEFAULTS
        if s.iot_core_flow_control
        else mqtt5.ExtendedValidationAndFlowControlOptions.NONE
    )
    files = tls_files(s)
    with map_client_build_errors(files):
        return mqtt5_client_builder.mtls_from_path(
            cipher_pref=tls_cipher_pref(),
            http_proxy_options=_proxy_options(s),
            cert_filepath=str(s.cert_file),
            pri_key_filepath=str(s.key_file),
            endpoint=s.endpoint,
            port=s.port,
            ca_filepath=str(s.ca_file) if s.ca_file else None,
            client_id=client_id,
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
            will=last_will,
            enable_metrics_collection=False,
            **callbacks,
        )
