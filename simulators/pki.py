"""The test PKI that the Mosquitto stand-in for AWS IoT Core (``simulators.iot_core``) and its clients use.

- ``generate_pki(dir, thing_name=...)`` makes a CA (``ca.pem``/``ca.key``), a server certificate (CN
  localhost, SANs localhost, 127.0.0.1, ::1) and a client certificate whose CN is the thing name; called again
  on the same directory it reuses what is there (the demo and the shadow CLI share one).
  ``add_client(dir, name)`` signs one more client (a consumer, the shadow service) with that CA.
- Keys are EC P-256 in PEM (PKCS#8, unencrypted) and world-readable: Mosquitto reads them after dropping
  privileges. Certificates are valid from five minutes ago for ten years. Test material only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID_DAYS = 3650


@dataclass(frozen=True, slots=True)
class Pki:
    directory: Path
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    # Readable by the broker after it drops privileges to user mosquitto (see MosquittoBroker._write_config).
    path.chmod(0o644)


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        sans: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    signer = issuer[1] if issuer else key
    return builder.sign(signer, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def add_client(directory: Path, name: str) -> tuple[Path, Path]:
    """A client certificate and key signed by the PKI's CA; CN (and so the broker username) is ``name``."""
    ca = _load_ca(directory)
    key = _key()
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    _write_cert(cert_path, _cert(name, key, ca))
    _write_key(key_path, key)
    return cert_path, key_path


def generate_pki(directory: Path, *, thing_name: str = "test-gateway") -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "ca.pem").exists():
        ca_key = _key()
        ca_cert = _cert("edge-gateway test CA", ca_key, None)
        _write_cert(directory / "ca.pem", ca_cert)
        _write_key(directory / "ca.key", ca_key)
        server_key = _key()
        _write_cert(directory / "server.pem", _cert("localhost", server_key, (ca_cert, ca_key), server=True))
        _write_key(directory / "server.key", server_key)
    if not (directory / f"{thing_name}.pem").exists():
        add_client(directory, thing_name)
    return Pki(
        directory,
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
        directory / f"{thing_name}.pem",
        directory / f"{thing_name}.key",
    )
