"""The files and directories a configuration names, checked before anything runs (``edge-gateway validate``,
and ``edge-gateway run`` before it starts).

Contract:
- ``check_files(config)`` returns every problem as a ``FieldError`` whose path is the config field
  (``publisher.mqtt.cert_file``, ``sources.0.opcua.security.cert_dir``) and whose message names the file,
  what is wrong with it and what to do. It only reads: it never creates, changes or removes a file.
- The problems come in three groups, because ``run`` treats them differently (docs/configuration.md,
  "Files"): ``cloud`` (``publisher.mqtt``: ``ca_file``, ``cert_file``, ``key_file``,
  ``proxy.password_file``; none in ``greengrass_ipc`` mode, where the nucleus holds the connection) never
  stops collection; ``sources`` (OPC UA ``auth.password_file``, and for a secured source
  ``security.cert_dir`` and the trust list) are the source's own, it reports them and retries; ``storage``
  (``gateway.data_dir``, the disk buffer's directory) makes collection impossible.
- Certificates, keys and CA files must be PEM; a key must be the private key of its certificate (their
  public keys are compared); a certificate must be valid at the system clock's time (config/credentials.py
  judges one file). The OPC UA client pair in ``cert_dir`` is the gateway's own (``client_key.pem``, PEM, and
  ``client_cert.der``, DER): when present it gets the same checks.
- Tests run as root, for whom every permission check passes: unreadable is also "a directory where a file is
  expected" and "a file where a directory is expected", which these checks report the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import rsa

from edge_gateway.config.credentials import (
    Clock,
    FileCheckError,
    certificates,
    check_any_valid,
    check_pair,
    check_password,
    check_valid,
    private_key,
    read_file,
    user,
)
from edge_gateway.config.model import GatewayConfig
from edge_gateway.errors import FieldError

# The OPC UA client's pair in security.cert_dir (sources/opcua/security.py, which makes it on first use).
OPCUA_KEY_FILE = "client_key.pem"
OPCUA_CERT_FILE = "client_cert.der"
_T = TypeVar("_T")


class _OpcUaAuth(Protocol):
    """What is checked of an OPC UA source (sources/opcua/config.py, a floor above: not imported here)."""

    @property
    def username(self) -> str: ...
    @property
    def password_file(self) -> Path | None: ...


class _OpcUaSecurity(Protocol):
    @property
    def mode(self) -> str: ...
    @property
    def cert_dir(self) -> Path: ...
    @property
    def trust_dir(self) -> Path | None: ...
    @property
    def trust_on_first_use(self) -> bool: ...
    @property
    def trust_path(self) -> Path: ...


class _OpcUaSource(Protocol):
    @property
    def auth(self) -> _OpcUaAuth | None: ...
    @property
    def security(self) -> _OpcUaSecurity: ...


@dataclass(slots=True)
class FileProblems:
    cloud: list[FieldError] = field(default_factory=list)
    # The cloud problems the MQTT transport cannot see by itself (it builds its client fine and only sees a
    # refused TLS handshake): a certificate out of date, a CA that did not sign it. What the transport does
    # see (missing, unreadable, not PEM, key mismatch) it logs itself, once, and retries.
    handshake: list[FieldError] = field(default_factory=list)
    sources: dict[str, list[FieldError]] = field(default_factory=dict)  # by source name
    storage: list[FieldError] = field(default_factory=list)

    @property
    def all(self) -> list[FieldError]:
        return [*self.storage, *self.cloud, *(e for errors in self.sources.values() for e in errors)]


def check_files(config: GatewayConfig, clock: Clock | None = None) -> FileProblems:
    clock = clock or Clock.system()
    out = FileProblems()
    out.storage = storage_errors(config)
    mqtt = config.publisher.mqtt
    if not mqtt.ipc:
        out.cloud, out.handshake = _mqtt_errors(config, clock)
    for i, source in enumerate(config.sources):
        errors = _opcua_errors(f"sources.{i}.opcua", source, clock) if source.type == "opcua" else []
        if errors:
            out.sources[source.name] = errors
    return out


# --- storage: where the buffer and the state live --------------------------------------------------------


def storage_errors(config: GatewayConfig) -> list[FieldError]:
    errors = _check(
        "gateway.data_dir", lambda: _writable_dir(config.gateway.data_dir, "the buffer and the gateway's state")
    )
    # The default buffer directory is in data_dir: a problem there is already reported once.
    if config.buffer.type == "disk" and (config.buffer.path is not None or not errors):
        default = "" if config.buffer.path else ", by default <gateway.data_dir>/buffer"
        errors += _check("buffer.path", lambda: _writable_dir(config.buffer_path, f"the disk buffer{default}"))
    return errors


def _writable_dir(directory: Path, what: str) -> None:
    """``directory`` exists and the gateway may write there, or it can be created."""
    todo = "choose another path or fix the file system"
    if directory.exists():
        if not directory.is_dir():
            msg = f"{directory} is a file, not a directory (it holds {what}): {todo}"
            raise FileCheckError(msg)
        if not os.access(directory, os.W_OK | os.X_OK):
            msg = f"{directory} is not writable by {user()} (it holds {what}): give that user write access ({todo})"
            raise FileCheckError(msg)
        return
    ancestor = directory.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        msg = f"cannot create {directory} (for {what}): {ancestor} is a file, not a directory: {todo}"
        raise FileCheckError(msg)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        msg = (
            f"cannot create {directory} (for {what}): {ancestor} is not writable by {user()} (read-only, or a disk"
            f" that is not mounted?): create the directory for that user, or {todo}"
        )
        raise FileCheckError(msg)


# --- the cloud connection ---------------------------------------------------------------------------------

_WHAT = {
    "cert_file": "the device certificate, with AWS IoT the one attached to the thing",
    "key_file": "the device certificate's private key",
    "ca_file": "the CA that signed the server's certificate, with AWS IoT AmazonRootCA1.pem",
}


def _mqtt_errors(config: GatewayConfig, clock: Clock) -> tuple[list[FieldError], list[FieldError]]:
    """(every problem, the ones only a TLS handshake would show: validity and issuer)."""
    mqtt = config.publisher.mqtt
    at = "publisher.mqtt"
    errors: list[FieldError] = []
    handshake: list[FieldError] = []
    cert: x509.Certificate | None = None
    cert_path = mqtt.cert_file
    if cert_path is not None:
        chain = _check_value(errors, f"{at}.cert_file", lambda: certificates(cert_path, _WHAT["cert_file"]))
        if chain:
            cert = chain[0]
            renew = "renew it and replace the file"
            handshake += _check(f"{at}.cert_file", lambda: check_valid(chain[0], cert_path, clock, renew))
    if (key_path := mqtt.key_file) is not None:
        key = _check_value(errors, f"{at}.key_file", lambda: private_key(key_path, _WHAT["key_file"]))
        if key is not None and cert is not None and cert_path is not None:
            signed = cert
            errors += _check(f"{at}.key_file", lambda: check_pair(key, key_path, signed, cert_path))
    if (ca_path := mqtt.ca_file) is not None:
        cas = _check_value(errors, f"{at}.ca_file", lambda: certificates(ca_path, _WHAT["ca_file"])) or []
        if cas:
            handshake += _check(f"{at}.ca_file", lambda: check_any_valid(cas, ca_path, clock))
        if cas and cert is not None and cert_path is not None:
            client = cert
            handshake += _check(f"{at}.ca_file", lambda: _signed_by(client, cert_path, cas, ca_path))
    if mqtt.proxy is not None and mqtt.proxy.password_file is not None:
        pw = mqtt.proxy.password_file
        errors += _check(f"{at}.proxy.password_file", lambda: check_password(pw, "the HTTP proxy's password"))
    return sorted([*errors, *handshake], key=_order), handshake


_FIELDS = ("cert_file", "key_file", "ca_file", "proxy.password_file")


def _order(e: FieldError) -> int:
    """Problems in the order of the settings (as they were found before the handshake ones were kept apart)."""
    return next((i for i, f in enumerate(_FIELDS) if e.path.endswith(f)), len(_FIELDS))


def _signed_by(cert: x509.Certificate, cert_path: Path, cas: list[x509.Certificate], ca_path: Path) -> None:
    """ca_file is the trust anchor of the SERVER's certificate. With AWS IoT Core it is AmazonRootCA1, while the
    device certificate is signed by AWS's own device CA (or a CA you registered), which ca_file does not hold:
    nothing to check then. Only when ca_file holds a certificate named as the device certificate's issuer (one
    private CA for broker and devices, as a local Mosquitto) can a wrong pair be told: the signature must
    verify with that CA's key."""
    issuers = [ca for ca in cas if ca.subject == cert.issuer]
    for ca in issuers:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return
    if issuers:
        msg = (
            f"{ca_path} holds a CA named {cert.issuer.rfc4514_string()!r}, the issuer of {cert_path}, but that CA"
            " did not sign it (another CA of the same name): give the CA file of the PKI that issued the"
            " certificate, or a certificate issued by this CA"
        )
        raise FileCheckError(msg)


# --- OPC UA sources ---------------------------------------------------------------------------------------


def _opcua_errors(at: str, source: _OpcUaSource, clock: Clock) -> list[FieldError]:
    errors: list[FieldError] = []
    auth = source.auth
    if auth is not None and auth.password_file is not None:
        pw: Path = auth.password_file
        errors += _check(
            f"{at}.auth.password_file", lambda: check_password(pw, f"the password of user {auth.username!r}")
        )
    security = source.security
    if security.mode == "None":
        return errors  # neither the client certificate nor the trust list is used
    errors += _check(f"{at}.security.cert_dir", lambda: _client_pair(security.cert_dir, clock))
    trust: Path = security.trust_path
    explicit = security.trust_dir is not None and not security.trust_on_first_use
    errors += _check(f"{at}.security.trust_dir", lambda: _trust_list(trust, explicit=explicit))
    return errors


def _client_pair(directory: Path, clock: Clock) -> None:
    if not directory.exists():
        _writable_dir(directory, "the OPC UA client key and certificate, made on first use")
        return
    _writable_dir(directory, "the OPC UA client key and certificate")
    key_path, cert_path = directory / OPCUA_KEY_FILE, directory / OPCUA_CERT_FILE
    if not key_path.exists() and cert_path.exists():
        msg = (
            f"{cert_path} is there but {key_path} is missing: the gateway would make a new key and replace the"
            " certificate the servers trust; put the key back, or remove the certificate to have a new pair made"
            " (and have the servers trust the new certificate)"
        )
        raise FileCheckError(msg)
    if not cert_path.exists():
        return  # a missing certificate is made for the key that is there (sources/opcua/security.py)
    redo = f"remove {key_path} and {cert_path} to have a new pair made (the servers must then trust it)"
    key = private_key(key_path, "the OPC UA client key")
    if not isinstance(key, rsa.RSAPrivateKey):
        msg = f"{key_path} is not an RSA key (OPC UA needs RSA): {redo}"
        raise FileCheckError(msg)
    data = read_file(cert_path, "the OPC UA client certificate")
    try:
        cert = x509.load_der_x509_certificate(data)
    except ValueError:
        msg = f"{cert_path} is not a DER certificate: {redo}"
        raise FileCheckError(msg) from None
    check_pair(key, key_path, cert, cert_path)
    check_valid(cert, cert_path, clock, redo)


def _trust_list(directory: Path, *, explicit: bool) -> None:
    if not directory.exists():
        if explicit:
            msg = (
                f"{directory} does not exist: every server certificate would be refused; create it and put the"
                " certificates of the servers to trust in it (DER or PEM)"
            )
            raise FileCheckError(msg)
        return  # made at the first refusal or first-use trust; the refusal says what to copy there
    if not directory.is_dir():
        msg = f"{directory} is a file, not a directory: the trust list is a directory of server certificates"
        raise FileCheckError(msg)
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        msg = f"cannot list {directory}: {exc.strerror}: give {user()} read access to the trust list"
        raise FileCheckError(msg) from None
    for path in entries:
        if path.is_file():
            read_file(path, "a trusted server certificate")


def _check(path: str, check: Callable[[], None]) -> list[FieldError]:
    errors: list[FieldError] = []
    _check_value(errors, path, check)
    return errors


def _check_value(errors: list[FieldError], path: str, read: Callable[[], _T]) -> _T | None:
    try:
        return read()
    except FileCheckError as exc:
        errors.append(FieldError(path, str(exc)))
    except OSError as exc:  # e.g. a parent directory the user may not search: even its files cannot be seen
        where = exc.filename or "a parent directory"
        errors.append(FieldError(path, f"cannot check {where}: {exc.strerror or exc}: give {user()} access"))
    return None
