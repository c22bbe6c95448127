"""A hostile desired document, live (issue 17): the gateway subprocess, both PLC simulators, Mosquitto with
mutual TLS and the Device Shadow service stand-in.

The document tries what a shadow writer could do before the allow-list: a Modbus RTU source whose serial
"port" is pyserial's ``spy://`` URL (it would open a file of the attacker's choosing for writing at every
reconnect), the cloud connection moved to another server, and a topic template that formats into a 200 MB
topic. It must be rejected whole, reported with every path, recorded in the audit trail with the values it
tried to set, leave a sentinel file outside the data directory untouched, and cost the data nothing: the
OPC UA counter arrives without a gap across the whole episode.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from simulators.shadow import ShadowService
from tests.integration.test_audit_trail import shadow_outcomes
from tests.integration.test_shadow_config import (
    SHADOW,
    assert_no_gap,
    config,
    gw,
    reported_status,
    source,
    start,
    until,
)
from tests.support import THING, Consumer, GatewayProcess

__all__ = ["config", "gw"]  # the fixtures, shared with the shadow configuration tests


async def test_a_hostile_document_is_rejected_audited_with_its_values_and_harms_nothing(
    gw: GatewayProcess, consumer: Consumer, shadow: ShadowService, config: dict[str, Any], tmp_path: Path
) -> None:
    sentinel = tmp_path / "outside" / "sentinel.bin"  # not under the gateway's data directory
    sentinel.parent.mkdir()
    sentinel.write_bytes(b"plant history that must survive\n" * 64)
    before = (hashlib.sha256(sentinel.read_bytes()).hexdigest(), sentinel.stat().st_mtime_ns)
    data_dir = Path(config["gateway"]["data_dir"])
    assert not sentinel.resolve().is_relative_to(data_dir.resolve())

    await start(gw, consumer, shadow)
    spy = f"spy://loop://?file={sentinel}&raw"
    line = {
        "type": "modbus",
        "name": "line",
        "transport": "rtu",
        "serial": {"port": spy},
        "reconnect_min_s": 0.05,
        "points": [{"alias": "line.x", "address": 0}],
    }
    cloud = config["publisher"]["destinations"][0] | {"topic": "dt/{thing:>200000000}/{source}"}
    hostile = {
        "sources": [source(config, "press"), source(config, "boiler"), line],
        "publisher": {"mqtt": {"endpoint": "broker.evil.example", "port": 8883}, "destinations": [cloud]},
    }
    refused = await shadow.set_desired(THING, SHADOW, hostile)
    status = await reported_status(shadow, "rejected", refused["version"], 20)
    paths = {e["path"] for e in status["errors"]}
    assert {"sources.2.modbus.serial.port", "publisher.mqtt.endpoint"} <= paths, status["errors"]
    assert any(p.startswith("publisher.destinations.0") and "topic" in p for p in paths), status["errors"]
    assert all("not allowed in the shadow" in e["message"] or e["message"] for e in status["errors"])

    # Audited once, with the values it tried to set.
    rejected = await until(
        lambda: [e for e in shadow_outcomes(gw) if e["event"] == "config.rejected"], 10, "the rejection audited"
    )
    fields = rejected[-1]["fields"]
    offending = {o["path"]: o for o in fields["offending"]}
    assert offending["sources.2.modbus.serial.port"]["value"] == spy
    assert offending["publisher.mqtt.endpoint"]["value"] == "broker.evil.example"

    # Nothing of it ran: the running config is the one before, and collection never stopped.
    gw.wait_status(lambda s: set(s["sources"]) == {"press", "boiler"}, 5)
    mark = max(consumer.values("press.counter"))
    await consumer.wait_for(lambda: max(consumer.values("press.counter")) > mark + 20, 30)
    assert_no_gap(consumer.values("press.counter"), "press.counter")
    assert (hashlib.sha256(sentinel.read_bytes()).hexdigest(), sentinel.stat().st_mtime_ns) == before
    assert not list(sentinel.parent.glob("*.tmp"))
