"""OPC UA settings (validation messages name the field), the trust-list decision and the password sources,
without a server."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from asyncua.crypto import cert_gen
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import ValidationError

from edge_gateway.sources.opcua.config import OpcUaAuth, OpcUaSecurity, OpcUaSource, split_browse_path
from edge_gateway.sources.opcua.nodes import build_items, chunks
from edge_gateway.sources.opcua.security import (
    SecuritySetupError,
    check_server_certificate,
    ensure_client_certificate,
    read_password,
)


def doc(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "opcua",
        "name": "press",
        "endpoint": "opc.tcp://127.0.0.1:4840",
        "nodes": [{"alias": "a", "node_id": "ns=2;s=A"}],
    }
    return base | fields


def errors(**fields: Any) -> str:
    with pytest.raises(ValidationError) as info:
        OpcUaSource.model_validate(doc(**fields))
    return str(info.value)


def test_the_original_form_stays_valid_with_secure_defaults() -> None:
    source = OpcUaSource.model_validate(doc(publishing_interval_ms=250))
    assert source.security.mode == "None"
    assert source.security.trust_on_first_use is False
    assert source.timestamp == "source"
    assert [i.alias for i in build_items(source)] == ["a"]


def test_groups_nodes_and_per_node_settings() -> None:
    source = OpcUaSource.model_validate(
        doc(
            sampling_interval_ms=100,
            deadband_type="absolute",
            deadband_value=0.5,
            groups=[
                {
                    "name": "slow",
                    "mode": "poll",
                    "poll_interval_ms": 5000,
                    "nodes": [{"alias": "b", "browse_path": "2:Line1/2:B", "deadband_type": "percent"}],
                }
            ],
        )
    )
    a, b = build_items(source)
    assert (a.handle, a.group.poll_interval_ms, a.sampling_interval_ms, a.deadband_type, a.deadband_value) == (
        1,
        None,
        100,
        "absolute",
        0.5,
    )
    assert (b.handle, b.group.name, b.group.poll_interval_ms, b.deadband_type, b.parsed) == (
        2,
        "slow",
        5000,
        "percent",
        None,
    )


def test_a_source_of_groups_only_needs_no_nodes_key() -> None:
    base = doc()
    del base["nodes"]
    source = OpcUaSource.model_validate(base | {"groups": [{"name": "g", "nodes": [{"alias": "a", "node_id": "i=1"}]}]})
    assert source.nodes == []
    assert [i.group.name for i in build_items(source)] == ["g"]
    with pytest.raises(ValidationError, match=r"nodes\n  Field required"):
        OpcUaSource.model_validate(base)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"nodes": []}, "at least one node"),
        ({"nodes": [{"alias": "a"}]}, "set exactly one of node_id and browse_path"),
        ({"nodes": [{"alias": "a", "node_id": "i=1", "browse_path": "0:A"}]}, "set exactly one of node_id"),
        ({"nodes": [{"alias": "a", "browse_path": "Line1/Counter"}]}, "browse_path element 'Line1/Counter' must be"),
        (
            {"nodes": [{"alias": "a", "node_id": "i=1", "deadband_type": "percent", "deadband_value": 150}]},
            "deadband_value 150.0 is a percentage",
        ),
        ({"nodes": [{"alias": "a", "node_id": "i=1"}, {"alias": "a", "node_id": "i=2"}]}, "duplicate alias(s): a"),
        ({"security": {"mode": "Encrypt"}}, "security.mode"),
        ({"security": {"mode": "Sign", "policy": "Basic128Rsa15"}}, "security.policy"),
        ({"auth": {"username": "u", "password_env": "PW"}}, "auth needs security.mode Sign or SignAndEncrypt"),
        (
            {"security": {"mode": "Sign"}, "auth": {"username": "u"}},
            "set exactly one of password_file and password_env",
        ),
        ({"timestamp": "plc"}, "timestamp"),
        ({"keepalive_s": 0}, "keepalive_s"),
        ({"password": "x"}, "password"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(fields: dict[str, Any], message: str) -> None:
    assert message in errors(**fields)


def test_browse_path_elements_split_only_before_an_index_or_a_namespace_uri() -> None:
    assert split_browse_path("2:Line1/2:Counter") == ["2:Line1", "2:Counter"]
    assert split_browse_path("nsu=http://x.org/UA/;Line1/0:A/B") == ["nsu=http://x.org/UA/;Line1", "0:A/B"]


def test_chunks_stay_within_the_limit() -> None:
    assert [list(c) for c in chunks(list(range(7)), 3)] == [[0, 1, 2], [3, 4, 5], [6]]


def test_the_password_comes_from_a_file_or_the_environment_and_errors_do_not_show_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2\nignored\n")
    assert read_password(OpcUaAuth(username="u", password_file=secret)) == "hunter2"
    monkeypatch.setenv("OPCUA_PW", "from-env")
    from_env = OpcUaAuth(username="u", password_env="OPCUA_PW")  # noqa: S106 - a variable's name
    assert read_password(from_env) == "from-env"
    monkeypatch.delenv("OPCUA_PW")
    with pytest.raises(SecuritySetupError, match="OPCUA_PW is not set"):
        read_password(from_env)
    with pytest.raises(SecuritySetupError, match="cannot read"):
        read_password(OpcUaAuth(username="u", password_file=tmp_path / "missing"))


def server_cert(directory: Path, uri: str) -> bytes:
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / "k.pem", directory / "c.der"
    asyncio.run(cert_gen.setup_self_signed_certificate(key, cert, uri, "plc", [ExtendedKeyUsageOID.SERVER_AUTH], {}))
    return cert.read_bytes()


def test_trust_list_decisions(tmp_path: Path) -> None:
    plc = server_cert(tmp_path / "plc", "urn:plc")
    impostor = server_cert(tmp_path / "impostor", "urn:plc")
    security = OpcUaSecurity(mode="SignAndEncrypt", cert_dir=tmp_path / "pki")
    with pytest.raises(SecuritySetupError, match="it is not in the trust list"):
        check_server_certificate(plc, security, "opc.tcp://plc:4840")
    assert list((tmp_path / "pki" / "rejected").iterdir())

    tofu = OpcUaSecurity(mode="SignAndEncrypt", cert_dir=tmp_path / "pki", trust_on_first_use=True)
    check_server_certificate(plc, tofu, "opc.tcp://plc:4840", server_uri="urn:plc")  # trusted and saved
    check_server_certificate(plc, security, "opc.tcp://plc:4840")  # now in the list, without first-use trust
    with pytest.raises(SecuritySetupError, match="a different certificate is already trusted"):
        check_server_certificate(impostor, tofu, "opc.tcp://plc:4840", server_uri="urn:plc")

    # PEM files in the trust list count too.
    pem_dir = tmp_path / "pem"
    pem_dir.mkdir()
    from cryptography import x509  # noqa: PLC0415 - only this test converts

    (pem_dir / "plc.pem").write_bytes(x509.load_der_x509_certificate(impostor).public_bytes(Encoding.PEM))
    check_server_certificate(impostor, OpcUaSecurity(mode="Sign", cert_dir=tmp_path / "pki", trust_dir=pem_dir), "x")


def test_first_use_trust_pins_only_a_certificate_naming_the_servers_application_uri(tmp_path: Path) -> None:
    tofu = OpcUaSecurity(mode="SignAndEncrypt", cert_dir=tmp_path / "pki", trust_on_first_use=True)
    plc = server_cert(tmp_path / "plc", "urn:plc")
    with pytest.raises(SecuritySetupError, match=r"names urn:plc, not the application URI the server announces"):
        check_server_certificate(plc, tofu, "opc.tcp://plc:4840", server_uri="urn:rogue")
    with pytest.raises(SecuritySetupError, match=r"not the application URI the server announces \(none\)"):
        check_server_certificate(plc, tofu, "opc.tcp://plc:4840")
    assert not (tmp_path / "pki" / "trusted").exists()  # nothing pinned
    # A certificate with no application URI at all.
    from cryptography import x509  # noqa: PLC0415 - only this test builds a certificate by hand
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "plc")])
    bare = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2035, 1, 1, tzinfo=dt.UTC))
        .sign(key, hashes.SHA256())
        .public_bytes(Encoding.DER)
    )
    with pytest.raises(SecuritySetupError, match="names no application URI"):
        check_server_certificate(bare, tofu, "opc.tcp://plc:4840", server_uri="urn:plc")
    check_server_certificate(plc, tofu, "opc.tcp://plc:4840", server_uri="urn:plc")  # the matching one is pinned
    assert len(list((tmp_path / "pki" / "trusted").iterdir())) == 1


def test_the_client_certificate_is_created_once_and_kept(tmp_path: Path) -> None:
    security = OpcUaSecurity(mode="Sign", cert_dir=tmp_path / "pki", application_uri="urn:gw:one")
    first = asyncio.run(ensure_client_certificate(security))
    der = first.cert_file.read_bytes()
    assert (first.cert_file.parent.stat().st_mode & 0o777) == 0o700
    # Another application URI in the config later: the kept certificate (and its URI) wins.
    again = asyncio.run(
        ensure_client_certificate(OpcUaSecurity(mode="Sign", cert_dir=tmp_path / "pki", application_uri="urn:gw:two"))
    )
    assert again.cert_file.read_bytes() == der
    assert again.application_uri == "urn:gw:one"
    cert = x509_load(der)
    assert cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=300)


def x509_load(der: bytes) -> Any:
    from cryptography import x509  # noqa: PLC0415

    return x509.load_der_x509_certificate(der)
