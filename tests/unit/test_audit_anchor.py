"""The trail checked at start against what the cloud acknowledged (gxp/audit_anchor.py, recorder.py), the
trail failing closed when its file is replaced under the writer, and both as heartbeat problems."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from edge_gateway.config.model import GatewayConfig, parse_config
from edge_gateway.gxp.audit import AuditError, AuditTrail, read_entries, verify
from edge_gateway.gxp.audit_anchor import ANCHOR_FILE, load_anchor
from edge_gateway.gxp.recorder import AuditRecorder
from edge_gateway.observe.health import summary
from tests.unit.test_audit_recorder import document, publish


async def acknowledged(config: GatewayConfig, *events: str) -> list[dict[str, Any]]:
    """Append ``events``, let the audit publisher deliver them all (PUBACK 0), close; the entries."""
    recorder = AuditRecorder(config, publish)
    for event in events:
        assert await recorder.append(event, n=1)
    task = asyncio.get_running_loop().create_task(recorder.publisher.run())
    head = (recorder.trail.last_seq, recorder.trail.last_hash)
    try:
        async with asyncio.timeout(5):  # acknowledged, and the anchor saved (after the PUBACK)
            while load_anchor(config.gateway.data_dir / ANCHOR_FILE) != head:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        recorder.close()
    return [e.as_dict() for e in read_entries(config.audit_path)]


def reopen(config: GatewayConfig) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Open the trail as the gateway does at start: (the discontinuity found, the entries after)."""
    recorder = AuditRecorder(config, publish)
    found = recorder.discontinuity
    recorder.close()
    return found, [e.as_dict() for e in read_entries(config.audit_path)]


@pytest.fixture
def config(tmp_path: Path) -> GatewayConfig:
    return parse_config(document(tmp_path))


async def test_an_intact_trail_passes_and_the_anchor_is_kept_outside_the_trail(config: GatewayConfig) -> None:
    stored = await acknowledged(config, "gateway.started", "gateway.stopped")
    anchor = json.loads((config.gateway.data_dir / ANCHOR_FILE).read_text())
    assert anchor == {"seq": stored[-1]["seq"], "hash": stored[-1]["hash"]}
    assert not (config.gateway.data_dir / ANCHOR_FILE).is_relative_to(config.audit_path)
    found, after = reopen(config)
    assert found is None
    assert after == stored


async def test_a_truncated_trail_is_recorded_as_a_discontinuity_once(config: GatewayConfig) -> None:
    stored = await acknowledged(config, "gateway.started", "gateway.stopped", "gateway.started")
    path = next(config.audit_path.glob("audit-*.jsonl"))
    path.write_bytes(path.read_bytes().splitlines(keepends=True)[0])  # keeps seq 1 only
    found, after = reopen(config)
    assert found is not None
    assert found["expected"] == {"seq": 3, "hash": stored[2]["hash"]}
    assert found["found"] is None
    assert "the trail ends at seq 1" in found["reason"]
    assert [e["event"] for e in after] == ["gateway.started", "audit.discontinuity"]
    assert after[1]["fields"]["expected"] == found["expected"]
    assert verify(config.audit_path).ok  # the discontinuity entry continues the chain that is there
    again, _ = reopen(config)  # recorded once: the next start checks against the entry before it
    assert again is None
    recorder = AuditRecorder(config, publish)
    assert recorder.publisher.acked_seq == 1  # the discontinuity entry itself is published next
    recorder.close()


async def test_a_rewritten_trail_is_a_discontinuity_with_what_was_found(config: GatewayConfig) -> None:
    stored = await acknowledged(config, "gateway.started", "gateway.stopped")
    for path in config.audit_path.glob("audit-*.jsonl"):
        path.unlink()
    with AuditTrail(config.audit_path) as forged:  # a consistent chain, hashes recomputed
        forged.append("gateway.started", n=2)
        forged.append("gateway.stopped", n=2)
    found, after = reopen(config)
    assert found is not None
    assert found["found"] == {"seq": 2, "hash": after[1]["hash"]}
    assert found["expected"]["hash"] == stored[1]["hash"] != after[1]["hash"]
    assert "another hash" in found["reason"]
    assert after[-1]["event"] == "audit.discontinuity"


async def test_a_wiped_trail_directory_is_caught_by_the_anchor_outside_it(config: GatewayConfig) -> None:
    stored = await acknowledged(config, "gateway.started")
    shutil.rmtree(config.audit_path)  # the trail and published.json with it
    found, after = reopen(config)
    assert found is not None
    assert found["expected"] == {"seq": 1, "hash": stored[0]["hash"]}
    assert [(e["seq"], e["event"]) for e in after] == [(1, "audit.discontinuity")]


async def test_the_trail_fails_closed_when_its_file_is_replaced_under_the_writer(config: GatewayConfig) -> None:
    recorder = AuditRecorder(config, publish)
    try:
        assert await recorder.append("gateway.started", n=1)
        await recorder.check_writable()
        path = next(config.audit_path.glob("audit-*.jsonl"))
        path.rename(path.with_suffix(".moved"))
        path.mkdir()  # works as root too, unlike a read-only mode
        with pytest.raises(AuditError, match="was replaced while the gateway ran"):
            await recorder.check_writable()
        assert not await recorder.append("gateway.stopped", reason="x")
        assert recorder.write_error is not None
        assert "cannot write the audit trail" in recorder.write_error
        assert recorder.failures == 1
    finally:
        recorder.close()


def test_audit_problems_are_heartbeat_health_problems() -> None:
    status: dict[str, Any] = {
        "sources": {"press": {"state": "connected"}},  # a source: "no sources configured" is not the point here
        "buffer": {"dropped": {}},
        "destinations": {},
        "mqtt": {"connected": True},
        "gateway": {"version": "1"},
        "time": 0,
        "audit": {"enabled": True, "error": None, "write_error": None, "discontinuity": None},
    }
    assert summary(status)["problems"] == []
    status["audit"]["discontinuity"] = {"expected": {"seq": 3, "hash": "h"}, "found": None, "reason": "r"}
    status["audit"]["write_error"] = "cannot write the audit trail in /x: full"
    health = summary(status)
    assert health["problems"] == ["audit trail not writable", "audit trail discontinuity"]
    assert health["state"] == "degraded"
    assert summary(status | {"audit": {"enabled": False, "error": "not valid"}})["problems"] == [
        "audit trail not writable"
    ]
