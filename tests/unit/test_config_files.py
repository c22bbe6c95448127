"""Every file a configuration names is checked by ``edge-gateway validate`` (exit 2, the field and the file named,
what to do) and by ``run`` before it starts (config/files.py); a configuration without sources is valid.

Certificates are real: the test PKI (simulators/pki.py) and, for the broken ones, ``cryptography``. Tests run
as root, for whom no permission check fails: "unreadable" is a directory where a file is expected, or a file
where a directory is expected.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_gateway import cli
from edge_gateway.config import greengrass
from edge_gateway.config.credentials import Clock
from edge_gateway.config.files import OPCUA_CERT_FILE, OPCUA_KEY_FILE, check_files
from edge_gateway.config.model import parse_config
from edge_gateway.observe.health import summary
from simulators.pki import Pki, add_client, generate_pki
from tests.unit.test_observability import status_doc

MQTT = "publisher.mqtt"
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return generate_pki(tmp_path / "pki", thing_name="line1-gw")


def document(tmp_path: Path, pki: Pki, *, sources: list[dict[str, Any]] | None = None, **mqtt: Any) -> dict[str, Any]:
    settings = {
        "endpoint": "127.0.0.1",
        "cert_file": str(pki.client_cert),
        "key_file": str(pki.client_key),
        "ca_file": str(pki.ca_file),
    }
    doc: dict[str, Any] = {
        "gateway": {"thing_name": "line1-gw", "data_dir": str(tmp_path / "var")},
        "publisher": {"mqtt": settings | mqtt, "destinations": [{"type": "iotcore", "name": "cloud"}]},
    }
    if sources is not None:
        doc["sources"] = sources
    return doc


def validate(tmp_path: Path, doc: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    code = cli.main(["validate", "--config", str(path)])
    out = capsys.readouterr()
    return code, out.out, out.err


def refused(tmp_path: Path, doc: dict[str, Any], capsys: pytest.CaptureFixture[str], field: str, says: str) -> str:
    """Validate ``doc``: exit 2, and an error line for ``field`` containing ``says``; returns that line."""
    code, out, err = validate(tmp_path, doc, capsys)
    assert (code, out) == (2, ""), err
    lines = [line.strip() for line in err.splitlines() if line.strip().startswith(f"{field}: ")]
    assert lines, f"no error for {field}: {err}"
    assert says in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


def sign(pki: Pki, name: str, *, not_before: dt.datetime, not_after: dt.datetime) -> tuple[Path, Path]:
    """A client certificate and key signed by the test CA with the validity given."""
    ca = x509.load_pem_x509_certificate(pki.ca_file.read_bytes())
    ca_key = serialization.load_pem_private_key((pki.directory / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = pki.directory / f"{name}.pem", pki.directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


# --- right files, no sources ------------------------------------------------------------------------------


def test_a_config_whose_files_are_right_is_valid_and_zero_sources_say_so(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = validate(tmp_path, document(tmp_path, pki), capsys)
    assert (code, err) == (0, "")
    assert "valid (no sources, 1 destination(s), thing line1-gw)" in out
    assert "no sources configured: the gateway starts, connects and heartbeats" in out
    assert "shadow.allowed_source_hosts is not set" in out  # nothing could be added without it

    doc = document(tmp_path, pki, sources=[]) | {"shadow": {"allowed_source_hosts": ["10.0.0.0/24"]}}
    code, out, err = validate(tmp_path, doc, capsys)
    assert (code, err) == (0, "")
    assert "collects once the device shadow 'edge-gateway' gives it sources on 10.0.0.0/24" in out


def test_greengrass_gateway_config_without_sources_is_valid(tmp_path: Path) -> None:
    inline = {"publisher": {"destinations": [{"type": "iotcore", "name": "cloud"}]}}
    env = {
        "AWS_IOT_THING_NAME": "line1-gw",
        "EDGE_GATEWAY_WORK_DIR": str(tmp_path / "work"),
        "EDGE_GATEWAY_CONFIG_JSON": json.dumps(inline),
        "EDGE_GATEWAY_ENDPOINT": "example-ats.iot.eu-west-1.amazonaws.com",
        "EDGE_GATEWAY_CERT_FILE": "/etc/edge-gateway/gateway.cert.pem",
        "EDGE_GATEWAY_KEY_FILE": "/etc/edge-gateway/gateway.private.key",
    }
    config, _ = greengrass.load(env)
    assert config.sources == []


def test_the_health_summary_says_no_sources_configured() -> None:
    health = summary(status_doc(sources={}))
    assert health["problems"] == ["no sources configured"]
    assert health["state"] == "degraded"
    assert "no sources configured" not in summary(status_doc())["problems"]


def test_the_status_command_says_no_sources_configured(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "status.json"
    path.write_text(json.dumps(status_doc(sources={})))
    assert cli.main(["status", "--file", str(path)]) == 0
    assert "no sources configured" in capsys.readouterr().out
    path.write_text(json.dumps(status_doc()))
    assert cli.main(["status", "--file", str(path)]) == 0
    assert "no sources configured" not in capsys.readouterr().out


# --- one test per bad file kind ---------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["cert_file", "key_file", "ca_file"])
def test_a_missing_file_is_named_with_its_field(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str], field: str
) -> None:
    missing = tmp_path / "nowhere" / f"{field}.pem"
    overrides: dict[str, Any] = {field: str(missing)}
    line = refused(tmp_path, document(tmp_path, pki, **overrides), capsys, f"{MQTT}.{field}", str(missing))
    assert "does not exist" in line
    assert "put it there or correct the path" in line


def test_a_missing_proxy_password_file_and_an_empty_one(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "proxy.pw"
    proxy = {"host": "127.0.0.1", "port": 3128, "username": "gw", "password_file": str(missing)}
    refused(tmp_path, document(tmp_path, pki, proxy=proxy), capsys, f"{MQTT}.proxy.password_file", "does not exist")
    missing.write_text("\n")
    line = refused(tmp_path, document(tmp_path, pki, proxy=proxy), capsys, f"{MQTT}.proxy.password_file", "is empty")
    assert "write the password on its first line" in line


def test_a_directory_where_a_file_is_expected_is_unreadable(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "cert.pem"
    directory.mkdir()
    line = refused(
        tmp_path, document(tmp_path, pki, cert_file=str(directory)), capsys, f"{MQTT}.cert_file", "is a directory"
    )
    assert str(directory) in line


def test_a_file_where_a_directory_is_expected_is_unreadable(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    inside = pki.client_key / "gateway.key"  # the key file is in the way of a directory
    line = refused(tmp_path, document(tmp_path, pki, key_file=str(inside)), capsys, f"{MQTT}.key_file", str(inside))
    assert f"{pki.client_key} is a file, not a directory" in line


def test_a_certificate_that_is_not_pem_and_a_der_one(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"this is not a certificate\n")
    refused(tmp_path, document(tmp_path, pki, ca_file=str(garbage)), capsys, f"{MQTT}.ca_file", f"{garbage} is not PEM")
    der = tmp_path / "cert.der"
    der.write_bytes(
        x509.load_pem_x509_certificate(pki.client_cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    )
    line = refused(
        tmp_path, document(tmp_path, pki, cert_file=str(der)), capsys, f"{MQTT}.cert_file", f"{der} is not PEM"
    )
    assert "openssl x509 -inform der" in line


def test_swapped_certificate_and_key(tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    doc = document(tmp_path, pki, cert_file=str(pki.client_key), key_file=str(pki.client_cert))
    refused(tmp_path, doc, capsys, f"{MQTT}.cert_file", "holds a private key, not a certificate")
    refused(tmp_path, doc, capsys, f"{MQTT}.key_file", "holds a certificate, not a private key")


def test_an_encrypted_key_is_refused(tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    refused(tmp_path, document(tmp_path, pki, key_file=str(encrypted)), capsys, f"{MQTT}.key_file", "is encrypted")


def test_a_key_that_does_not_match_its_certificate(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    _, other_key = add_client(pki.directory, "another-gw")
    line = refused(
        tmp_path, document(tmp_path, pki, key_file=str(other_key)), capsys, f"{MQTT}.key_file", str(other_key)
    )
    assert f"is not the private key of the certificate {pki.client_cert} (their public keys differ)" in line


def test_an_expired_certificate(tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    cert, key = sign(pki, "expired", not_before=NOW - dt.timedelta(days=400), not_after=NOW - dt.timedelta(days=1))
    line = refused(
        tmp_path,
        document(tmp_path, pki, cert_file=str(cert), key_file=str(key)),
        capsys,
        f"{MQTT}.cert_file",
        str(cert),
    )
    assert "expired on" in line
    assert "the system clock says" in line


def test_a_certificate_not_yet_valid(tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    cert, key = sign(pki, "future", not_before=NOW + dt.timedelta(days=2), not_after=NOW + dt.timedelta(days=400))
    line = refused(
        tmp_path,
        document(tmp_path, pki, cert_file=str(cert), key_file=str(key)),
        capsys,
        f"{MQTT}.cert_file",
        str(cert),
    )
    assert "is not valid before" in line


def test_an_unsynchronised_clock_in_1970_is_named_as_the_cause(tmp_path: Path, pki: Pki) -> None:
    config = parse_config(document(tmp_path, pki))
    booted = Clock(dt.datetime(1970, 1, 1, 0, 2, tzinfo=dt.UTC), synchronised=False)
    errors = check_files(config, booted).cloud
    cert = next(e for e in errors if e.path == f"{MQTT}.cert_file")
    assert "the system clock says 1970-01-01 00:02 UTC and is not synchronised (NTP)" in cert.message
    assert "let the clock synchronise" in cert.message
    assert any(e.path == f"{MQTT}.ca_file" for e in errors)  # the CA is not valid in 1970 either
    synced = Clock(dt.datetime(1970, 1, 1, tzinfo=dt.UTC), synchronised=True)
    cert = next(e for e in check_files(config, synced).cloud if e.path == f"{MQTT}.cert_file")
    assert "and is synchronised (NTP)" in cert.message
    assert "the certificate was issued for a later date" in cert.message
    assert check_files(config, Clock(dt.datetime.now(dt.UTC), synchronised=False)).all == []


def test_a_ca_that_did_not_sign_the_client_certificate(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    # Another PKI: its CA has the same name as the one that issued the device certificate, another key.
    other = generate_pki(tmp_path / "other-pki", thing_name="line1-gw")
    line = refused(
        tmp_path, document(tmp_path, pki, ca_file=str(other.ca_file)), capsys, f"{MQTT}.ca_file", str(other.ca_file)
    )
    assert "did not sign it" in line


def test_a_ca_that_is_not_the_client_certificate_issuer_is_not_judged(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    # As with AWS IoT: AmazonRootCA1 signs the server, AWS's device CA the device certificate.
    server_ca, _ = sign(pki, "server-root", not_before=NOW - dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=9))
    code, _, err = validate(tmp_path, document(tmp_path, pki, ca_file=str(server_ca)), capsys)
    assert (code, err) == (0, "")


# --- OPC UA files: the source's own ----------------------------------------------------------------------


def opcua(tmp_path: Path, **security: Any) -> dict[str, Any]:
    return {
        "type": "opcua",
        "name": "press",
        "endpoint": "opc.tcp://127.0.0.1:4840",
        "nodes": [{"alias": "press.counter", "node_id": "ns=2;s=Line1.Counter"}],
        "security": {"mode": "SignAndEncrypt", "cert_dir": str(tmp_path / "opcua-pki")} | security,
    }


def test_opcua_password_file_cert_dir_and_trust_dir(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    at = "sources.0.opcua"
    source = opcua(tmp_path) | {"auth": {"username": "op", "password_file": str(tmp_path / "op.pw")}}
    refused(tmp_path, document(tmp_path, pki, sources=[source]), capsys, f"{at}.auth.password_file", "does not exist")

    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("x")
    source = opcua(tmp_path, cert_dir=str(in_the_way))
    refused(
        tmp_path, document(tmp_path, pki, sources=[source]), capsys, f"{at}.security.cert_dir", "is a file, not a dir"
    )

    source = opcua(tmp_path, trust_dir=str(tmp_path / "trusted"))
    line = refused(
        tmp_path, document(tmp_path, pki, sources=[source]), capsys, f"{at}.security.trust_dir", "does not exist"
    )
    assert "every server certificate would be refused" in line
    source = opcua(tmp_path, trust_dir=str(in_the_way))
    refused(tmp_path, document(tmp_path, pki, sources=[source]), capsys, f"{at}.security.trust_dir", "is a file")

    code, _, err = validate(tmp_path, document(tmp_path, pki, sources=[opcua(tmp_path)]), capsys)
    assert (code, err) == (0, "")  # a cert_dir that can be created, the default trust list not there yet


def test_opcua_client_pair_that_does_not_match(tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

    cert_dir = tmp_path / "opcua-pki"
    cert_dir.mkdir()
    keys = [rsa.generate_private_key(65537, 2048) for _ in range(2)]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(keys[0].public_key())
        .serial_number(1)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(keys[0], hashes.SHA256())
    )
    (cert_dir / OPCUA_CERT_FILE).write_bytes(cert.public_bytes(serialization.Encoding.DER))
    field = "sources.0.opcua.security.cert_dir"
    doc = document(tmp_path, pki, sources=[opcua(tmp_path)])
    refused(tmp_path, doc, capsys, field, f"{cert_dir / OPCUA_KEY_FILE} is missing")
    (cert_dir / OPCUA_KEY_FILE).write_bytes(
        keys[1].private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    refused(tmp_path, doc, capsys, field, "is not the private key of the certificate")


# --- storage, and what `run` does with each kind ----------------------------------------------------------


def test_a_data_dir_that_cannot_be_created_stops_validate_and_run(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    in_the_way = tmp_path / "var"
    in_the_way.write_text("not a directory")
    doc = document(tmp_path, pki)
    doc["gateway"]["data_dir"] = str(in_the_way / "data")
    refused(tmp_path, doc, capsys, "gateway.data_dir", f"{in_the_way} is a file, not a directory")
    assert cli.main(["run", "--config", str(tmp_path / "gateway.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"gateway.data_dir: cannot create {in_the_way / 'data'}" in err
    assert "nothing can be collected" in err
    assert "Traceback" not in err


def test_run_logs_a_cloud_side_problem_once_and_goes_on(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    # A missing file: the MQTT transport reports it itself, once, and retries until it is there
    # (tests/integration/test_cloud_file_problems.py): nothing more from `run`, so the log holds one line.
    missing = tmp_path / "gone.pem"
    config = parse_config(document(tmp_path, pki, cert_file=str(missing), sources=[opcua(tmp_path, trust_dir="/x")]))
    with caplog.at_level(logging.INFO, logger="edge_gateway"):
        cli._log_file_problems(config, check_files(config))  # what `run` logs before it starts
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == []
    caplog.clear()
    # An expired certificate: awscrt builds its client with it and only the handshake fails, so `run` says it.
    cert, key = sign(pki, "expired", not_before=NOW - dt.timedelta(days=400), not_after=NOW - dt.timedelta(days=1))
    config = parse_config(
        document(tmp_path, pki, cert_file=str(cert), key_file=str(key), sources=[opcua(tmp_path, trust_dir="/x")])
    )
    with caplog.at_level(logging.INFO, logger="edge_gateway"):
        cli._log_file_problems(config, check_files(config))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert f"{MQTT}.cert_file: {cert}" in errors[0]
    assert "expired on" in errors[0]
    assert "collecting into the buffer and retrying" in errors[0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # the source's own problem: once, that source retries
    assert warnings[0].startswith("source press: sources.0.opcua.security.trust_dir: /x does not exist")
