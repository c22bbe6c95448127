"""IQ collection and comparison against real files: this installation, a config, generated certificates."""

from __future__ import annotations

import datetime as dt
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_gateway.config.diff import config_hash
from edge_gateway.config.model import load_config
from edge_gateway.control.desired import AppliedConfig, effective_config
from edge_gateway.gxp.iq import IqItem, SpecError, collect, compare, fingerprint, init_spec

NOW = dt.datetime.now(dt.UTC)


def make_cert(path: Path, cn: str, *, not_before: dt.datetime, not_after: dt.datetime) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def valid_cert(path: Path, cn: str) -> x509.Certificate:
    return make_cert(path, cn, not_before=NOW - dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=365))


def expired_cert(path: Path, cn: str) -> x509.Certificate:
    return make_cert(path, cn, not_before=NOW - dt.timedelta(days=400), not_after=NOW - dt.timedelta(days=35))


def config_doc(directory: Path, poll_ms: int = 100) -> dict[str, Any]:
    return {
        "gateway": {"thing_name": "line-7", "data_dir": "var"},
        "buffer": {"max_bytes": 64 << 20, "segment_bytes": 1 << 20},
        "sources": [
            {
                "type": "modbus",
                "name": "boiler",
                "host": "127.0.0.1",
                "port": 5020,
                "poll_interval_ms": poll_ms,
                "points": [{"alias": "boiler.counter", "address": 0, "data_type": "uint32"}],
            }
        ],
        "publisher": {
            "mqtt": {
                "endpoint": "abc-ats.iot.eu-west-1.amazonaws.com",
                "cert_file": str(directory / "device.pem"),
                "key_file": str(directory / "device.key"),
                "ca_file": str(directory / "ca.pem"),
            },
            "destinations": [{"type": "iotcore", "name": "cloud"}],
        },
    }


@pytest.fixture
def installation(tmp_path: Path) -> Path:
    """A config file with its certificates: the installation as a deployment left it."""
    valid_cert(tmp_path / "device.pem", "line-7")
    valid_cert(tmp_path / "ca.pem", "Test Root CA")
    (tmp_path / "device.key").write_text("not read by IQ")
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config_doc(tmp_path)))
    return path


def signed(items: list[IqItem]) -> dict[str, Any]:
    """The SPEC as a person would keep it: through YAML and back."""
    loaded: dict[str, Any] = yaml.safe_load(yaml.safe_dump(init_spec(items), sort_keys=False))
    return loaded


def failures(spec: dict[str, Any], items: list[IqItem]) -> dict[str, str]:
    return {r.key: r.reason for r in compare(spec, items).deviations}


def test_collect_measures_this_installation(installation: Path) -> None:
    items = {i.key: i for i in collect(installation)}
    assert items["python.version"].value == platform.python_version()
    assert items["os.architecture"].value == platform.machine()
    assert items["package.asyncua"].value == metadata.version("asyncua")
    assert str(items["package.asyncua.record"].value).startswith("sha256:")
    assert items["package.pydantic"].value == metadata.version("pydantic")
    assert str(items["gateway.code_sha256"].value).startswith("sha256:")
    config = load_config(installation)
    assert items["config.hash"].value == config_hash(config)
    assert items["config.shadow_version"].value == 0
    assert items["buffer.path"].value == str((installation.parent / "var" / "buffer").resolve())
    assert items["buffer.max_bytes"].value == 64 << 20
    assert items["buffer.when_full"].value == "drop_oldest"
    device = x509.load_pem_x509_certificate((installation.parent / "device.pem").read_bytes())
    assert items["certificate.device"].value == fingerprint(device)
    assert items["certificate.device"].info["certificates"][0]["subject"] == "CN=line-7"
    assert items["certificate.device"].problem is None
    assert items["certificate.ca"].info["certificates"][0]["subject"] == "CN=Test Root CA"
    assert items["clock.state"].value in {"synchronised", "unsynchronised", "unknown"}
    assert items["greengrass.component_version"].value is None
    assert "device.key" not in str([i.info for i in items.values()])


def test_a_spec_made_by_init_passes(installation: Path) -> None:
    items = collect(installation)
    report = compare(signed(items), collect(installation))
    assert report.passed, report.deviations
    assert len(report.results) == len(items)
    assert report.thing_name == "line-7"


def test_one_package_version_changed_in_the_spec_fails_on_exactly_that_item(installation: Path) -> None:
    items = collect(installation)
    spec = signed(items)
    spec["items"]["package.pydantic"] = {"equals": "2.0.0"}
    assert failures(spec, items) == {"package.pydantic": f"expected '2.0.0', found '{metadata.version('pydantic')}'"}


def test_a_changed_config_fails_on_exactly_the_config_hash(installation: Path) -> None:
    spec = signed(collect(installation))
    installation.write_text(yaml.safe_dump(config_doc(installation.parent, poll_ms=250)))
    got = failures(spec, collect(installation))
    assert list(got) == ["config.hash"]
    assert got["config.hash"].startswith("expected 'sha256:")


def test_the_saved_shadow_config_is_part_of_the_effective_config(installation: Path) -> None:
    local = load_config(installation)
    desired = {"status": {"interval_s": 7.0}}
    effective = effective_config(local, desired)
    AppliedConfig(5, desired, config_hash(effective)).save(local.shadow_state_path)
    items = {i.key: i.value for i in collect(installation)}
    assert items["config.shadow_version"] == 5
    assert items["config.hash"] == config_hash(effective) != config_hash(local)


def test_an_expired_certificate_fails_on_exactly_that_item(installation: Path) -> None:
    spec = signed(collect(installation))
    expired_cert(installation.parent / "device.pem", "line-7")
    got = failures(spec, collect(installation))
    assert list(got) == ["certificate.device"]
    assert "CN=line-7 expired on" in got["certificate.device"]
    # Expired even when the SPEC names exactly that certificate (init on a device with an expired one).
    items = collect(installation)
    got = failures(signed(items), items)
    assert list(got) == ["certificate.device"]
    assert got["certificate.device"].startswith("CN=line-7 expired on")


def test_spec_kinds_version_range_and_present(installation: Path) -> None:
    items = collect(installation)
    spec = signed(items)
    major_minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    spec["items"]["python.version"] = {"version": f"=={major_minor}.*"}
    spec["items"]["package.asyncua"] = {"version": ">=2.0,<3"}
    spec["items"]["os.release"] = {"present": True}
    assert failures(spec, items) == {}
    spec["items"]["package.asyncua"] = {"version": ">=3"}
    spec["items"]["greengrass.nucleus_version"] = {"present": True}  # not under Greengrass here
    assert failures(spec, items) == {
        "package.asyncua": f"{metadata.version('asyncua')} is not in >=3",
        "greengrass.nucleus_version": "not present",
    }


def test_unspecified_and_missing_items_are_deviations(installation: Path) -> None:
    items = collect(installation)
    spec = signed(items)
    del spec["items"]["os.release"]
    spec["items"]["package.not-installed"] = {"equals": "1.0"}
    assert failures(spec, items) == {
        "os.release": "not in the specification",
        "package.not-installed": "missing: not found",
    }


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"equal": "1"}, "must be one of"),
        ({"version": "~~1"}, "is not a version range"),
        ({"present": False}, "present must be true"),
    ],
)
def test_a_malformed_spec_names_the_item(installation: Path, rule: dict[str, Any], message: str) -> None:
    items = collect(installation)
    spec = signed(items)
    spec["items"]["os.release"] = rule
    with pytest.raises(SpecError, match=rf"spec item 'os.release': .*{message}"):
        compare(spec, items)
    with pytest.raises(SpecError, match="spec_version"):
        compare({"items": {}}, items)


def test_trust_list_value_is_the_set_of_fingerprints_and_an_expired_entry_is_a_problem(tmp_path: Path) -> None:
    trust = tmp_path / "trusted"
    trust.mkdir()
    valid_cert(trust / "plc1.der.pem", "PLC 1")
    valid_cert(trust / "plc2.pem", "PLC 2")
    (trust / "client_key.pem").write_text("a key, skipped")
    first = {i.key: i for i in collect(None, trust_lists={"opcua": trust})}["trust_list.opcua"]
    assert first.info["count"] == 2
    assert first.problem is None
    (trust / "plc2.pem").rename(trust / "zz-plc2.pem")  # same set, other names: same value
    assert {i.key: i for i in collect(None, trust_lists={"opcua": trust})}["trust_list.opcua"].value == first.value
    expired_cert(trust / "plc3.pem", "PLC 3")
    third = {i.key: i for i in collect(None, trust_lists={"opcua": trust})}["trust_list.opcua"]
    assert third.value != first.value
    assert third.problem is not None
    assert "plc3.pem: CN=PLC 3 expired on" in third.problem


def test_greengrass_component_version_is_the_venv_the_recipe_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = tmp_path / "work" / "venv-1.4.2"
    venv.mkdir(parents=True)
    monkeypatch.setattr(sys, "prefix", str(venv))
    env = {"EDGE_GATEWAY_WORK_DIR": str(tmp_path / "work"), "GGC_VERSION": "2.14.3"}
    items = {i.key: i.value for i in collect(None, env=env)}
    assert items["greengrass.component_version"] == "1.4.2"
    assert items["greengrass.nucleus_version"] == "2.14.3"
    env["EDGE_GATEWAY_WORK_DIR"] = str(tmp_path / "elsewhere")
    assert {i.key: i.value for i in collect(None, env=env)}["greengrass.component_version"] is None
