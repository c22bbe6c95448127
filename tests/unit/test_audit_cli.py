"""``audit verify`` and ``audit show`` through their command functions, on real trail directories."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from edge_gateway.gxp.audit import AuditTrail, file_name
from edge_gateway.gxp.cli import add_audit_arguments, run_audit


def audit(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="edge-gateway audit")
    add_audit_arguments(parser)
    return run_audit(parser.parse_args(argv))


@pytest.fixture
def trail_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "var" / "audit"
    with AuditTrail(directory, max_file_bytes=4096, max_files=None) as trail:
        trail.append("gateway.started", version="1.0", pid=1)
        for v in range(1, 25):
            trail.append("config.applied", source="shadow", shadow_version=v, client_token=f"tok-{v}")
    return directory


def test_verify_ok(trail_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert audit("verify", "--dir", str(trail_dir)) == 0
    out = capsys.readouterr().out
    assert "OK, 25 entries in" in out
    assert "(seq 1..25)" in out


def test_verify_names_the_first_broken_entry(trail_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = trail_dir / file_name(1)
    data = path.read_bytes()
    at = data.index(b'"shadow_version":3')
    path.write_bytes(data[:at] + b'"shadow_version":4' + data[at + len(b'"shadow_version":3') :])
    assert audit("verify", "--dir", str(trail_dir)) == 1
    out = capsys.readouterr().out
    assert f"BROKEN at entry seq 4 at {file_name(1)} line 4: its hash does not match its content" in out
    assert "3 entries before it verify" in out
    assert audit("verify", "--dir", str(trail_dir), "--json") == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["broken"]["seq"] == 4
    assert doc["broken"]["line"] == 4


def test_verify_reports_midway_start_and_torn_tail(trail_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (trail_dir / file_name(1)).unlink()  # archived
    newest = max(trail_dir.iterdir())
    with newest.open("ab") as f:
        f.write(b'{"clock":"synch')
    assert audit("verify", "--dir", str(trail_dir)) == 0
    out = capsys.readouterr().out
    assert "the chain starts mid-way at seq" in out
    assert "is incomplete (15 bytes): an append was interrupted" in out


def test_show_text_json_since_and_config(trail_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert audit("show", "--dir", str(trail_dir)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 25
    assert "gateway.started" in lines[0]
    assert 'client_token="tok-24"' in lines[-1]
    assert audit("show", "--dir", str(trail_dir), "--json") == 0
    docs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [d["seq"] for d in docs] == list(range(1, 26))
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    cut = (epoch + timedelta(microseconds=docs[20]["time_ns"] // 1000)).replace(tzinfo=None)  # naive = UTC
    assert audit("show", "--dir", str(trail_dir), "--json", "--since", cut.isoformat()) == 0
    since = [json.loads(x)["seq"] for x in capsys.readouterr().out.splitlines()]
    assert since[-1] == 25
    assert since == list(range(21, 26))
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "gateway": {"thing_name": "t", "data_dir": "var"},
                "sources": [
                    {
                        "type": "modbus",
                        "name": "m",
                        "host": "127.0.0.1",
                        "port": 502,
                        "points": [{"alias": "m.a", "address": 0, "data_type": "uint16"}],
                    }
                ],
                "publisher": {
                    "mqtt": {"endpoint": "e", "cert_file": "c.pem", "key_file": "k.pem"},
                    "destinations": [{"type": "iotcore", "name": "cloud"}],
                },
            }
        )
    )
    assert audit("verify", "--config", str(config)) == 0
    assert "OK, 25 entries" in capsys.readouterr().out


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert audit("verify") == 2
    assert "--dir DIR or --config FILE" in capsys.readouterr().err
    assert audit("show", "--dir", str(tmp_path), "--since", "yesterday") == 2
    assert "use ISO 8601" in capsys.readouterr().err
    assert audit("verify", "--dir", str(tmp_path / "nothing")) == 1
    assert "no audit trail at" in capsys.readouterr().err
