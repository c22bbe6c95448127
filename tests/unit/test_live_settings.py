"""Settings applied while the gateway runs take effect at once, each in the part that uses it."""

from __future__ import annotations

from pathlib import Path

from edge_gateway.config.model import parse_config
from edge_gateway.runtime.supervisor import Gateway
from tests.unit.test_config import valid_doc


async def test_status_and_heartbeat_intervals_follow_a_change_without_a_restart(tmp_path: Path) -> None:
    doc = valid_doc() | {"sources": []}
    doc["gateway"] = {"thing_name": "line1-gw", "data_dir": str(tmp_path)}
    gateway = Gateway(parse_config(doc))
    try:
        changed = doc | {
            "status": {"interval_s": 7},
            "heartbeat": {"interval_s": 11, "shadow_min_interval_s": 13},
        }
        change = await gateway.apply(parse_config(changed))
        assert change.status_changed
        assert gateway.status.interval_s == 7
        assert gateway.presence.heartbeat_s == 11
        assert gateway.health.min_interval_s == 13  # was stuck at the start value until a restart
    finally:
        await gateway.buffer.close()
        if gateway.audit is not None:
            gateway.audit.close()
