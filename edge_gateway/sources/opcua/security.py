"""OPC UA security for a client session: our certificate, the trust list, the user's password.

Contract:
- The client key and certificate live in ``security.cert_dir`` (``client_key.pem``, ``client_cert.der``,
  the directory created with mode 0700). They are created once, when missing, with the application URI
  in the SubjectAltName (asyncua and most servers refuse a certificate without it), and then kept: a
  server that trusts the certificate keeps trusting it after a restart of the gateway. An expired or
  mismatching existing certificate is used as is and reported, never silently replaced.
- Before a secured session, the server's certificate (from GetEndpoints on an unsecured channel) must be
  in the trust list (``security.trust_path``: DER or PEM files, compared byte for byte). Otherwise the
  connection is refused with a message naming the certificate, and a copy goes to
  ``<cert_dir>/rejected/<sha1>.der`` for the operator to move into the trust list. With
  ``trust_on_first_use`` (never the default) a server whose application URI has no certificate in the
  trust list yet is trusted and saved there, but only when the certificate's SubjectAltName names the
  application URI the server announces; a *different* certificate for an already trusted URI is still
  refused. The checked certificate is pinned for the session (asyncua refuses a server that
  presents another one in CreateSession).
- The password comes from ``auth.password_file`` or ``auth.password_env``, read at every connect (so a
  rotated password needs no restart), and never appears in a log line or an error message.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import cert_gen, security_policies, uacrypto
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from edge_gateway.errors import SourceError
from edge_gateway.sources.opcua.config import OpcUaAuth, OpcUaSecurity, SecurityPolicy
from edge_gateway.util.files import DIR_OWNER_ONLY, OWNER_ONLY, write_durably

_log = logging.getLogger(__name__)

KEY_FILE = "client_key.pem"
CERT_FILE = "client_cert.der"
POLICIES: dict[SecurityPolicy, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
_MODES = {"Sign": ua.MessageSecurityMode.Sign, "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt}


class SecuritySetupError(SourceError):
    """The session cannot be secured as configured; the message says what to do.

    Not retryable: the same attempt fails until the operator acts (trust list, certificate, password).
    The reader still reconnects with backoff, so the fix takes effect without a restart.
    """

    retryable = False


def default_application_uri() -> str:
    return f"urn:{socket.gethostname()}:edge-gateway"


def thumbprint(der: bytes) -> str:
    return hashlib.sha1(der, usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    application_uri: str
    cert_file: Path
    key_file: Path


async def ensure_client_certificate(security: OpcUaSecurity) -> ClientIdentity:
    """Our key and certificate, created on first use and kept afterwards."""
    uri = security.application_uri or default_application_uri()
    directory = security.cert_dir
    key_file, cert_file = directory / KEY_FILE, directory / CERT_FILE
    if not (key_file.is_file() and cert_file.is_file()):
        await asyncio.to_thread(_create_key_and_certificate, key_file, cert_file, uri)  # RSA keygen: CPU-bound
        _log.info("opcua: created the client certificate %s for %s (give it to the servers to trust)", cert_file, uri)
        return ClientIdentity(uri, cert_file, key_file)
    # Read here, not through asyncua's anyio open (its file object leaks when a connect is cancelled there).
    cert = x509.load_der_x509_certificate(await asyncio.to_thread(cert_file.read_bytes))
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier
        )
    except x509.ExtensionNotFound:
        uris = []
    if uris and uri not in uris:
        # Keep the certificate (servers trust it): use the URI it was made for.
        uri = uris[0]
    return ClientIdentity(uri, cert_file, key_file)


def _create_key_and_certificate(key_file: Path, cert_file: Path, uri: str) -> None:
    """What asyncua's ``setup_self_signed_certificate`` does (a missing key is made; a certificate is made for
    the key), but the key is written owner-only from its creation (util/files; asyncua writes it with the
    umask's mode, i.e. world-readable for a moment or for good)."""
    if key_file.is_file():
        key = serialization.load_pem_private_key(key_file.read_bytes(), None)
        if not isinstance(key, rsa.RSAPrivateKey):
            msg = f"{key_file} is not an RSA key (OPC UA needs RSA): remove it and {cert_file} to have both made again"
            raise SecuritySetupError(msg)
    else:
        key = cert_gen.generate_private_key()
        write_durably(key_file, cert_gen.dump_private_key_as_pem(key), mode=OWNER_ONLY, dir_mode=DIR_OWNER_ONLY)
    subject_alt_names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(uri),
        x509.DNSName(socket.gethostname()),
    ]
    cert = cert_gen.generate_self_signed_app_certificate(
        key, uri, {"organizationName": "edge-gateway"}, subject_alt_names, extended=[ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    write_durably(cert_file, cert.public_bytes(Encoding.DER), mode=OWNER_ONLY, dir_mode=DIR_OWNER_ONLY)


def read_password(auth: OpcUaAuth) -> str:
    if auth.password_env is not None:
        value = os.environ.get(auth.password_env)
        if value is None:
            msg = f"auth.password_env: the environment variable {auth.password_env} is not set"
            raise SecuritySetupError(msg)
        return value
    assert auth.password_file is not None
    try:
        text = auth.password_file.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"auth.password_file: cannot read {auth.password_file}: {exc.strerror or type(exc).__name__}"
        raise SecuritySetupError(msg) from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        msg = f"auth.password_file: {auth.password_file} is empty"
        raise SecuritySetupError(msg)
    return lines[0]


def _load_trusted(trust_dir: Path) -> list[bytes]:
    out: list[bytes] = []
    if not trust_dir.is_dir():
        return out
    for path in sorted(trust_dir.iterdir()):
        if not path.is_file():
            continue
        data = path.read_bytes()
        try:
            cert = (
                x509.load_pem_x509_certificate(data)
                if data.lstrip().startswith(b"-----BEGIN")
                else x509.load_der_x509_certificate(data)
            )
        except ValueError:
            _log.warning("opcua: %s in the trust list is not a certificate; ignored", path)
            continue
        out.append(cert.public_bytes(Encoding.DER))
    return out


def _first_certificate(chain: bytes) -> bytes:
    """The server's own certificate (DER) from what it sent, which may be a chain."""
    # The outer DER SEQUENCE with a two-byte length (0x30 0x82 LL LL): certificates are 256 B to 64 KiB.
    return chain[: int.from_bytes(chain[2:4], "big") + 4]


def _uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def _describe_cert(cert: x509.Certificate, der: bytes) -> str:
    uri = ", ".join(_uris(cert)) or "none"
    return f"subject {cert.subject.rfc4514_string()!r}, application URI {uri}, SHA-1 {thumbprint(der)}"


def _first_use_refusal(cert: x509.Certificate, server_uri: str | None, known_uris: set[str]) -> str | None:
    """Why ``trust_on_first_use`` may not pin ``cert``, or None when it may: the certificate must name, in its
    SubjectAltName, the application URI the server announces, and no other certificate may be trusted for it."""
    uris = _uris(cert)
    if not uris:
        return "it names no application URI in its SubjectAltName (trust_on_first_use pins only one that does)"
    if not server_uri or server_uri not in uris:
        return (
            f"its SubjectAltName names {', '.join(uris)}, not the application URI the server announces"
            f" ({server_uri or 'none'}); trust_on_first_use pins only a certificate that matches"
        )
    if set(uris) & known_uris:
        return (
            "a different certificate is already trusted for this application URI"
            " (trust_on_first_use does not replace it)"
        )
    return None


def check_server_certificate(
    der: bytes, security: OpcUaSecurity, endpoint: str, *, server_uri: str | None = None
) -> None:
    """Raise ``SecuritySetupError`` unless the server certificate is trusted (see the module docstring).
    ``server_uri``: the application URI the server announces with its endpoints (first-use trust needs it)."""
    trust_dir = security.trust_path
    trusted = _load_trusted(trust_dir)
    if der in trusted:
        return
    cert = x509.load_der_x509_certificate(der)
    name = _describe_cert(cert, der)
    if security.trust_on_first_use:
        known_uris = {u for t in trusted for u in _uris(x509.load_der_x509_certificate(t))}
        refusal = _first_use_refusal(cert, server_uri, known_uris)
        if refusal is None:
            path = trust_dir / f"{thumbprint(der)}.der"
            write_durably(path, der, mode=OWNER_ONLY, dir_mode=DIR_OWNER_ONLY)
            _log.warning("opcua: trusted the certificate of %s on first use (%s), saved as %s", endpoint, name, path)
            return
        reason = refusal
    else:
        reason = "it is not in the trust list"
    rejected = security.cert_dir / "rejected" / f"{thumbprint(der)}.der"
    write_durably(rejected, der, mode=OWNER_ONLY, dir_mode=DIR_OWNER_ONLY)
    msg = (
        f"refused the server certificate of {endpoint} ({name}): {reason}. If this is the right server,"
        f" copy {rejected} into {trust_dir}"
    )
    raise SecuritySetupError(msg)


async def secure(client: Client, endpoint: str, security: OpcUaSecurity, auth: OpcUaAuth | None) -> None:
    """Configure ``client`` (before ``connect()``) for the security mode, trust list and user."""
    if security.mode == "None":
        return
    identity = await ensure_client_certificate(security)
    client.application_uri = identity.application_uri
    policy = POLICIES[security.policy]
    mode = _MODES[security.mode]
    endpoints = await client.connect_and_get_server_endpoints()
    chosen = next(
        (e for e in endpoints if e.SecurityMode == mode and e.SecurityPolicyUri == policy.URI),
        None,
    )
    if chosen is None:
        offered = sorted({f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}" for e in endpoints})
        msg = (
            f"{endpoint} offers no endpoint with policy {security.policy} and mode {security.mode};"
            f" it offers: {', '.join(offered)}"
        )
        raise SecuritySetupError(msg)
    if not chosen.ServerCertificate:
        msg = f"{endpoint} sent no certificate with its {security.policy}/{security.mode} endpoint"
        raise SecuritySetupError(msg)
    der = _first_certificate(chosen.ServerCertificate)
    check_server_certificate(der, security, endpoint, server_uri=chosen.Server.ApplicationUri)
    # Our own certificate and key as bytes, read here: asyncua would open the files through anyio, whose
    # worker-thread open leaks the file object when the connect is cancelled at that moment.
    cert, key = await asyncio.to_thread(lambda: (identity.cert_file.read_bytes(), identity.key_file.read_bytes()))
    await client.set_security(
        policy,
        uacrypto.CertProperties(cert, extension="der"),
        uacrypto.CertProperties(key, extension="pem"),
        server_certificate=der,
        mode=mode,
    )
    if auth is not None:
        client.set_user(auth.username)
        client.set_password(read_password(auth))
