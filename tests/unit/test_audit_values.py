"""Old and new values of a configuration change, offending values of a rejection, secrets masked
(gxp/audit_values.py), and the recorder putting them in the trail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_gateway.config.model import parse_config
from edge_gateway.gxp.audit import read_entries
from edge_gateway.gxp.audit_values import (
    MASK,
    MAX_TOTAL_BYTES,
    MAX_VALUE_BYTES,
    MAX_VALUES,
    cap,
    changed_values,
    mask,
    offending_values,
)
from edge_gateway.gxp.recorder import AuditRecorder
from edge_gateway.util.jsondoc import canonical
from tests.unit.test_audit_recorder import document, publish

SECURED = {
    "type": "opcua",
    "name": "oven",
    "endpoint": "opc.tcp://127.0.0.1:4841",
    "security": {"mode": "SignAndEncrypt", "cert_dir": "/var/lib/gw/pki-oven", "trust_dir": "/etc/gw/trusted"},
    "auth": {"username": "plc-reader", "password_file": "/etc/gw/oven.pw"},
}


def test_changed_values_give_old_and_new_per_changed_path() -> None:
    before = {"sources": [{"name": "boiler", "poll_interval_ms": 50}], "status": {"interval_s": 10}}
    after = {"sources": [{"name": "boiler", "poll_interval_ms": 500}, {"name": "pump"}], "status": {"interval_s": 10}}
    assert changed_values(before, after) == [
        {"path": "sources.0.poll_interval_ms", "old": 50, "new": 500},
        {"path": "sources.1", "old": None, "new": {"name": "pump"}},
    ]


def test_credentials_and_private_key_locations_are_masked_also_inside_whole_objects() -> None:
    before: dict[str, Any] = {
        "publisher": {"mqtt": {"key_file": "/k/old.key", "cert_file": "/c/old.pem", "proxy": {"username": "u1"}}},
        "sources": [],
    }
    after: dict[str, Any] = {
        "publisher": {"mqtt": {"key_file": "/k/new.key", "cert_file": "/c/new.pem", "proxy": {"username": "u2"}}},
        "sources": [SECURED],
    }
    values = {v["path"]: (v["old"], v["new"]) for v in changed_values(before, after)}
    assert values["publisher.mqtt.key_file"] == (MASK, MASK)
    assert values["publisher.mqtt.proxy.username"] == (MASK, MASK)
    assert values["publisher.mqtt.cert_file"] == ("/c/old.pem", "/c/new.pem")  # a certificate is public
    added = values["sources.0"][1]
    assert added["auth"] == MASK
    assert added["security"] == {"mode": "SignAndEncrypt", "cert_dir": MASK, "trust_dir": "/etc/gw/trusted"}
    assert added["endpoint"] == SECURED["endpoint"]
    text = repr(values)
    for secret in ("plc-reader", "/etc/gw/oven.pw", "/k/old.key", "/k/new.key", "pki-oven", "u1", "u2"):
        assert secret not in text
    assert mask(None, ["password_file"]) is None  # whether a credential is set is not secret
    assert mask({"password_env": "PLC_PW", "token": "t", "client_secret": "s"}) == {
        "password_env": MASK,
        "token": MASK,
        "client_secret": MASK,
    }


def test_offending_values_are_found_in_the_desired_document_through_union_tags() -> None:
    desired = {"sources": [{"type": "opcua", "name": "press"}, {"type": "modbus", "name": "b", "port": 70000}]}
    errors = [
        {"path": "sources.1.modbus.port", "message": "too big"},
        {"path": "sources.1.modbus.host", "message": "Field required"},
        {"path": "publisher.mqtt.key_file", "message": "local only"},
    ]
    assert offending_values(desired, errors) == [
        {"path": "sources.1.modbus.port", "value": 70000},
        {"path": "sources.1.modbus.host", "missing": True},
        {"path": "publisher.mqtt.key_file", "missing": True},
    ]
    hostile = {"publisher": {"mqtt": {"key_file": "/tmp/x.key"}}, "note": "x" * (MAX_VALUE_BYTES * 2)}
    found = offending_values(
        hostile, [{"path": "publisher.mqtt.key_file", "message": "m"}, {"path": "note", "message": "m"}]
    )
    assert found[0] == {"path": "publisher.mqtt.key_file", "value": MASK}
    assert found[1]["value"]["omitted"] == "too large"
    assert found[1]["value"]["bytes"] > MAX_VALUE_BYTES


async def test_the_recorder_writes_values_and_offending_values_into_the_trail(tmp_path: Path) -> None:
    config = parse_config(document(tmp_path))
    changed = parse_config(document(tmp_path) | {"status": {"interval_s": 30}})
    recorder = AuditRecorder(config, publish)
    try:
        assert await recorder.config_event(
            "config.applied", before=config, after=changed, shadow_version=3, client_token=None
        )
        errors = [{"path": "status.interval_s", "message": "too small"}]
        assert await recorder.config_event(
            "config.rejected",
            before=changed,
            after=None,
            shadow_version=4,
            client_token=None,
            desired_hash="sha256:x",
            changed=["status.interval_s"],
            values=changed_values({"status": {"interval_s": 30}}, {"status": {"interval_s": 0.001}}),
            reasons=errors,
            offending=offending_values({"status": {"interval_s": 0.001}}, errors),
        )
    finally:
        recorder.close()
    applied, rejected = (e.fields for e in read_entries(config.audit_path))
    assert {"path": "status.interval_s", "old": 2.0, "new": 30.0} in applied["values"]
    assert applied["changed"] == [v["path"] for v in applied["values"]]
    assert rejected["offending"] == [{"path": "status.interval_s", "value": 0.001}]
    assert rejected["values"] == [{"path": "status.interval_s", "old": 30, "new": 0.001}]


def test_an_entry_lists_a_bounded_number_of_values_and_counts_the_rest() -> None:
    small = [{"path": f"p.{i}", "old": i, "new": i + 1} for i in range(MAX_VALUES + 50)]
    assert cap(small) == (small[:MAX_VALUES], 50)
    big = [{"path": f"p.{i}", "old": None, "new": "x" * MAX_VALUE_BYTES} for i in range(60)]
    listed, omitted = cap(big)
    assert 0 < len(listed) < 60
    assert len(listed) + omitted == 60
    assert sum(len(canonical(v)) for v in listed) <= MAX_TOTAL_BYTES
    assert cap(small[:3]) == (small[:3], 0)
