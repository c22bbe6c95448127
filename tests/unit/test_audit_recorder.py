"""The recorder's certificate and trust-list checks, and the shadow never touching an OPC UA source's trust
settings."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from edge_gateway.config.model import GatewayConfig, parse_config
from edge_gateway.control.desired import effective_config
from edge_gateway.errors import ConfigError
from edge_gateway.gxp.audit import read_entries, verify
from edge_gateway.gxp.recorder import OPCUA_CLIENT_CERT, AuditRecorder
from edge_gateway.sources.opcua.config import OpcUaSource


def certificate(path: Path, name: str, *, der: bool = False) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(Encoding.DER if der else Encoding.PEM))


def document(tmp_path: Path, security: dict[str, Any] | None = None) -> dict[str, Any]:
    press: dict[str, Any] = {
        "type": "opcua",
        "name": "press",
        "endpoint": "opc.tcp://127.0.0.1:4840",
        "nodes": [{"alias": "press.x", "node_id": "ns=2;s=X"}],
    }
    if security is not None:
        press["security"] = security
    return {
        "gateway": {"thing_name": "line1", "data_dir": str(tmp_path / "var")},
        "sources": [press],
        "publisher": {
            "mqtt": {
                "endpoint": "127.0.0.1",
                "ca_file": str(tmp_path / "ca.pem"),
                "cert_file": str(tmp_path / "device.pem"),
                "key_file": str(tmp_path / "device.key"),
            },
            "destinations": [{"type": "iotcore", "name": "cloud"}],
        },
    }


async def publish(_topic: str, _payload: bytes) -> int:
    return 0


def events(config: GatewayConfig) -> list[tuple[str, dict[str, Any]]]:
    return [(e.event, e.fields) for e in read_entries(config.audit_path)]


async def test_certificates_and_trust_lists_are_recorded_when_they_change(tmp_path: Path) -> None:
    pki = tmp_path / "opcua-pki"
    config = parse_config(document(tmp_path, {"mode": "SignAndEncrypt", "cert_dir": str(pki)}))
    certificate(tmp_path / "device.pem", "device")
    certificate(tmp_path / "ca.pem", "ca")
    certificate(pki / "trusted" / "plc1.der", "plc1", der=True)
    recorder = AuditRecorder(config, publish)
    await recorder.check_certificates(config)
    first = events(config)
    assert [(e, f.get("role")) for e, f in first] == [
        ("certificate.changed", "device"),
        ("certificate.changed", "ca"),
        ("trust_list.changed", None),
    ]
    assert first[0][1]["fingerprint_before"] is None
    assert first[0][1]["subject"] == "CN=device"
    assert len(first[2][1]["added"]) == 1
    assert first[2][1]["removed"] == []

    await recorder.check_certificates(config)  # nothing changed: nothing recorded
    assert len(events(config)) == 3

    certificate(pki / OPCUA_CLIENT_CERT, "client", der=True)  # made at the first secured connect
    certificate(pki / "trusted" / "plc2.pem", "plc2")
    (pki / "trusted" / "plc1.der").unlink()
    certificate(tmp_path / "device.pem", "device")  # a renewed device certificate
    await recorder.check_certificates(config)
    later = events(config)[3:]
    assert [(e, f.get("role")) for e, f in later] == [
        ("certificate.changed", "device"),
        ("certificate.changed", "opcua:press"),
        ("trust_list.changed", None),
    ]
    assert later[0][1]["fingerprint_before"] == first[0][1]["fingerprint_after"]
    assert later[2][1]["removed"] == first[2][1]["added"]
    assert len(later[2][1]["added"]) == 1
    recorder.close()

    again = AuditRecorder(config, publish)  # what was recorded is remembered across restarts
    await again.check_certificates(config)
    again.close()
    assert len(events(config)) == 6
    assert verify(config.audit_path).ok


def test_a_shadow_can_neither_introduce_nor_change_opcua_trust_settings(tmp_path: Path) -> None:
    secured = {"mode": "SignAndEncrypt", "cert_dir": str(tmp_path / "pki"), "trust_on_first_use": False}
    local = parse_config(document(tmp_path, secured))
    same = document(tmp_path, secured)["sources"]
    kept = effective_config(local, {"sources": same}).sources[0]
    assert isinstance(kept, OpcUaSource)
    assert kept.security.mode == "SignAndEncrypt"
    trusting = document(tmp_path, secured | {"trust_on_first_use": True})["sources"]
    with pytest.raises(ConfigError) as refused:
        effective_config(local, {"sources": trusting})
    assert [e.path for e in refused.value.errors] == ["sources.0.opcua.security"]
    assert "set in the local config file only" in refused.value.errors[0].message
    new = dict(trusting[0]) | {"name": "oven"}
    with pytest.raises(ConfigError) as introduced:
        effective_config(local, {"sources": [*same, new]})
    assert [e.path for e in introduced.value.errors] == ["sources.1.opcua.security"]
    plain = dict(same[0]) | {"name": "oven"}
    plain.pop("security")
    # No security for the host of a secured source: weaker security is refused (docs/security.md).
    with pytest.raises(ConfigError) as weaker:
        effective_config(local, {"sources": [*same, plain]})
    assert [e.path for e in weaker.value.errors] == ["sources.1.opcua.security.mode"]
    # A desired source that leaves them out keeps the local file's (the shadow's list replaces the file's).
    bare = dict(same[0])
    bare.pop("security")
    kept_local = effective_config(local, {"sources": [bare]}).sources[0]
    assert isinstance(kept_local, OpcUaSource)
    assert isinstance(local.sources[0], OpcUaSource)
    assert kept_local.security == local.sources[0].security
