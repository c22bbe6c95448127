"""Provenance: config epochs by sequence number, per-alias declarations, the cfg field in IoT Core messages,
and the audit recorder's one-entry-per-outcome rule across restarts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge_gateway.buffer.base import Record
from edge_gateway.config.model import GatewayConfig, parse_config
from edge_gateway.gxp.audit import read_entries, verify
from edge_gateway.gxp.provenance import POINTS_PER_PART, Epochs, declarations
from edge_gateway.gxp.recorder import AuditRecorder
from edge_gateway.model import Quality, Reading
from edge_gateway.publish.encode.iotcore import encode_batch


def record(seq: int, source: str = "press") -> Record:
    return Record(seq, Reading(source, f"{source}.x", float(seq), Quality.GOOD, seq * 10**6, seq * 10**6))


def config(tmp_path: Path, *, points: int = 2, poll_ms: int = 100) -> GatewayConfig:
    return parse_config(
        {
            "gateway": {"thing_name": "line1", "data_dir": str(tmp_path / "var")},
            "sources": [
                {
                    "type": "opcua",
                    "name": "press",
                    "endpoint": "opc.tcp://127.0.0.1:4840",
                    "nodes": [{"alias": f"press.n{i}", "node_id": f"ns=2;i={i}"} for i in range(points)],
                },
                {
                    "type": "modbus",
                    "name": "boiler",
                    "host": "127.0.0.1",
                    "port": 5020,
                    "poll_interval_ms": poll_ms,
                    "points": [{"alias": "boiler.t", "address": 2, "data_type": "int16", "scale": 0.1}],
                },
            ],
            "publisher": {
                "mqtt": {"endpoint": "127.0.0.1", "ca_file": "ca.pem", "cert_file": "c.pem", "key_file": "k.pem"},
                "destinations": [{"type": "iotcore", "name": "cloud"}],
            },
        }
    )


def test_epochs_split_batches_where_the_configuration_changed_and_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "epochs.json"
    epochs = Epochs(path)
    assert epochs.split([record(1), record(2)]) == [(None, [record(1), record(2)])]
    assert epochs.start(1, "sha256:a")
    assert not epochs.start(5, "sha256:a")  # the same configuration: no new epoch
    assert epochs.start(4, "sha256:b")
    assert epochs.start(7, "sha256:c")
    records = [record(s) for s in range(2, 9)]
    parts = Epochs(path).split(records)  # reopened: persisted
    assert [(cfg, [r.seq for r in rs]) for cfg, rs in parts] == [
        ("sha256:a", [2, 3]),
        ("sha256:b", [4, 5, 6]),
        ("sha256:c", [7, 8]),
    ]
    assert epochs.hash_for(3) == "sha256:a"
    epochs.prune(5)  # nothing below 5 is left: epoch a is gone, b still covers 5 and 6
    assert epochs.hash_for(5) == "sha256:b"
    assert json.loads(path.read_text()) == [[4, "sha256:b"], [7, "sha256:c"]]
    assert epochs.start(9, "sha256:d")
    assert epochs.start(9, "sha256:e")  # nothing appended under d: it is replaced, not kept empty
    assert json.loads(path.read_text())[-1] == [9, "sha256:e"]
    assert not epochs.start(9, "sha256:c")  # back to c before anything came under e: c resumes
    assert json.loads(path.read_text()) == [[4, "sha256:b"], [7, "sha256:c"]]


def test_declarations_map_each_alias_to_its_plc_address_in_parts(tmp_path: Path) -> None:
    cfg = config(tmp_path, points=POINTS_PER_PART + 3)
    decls = declarations(cfg, "sha256:x", 42)
    press = [d for d in decls if d["source"] == "press"]
    assert [(d["part"], d["parts"], len(d["points"])) for d in press] == [(1, 2, POINTS_PER_PART), (2, 2, 3)]
    assert press[0]["endpoint"] == {"endpoint": "opc.tcp://127.0.0.1:4840"}
    assert press[0]["points"]["press.n0"] == {"node_id": "ns=2;i=0"}
    boiler = next(d for d in decls if d["source"] == "boiler")
    assert boiler["type"] == "modbus"
    assert boiler["endpoint"]["host"] == "127.0.0.1"
    assert boiler["endpoint"]["port"] == 5020
    identity = boiler["points"]["boiler.t"]
    assert identity["address"] == 2
    assert identity["data_type"] == "int16"
    assert identity["scale"] == 0.1
    assert all(d["config_hash"] == "sha256:x" and d["from_seq"] == 42 for d in decls)
    assert all(len(json.dumps(d)) < 100_000 for d in decls)


def test_iot_core_messages_carry_the_configuration_hash() -> None:
    records = [record(s) for s in range(1, 4)]
    (plain,) = encode_batch(records, thing="line1", topic_template="dt/{thing}/{source}", max_bytes=1000)
    (tagged,) = encode_batch(
        records, thing="line1", topic_template="dt/{thing}/{source}", max_bytes=1000, cfg="sha256:ab"
    )
    assert "cfg" not in json.loads(plain.payload)
    doc: dict[str, Any] = json.loads(tagged.payload)
    assert doc["cfg"] == "sha256:ab"
    assert doc["n"] == 3
    many = [record(s) for s in range(1, 200)]
    tight = encode_batch(many, thing="line1", topic_template="t", max_bytes=1000, cfg="sha256:ab")
    assert len(tight) > 1
    assert all(len(m.payload) <= 1000 and json.loads(m.payload)["cfg"] == "sha256:ab" for m in tight)
    assert sum(m.points for m in tight) == 199


async def test_one_audit_entry_per_outcome_also_after_a_restart(tmp_path: Path) -> None:
    async def publish(_topic: str, _payload: bytes) -> int:
        return 0

    before, after = config(tmp_path), config(tmp_path, poll_ms=250)

    async def outcome(rec: AuditRecorder, event: str, *configs: GatewayConfig, version: int, n: int) -> None:
        await rec.config_event(
            event,
            before=configs[0],
            after=configs[1],
            shadow_version=version,
            client_token=f"gw-{n}",
            reason="r" if event == "config.rolled_back" else None,
        )

    recorder = AuditRecorder(before, publish)
    await recorder.started(before, shadow_version=None)
    await outcome(recorder, "config.applied", before, after, version=7, n=1)
    await outcome(recorder, "config.applied", before, after, version=7, n=2)
    recorder.close()
    again = AuditRecorder(before, publish)  # a restart that judges the same change again
    await outcome(again, "config.applied", before, after, version=7, n=3)
    await outcome(again, "config.rolled_back", after, before, version=8, n=4)
    await again.started(after, shadow_version=7)  # the applied config is what was recorded: no file change
    again.close()
    directory = tmp_path / "var" / "audit"
    events = [(e.event, e.fields.get("shadow_version"), e.fields.get("source")) for e in read_entries(directory)]
    assert events == [
        ("config.applied", None, "file"),
        ("gateway.started", None, None),
        ("config.applied", 7, "shadow"),
        ("config.rolled_back", 8, "shadow"),
        ("gateway.started", 7, None),
    ]
    applied = next(e for e in read_entries(directory) if e.fields.get("shadow_version") == 7)
    assert applied.fields["changed"] == ["sources.1.poll_interval_ms"]
    assert applied.fields["client_token"] == f"gw-{1}"
    assert verify(directory).ok
