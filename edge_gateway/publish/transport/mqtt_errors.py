"""Every translation of awscrt's errors and refusals for the MQTT transport (``mqtt.py``), in one place.

What awscrt reports                                   becomes
----------------------------------------------------  -------------------------------------------------------------
anything ``client.publish`` raises while handing      PublishError "publish to T refused by the client: E",
the packet over (awscrt: plain RuntimeError)          retryable=False (the packet itself is invalid)
AwsCrtError completing a publish, in _PERMANENT_ERRORS PublishError "publish of N bytes to T failed: NAME: hint",
                                                      retryable=False (no retry can fix it)
any other AwsCrtError completing a publish/subscribe  PublishError "publish|subscribe to T failed: NAME", retryable
PUBACK reason code >= 0x80 (e.g. 135 NOT AUTHORIZED)  PublishError "broker refused publish to T: NAME (code)",
                                                      retryable, ``reason_code`` = the code (``dead_letter_codes``)
SUBACK reason code >= 0x80                            PublishError "broker refused subscription to F: reason codes
                                                      [...]", retryable
connect failure / disconnection data                  text for ``status.last_error`` and the log, with a hint saying
                                                      what to fix; never raised (awscrt reconnects by itself)

Rules: exceptions are mapped only inside ``map_awscrt_errors`` and always ``raise PublishError(...) from exc``
(the publisher counts failures by the type of ``__cause__``); anything else passes through unchanged. Only
this module and ``mqtt.py`` import awscrt.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

from awscrt import exceptions as crt_exceptions
from awscrt import mqtt5

from edge_gateway.errors import PublishError

_FAILURE = 0x80  # MQTT 5: reason codes >= 0x80 are failures
# awscrt errors of a publish that no retry can fix: the packet itself is invalid for this connection. The hint
# tells the operator what to change.
_PERMANENT_ERRORS = {
    "AWS_ERROR_MQTT5_PACKET_VALIDATION": "the packet is over the broker's maximum packet size or otherwise"
    " invalid for this connection; make the message smaller",
    "AWS_ERROR_MQTT5_PUBLISH_OPTIONS_VALIDATION": "the publish options are invalid; check the topic",
}
# What a connect failure most likely means, for the log line an operator reads.
_CONNECT_HINTS = {
    "AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE": "TLS handshake failed: check that ca_file signed the server "
    "certificate (AmazonRootCA1 for IoT Core), that endpoint matches its name, that a server on a port "
    "other than 443 does not require ALPN, and that the server accepts TLS 1.2+ with an ECDHE AES-GCM suite "
    "(the gateway offers nothing older or weaker)",
    "AWS_IO_TLS_ERROR_READ_FAILURE": "the server closed TLS during the handshake: it probably refused the client "
    "certificate (revoked, inactive in IoT Core, or from a CA it does not trust)",
    "AWS_IO_SOCKET_CONNECTION_REFUSED": "nothing listens there: check endpoint and port",
    "AWS_IO_DNS_INVALID_NAME": "the endpoint name does not resolve: check endpoint",
    "AWS_ERROR_HTTP_PROXY_CONNECT_FAILED": "the HTTP proxy refused the tunnel: check the proxy host, port, "
    "username and password file, and that it allows CONNECT to the endpoint's port",
}


def crt_error_name(exc: BaseException) -> str:
    """The CRT error name (``AWS_IO_…``) of an awscrt error, else the exception's type and text."""
    if isinstance(exc, crt_exceptions.AwsCrtError):
        return str(exc.name)
    return f"{type(exc).__name__}: {exc}"


@contextlib.contextmanager
def map_awscrt_errors(
    operation: Literal["publish", "subscribe"], topic: str, *, submitting: bool = False, payload_bytes: int = 0
) -> Iterator[None]:
    """Raise what awscrt raises in the block as PublishError, ``from`` the original.

    ``submitting``: the block only hands a packet to the client; whatever it raises means the packet can
    never be sent. Otherwise the block awaits the operation's completion and only AwsCrtError is mapped.
    ``payload_bytes`` goes into the message of a permanent publish error."""
    try:
        yield
    except Exception as exc:
        if submitting:
            raise PublishError(f"{operation} to {topic!r} refused by the client: {exc}", retryable=False) from exc
        if not isinstance(exc, crt_exceptions.AwsCrtError):
            raise
        hint = _PERMANENT_ERRORS.get(exc.name) if operation == "publish" else None
        if hint is not None:
            msg = f"publish of {payload_bytes} bytes to {topic!r} failed: {exc.name}: {hint}"
            raise PublishError(msg, retryable=False) from exc
        raise PublishError(f"{operation} to {topic!r} failed: {exc.name}") from exc


def puback_code(result: Any, topic: str) -> int:  # noqa: ANN401 - mqtt5.PublishCompletionData, awscrt is untyped
    """The PUBACK's success reason code, or PublishError carrying the refusal's code."""
    code = int(result.puback.reason_code) if result.puback is not None else 0
    if code >= _FAILURE:
        name = getattr(result.puback.reason_code, "name", str(code))
        raise PublishError(f"broker refused publish to {topic!r}: {name} ({code})", reason_code=code)
    return code


def check_suback(suback: Any, topic_filter: str) -> None:  # noqa: ANN401 - mqtt5.SubackPacket
    """PublishError if the broker refused the subscription."""
    codes = [int(c) for c in suback.reason_codes]
    if any(c >= _FAILURE for c in codes):
        raise PublishError(f"broker refused subscription to {topic_filter!r}: reason codes {codes}")


def connect_failure(data: mqtt5.LifecycleConnectFailureData) -> tuple[str, str]:
    """(reason, hint) of a failed connect attempt: the CRT error and CONNACK code, and what to fix ("" if
    nothing specific), formatted for ``status.last_error`` and the log line."""
    name = crt_error_name(data.exception) if data.exception else "unknown"
    reason = name
    if data.connack_packet is not None:
        reason += f" (CONNACK {data.connack_packet.reason_code!r})"
    hint = f" ({_CONNECT_HINTS[name]})" if name in _CONNECT_HINTS else ""
    return reason, hint


def disconnect_reason(data: mqtt5.LifecycleDisconnectData) -> str:
    """Why a connection closed: the CRT error name (``AWS_ERROR_MQTT5_USER_REQUESTED_STOP`` for our own
    stop), or the broker closing it."""
    return crt_error_name(data.exception) if data.exception else "broker closed the connection"
