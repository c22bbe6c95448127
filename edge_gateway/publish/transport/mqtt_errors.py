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
anything building the client from its files raises    PublishError naming the setting and the file and saying what
(``map_client_build_errors``): OSError (missing,      to do (missing, unreadable, not PEM, key not matching the
unreadable), AWS_ERROR_INVALID_ARGUMENT (not PEM),    certificate), retryable: the transport retries, and rebuilds
AWS_IO_TLS_CTX_ERROR (key and certificate disagree)   at once when the files change (mqtt_files.py)

Rules: exceptions are mapped only inside ``map_awscrt_errors`` and always ``raise PublishError(...) from exc``
(the publisher counts failures by the type of ``__cause__``), and ``map_client_build_errors`` likewise; anything
else passes through unchanged. Only this module, ``mqtt.py`` and ``mqtt_client.py`` import awscrt.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
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


# What each file of the client must hold, as the first line of a PEM block shows it.
_PEM_KINDS = {
    "cert_file": ("-----BEGIN CERTIFICATE-----", "the device certificate (PEM)"),
    "key_file": ("PRIVATE KEY-----", "the device's private key (PEM)"),
    "ca_file": ("-----BEGIN CERTIFICATE-----", "the CA certificate(s) that signed the server's (PEM)"),
}
_FIX = "the gateway retries, and picks up a fixed file without a restart"


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


@contextlib.contextmanager
def map_client_build_errors(files: Mapping[str, Path]) -> Iterator[None]:
    """Raise what building the awscrt client from ``files`` raises as a retryable PublishError ``from`` it,
    naming the setting (``publisher.mqtt.<field>``), the file and what to do. ``files``: field -> path of the
    certificate, key and CA the client is built from. A PublishError raised in the block passes unchanged."""
    try:
        yield
    except PublishError:
        raise
    except OSError as exc:
        raise PublishError(_file_error(exc, files)) from exc
    except Exception as exc:
        name = _crt_code(exc)
        if name is None:
            raise
        raise PublishError(_crt_build_error(name, files)) from exc


def _crt_code(exc: Exception) -> str | None:
    """The CRT error name of what awscrt raised while building a client (a plain RuntimeError there)."""
    if isinstance(exc, crt_exceptions.AwsCrtError):
        return str(exc.name)
    found = re.search(r"\((AWS_[A-Z0-9_]+)\)", str(exc)) if isinstance(exc, RuntimeError) else None
    return found.group(1) if found else None


def _setting(field: str, path: Path) -> str:
    return f"publisher.mqtt.{field} {str(path)!r}"


def _file_error(exc: OSError, files: Mapping[str, Path]) -> str:
    field = next((f for f, p in files.items() if exc.filename is not None and str(p) == str(exc.filename)), None)
    if field is None:
        return f"cannot build the MQTT client: {exc}; check {', '.join(files)} ({_FIX})"
    where = _setting(field, files[field])
    if isinstance(exc, FileNotFoundError):
        what = _PEM_KINDS.get(field, ("", "the file"))[1]
        return f"cannot build the MQTT client: {where} does not exist: install {what} there ({_FIX})"
    if isinstance(exc, PermissionError):
        return (
            f"cannot build the MQTT client: {where} is not readable by the gateway's user (uid {os.geteuid()}):"
            f" fix its owner or mode ({_FIX})"
        )
    if isinstance(exc, IsADirectoryError):
        return f"cannot build the MQTT client: {where} is a directory: point the setting at the file itself"
    return f"cannot build the MQTT client: cannot read {where}: {exc.strerror} ({_FIX})"


def _not_pem(files: Mapping[str, Path]) -> str | None:
    """The first file that holds no PEM block of its kind, described, else None."""
    for field, path in files.items():
        marker, what = _PEM_KINDS.get(field, ("-----BEGIN", "a PEM file"))
        try:
            text = path.read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        if marker not in text:
            return f"{_setting(field, path)} is not {what} (no {marker!r} line in it)"
        if field == "key_file" and "ENCRYPTED" in text:
            return f"{_setting(field, path)} is encrypted: the gateway needs the key unencrypted (mode 0600)"
    return None


def _crt_build_error(name: str, files: Mapping[str, Path]) -> str:
    not_pem = _not_pem(files)
    if not_pem is not None:
        return f"cannot build the MQTT client: {not_pem} ({name}): replace it ({_FIX})"
    cert, key = files.get("cert_file"), files.get("key_file")
    if name == "AWS_IO_TLS_CTX_ERROR" and cert is not None and key is not None:
        return (
            f"cannot build the MQTT client: the private key {_setting('key_file', key)} does not match the"
            f" certificate {_setting('cert_file', cert)} ({name}): install the key created with that"
            f" certificate ({_FIX})"
        )
    listed = ", ".join(_setting(f, p) for f, p in files.items())
    return f"cannot build the MQTT client: the TLS library refused the files ({name}): check {listed} ({_FIX})"
