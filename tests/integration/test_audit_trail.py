"""The running gateway's audit trail and data provenance (issue 11), end to end: the gateway subprocess, both
PLC simulators, Mosquitto and the shadow service stand-in. Configuration outcomes land in the local
hash-chained trail and on the audit topic; every data message names the configuration that collected it,
and the trail declares what each alias is at the PLC."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from edge_gateway.gxp.audit import read_entries, verify
from simulators.ports import free_port
from simulators.process import stop_process
from simulators.shadow import ShadowService
from tests.integration.test_shadow_config import SHADOW, WINDOW_S, config, gw, reported_status, source, until
from tests.support import (
    MODBUS_TICK_MS,
    THING,
    Consumer,
    GatewayProcess,
    is_data,
    start_sim,
)

AUDIT = f"dt/{THING}/audit"
__all__ = ["config", "gw"]  # the fixtures, shared with the shadow configuration tests


def trail_dir(gw: GatewayProcess) -> Path:
    return gw.status_path.parent / "audit"


def entries(gw: GatewayProcess, *events: str) -> list[dict[str, Any]]:
    return [e.as_dict() for e in read_entries(trail_dir(gw)) if not events or e.event in events]


def shadow_outcomes(gw: GatewayProcess) -> list[dict[str, Any]]:
    outcomes = entries(gw, "config.applied", "config.rejected", "config.rolled_back")
    return [e for e in outcomes if e["fields"]["source"] == "shadow"]


def audit_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_gateway", "audit", *args], capture_output=True, text=True, timeout=30, check=False
    )


async def test_applied_rejected_and_rolled_back_changes_are_audited_and_data_names_its_configuration(
    gw: GatewayProcess, consumer: Consumer, shadow: ShadowService, config: dict[str, Any]
) -> None:
    await consumer.subscribe("dt/#")
    gw.start()
    await consumer.wait_for(lambda: len(set(consumer.values("press.counter"))) >= 10, 40)
    await reported_status(shadow, "applied", None)
    boot = entries(gw)
    assert [e["event"] for e in boot] == [
        "config.applied",
        "certificate.changed",
        "certificate.changed",
        "gateway.started",
        "provenance.declared",
        "provenance.declared",
    ]
    assert boot[0]["fields"]["source"] == "file"
    assert boot[0]["fields"]["hash_before"] is None  # the first start of this gateway
    first_cfg = boot[0]["fields"]["hash_after"]
    assert {e["fields"]["role"] for e in boot[1:3]} == {"device", "ca"}
    assert boot[1]["fields"]["fingerprint_before"] is None
    press = next(e["fields"] for e in boot if e["event"] == "provenance.declared" and e["fields"]["source"] == "press")
    assert press["points"]["press.counter"] == {"node_id": "ns=2;s=Line1.Counter"}
    assert press["endpoint"]["endpoint"] == config["sources"][0]["endpoint"]
    assert {d["cfg"] for d in consumer.docs()} == {first_cfg}  # every data message names its configuration

    # Applied: a faster Modbus poll.
    boiler = source(config, "boiler") | {"poll_interval_ms": 100}
    applied = await shadow.set_desired(THING, SHADOW, {"sources": [source(config, "press"), boiler]})
    await reported_status(shadow, "applied", applied["version"], 15)
    # Rejected: a poll interval below the minimum.
    bad = source(config, "boiler") | {"poll_interval_ms": 1}
    rejected = await shadow.set_desired(THING, SHADOW, {"sources": [source(config, "press"), bad]})
    await reported_status(shadow, "rejected", rejected["version"], 15)
    # Rolled back: a broker port where nothing listens.
    dead = free_port()
    running = [source(config, "press"), boiler]  # desired merges: the sources go back to what runs
    rolled = await shadow.set_desired(THING, SHADOW, {"sources": running, "publisher": {"mqtt": {"port": dead}}})
    await reported_status(shadow, "rolled_back", rolled["version"], WINDOW_S + 30)

    outcomes = await until(lambda: len(shadow_outcomes(gw)) >= 3 and shadow_outcomes(gw), 10, "three outcomes")
    assert [(e["event"], e["fields"]["shadow_version"]) for e in outcomes] == [
        ("config.applied", applied["version"]),
        ("config.rejected", rejected["version"]),
        ("config.rolled_back", rolled["version"]),
    ]
    ok, no, back = (e["fields"] for e in outcomes)
    assert ok["hash_before"] == first_cfg
    assert ok["hash_after"] != first_cfg
    assert ok["changed"] == ["sources.1.poll_interval_ms"]
    assert ok["client_token"].startswith("gw-")
    assert no["reasons"][0]["path"] == "sources.1.modbus.poll_interval_ms"
    assert no["changed"] == ["sources.1.poll_interval_ms"]
    assert no["hash_before"] == ok["hash_after"]
    assert f"no cloud connection to 127.0.0.1:{dead}" in back["reason"]
    assert back["changed"] == ["publisher.mqtt.port"]

    # Published to the audit topic, byte for byte the stored lines, once the connection is back.
    stored = {e["seq"]: e for e in entries(gw)}
    await consumer.wait_for(
        lambda: {json.loads(p)["seq"] for t, p in consumer.messages if t == AUDIT} >= set(stored), 30
    )
    published = {json.loads(p)["seq"]: json.loads(p) for t, p in consumer.messages if t == AUDIT}
    assert all(published[seq] == entry for seq, entry in stored.items())

    # Data collected after the applied change names the new configuration; its declaration is in the trail.
    new_cfg = ok["hash_after"]
    await consumer.wait_for(lambda: any(d["cfg"] == new_cfg for d in consumer.docs()), 20)
    declared = {e["fields"]["config_hash"] for e in entries(gw, "provenance.declared")}
    assert {d["cfg"] for d in consumer.docs()} <= declared

    assert gw.stop() == 0
    final = entries(gw)
    assert final[-1]["event"] == "gateway.stopped"
    assert verify(trail_dir(gw)).ok
    assert audit_cli("verify", "--config", str(gw.config_path)).returncode == 0

    # One byte of a past entry edited: verify fails and names it.
    path = next(trail_dir(gw).glob("audit-*.jsonl"))
    lines = path.read_bytes().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if b'"config.rejected"' in line)
    lines[index] = lines[index].replace(b'"config.rejected"', b'"config.rejecteD"', 1)
    path.write_bytes(b"".join(lines))
    result = audit_cli("verify", "--config", str(gw.config_path))
    assert result.returncode == 1
    seq = next(s for s, e in stored.items() if e["event"] == "config.rejected")
    assert f"BROKEN at entry seq {seq} at {path.name} line {index + 1}" in result.stdout


async def test_kill_9_during_a_config_change_keeps_the_trail_valid_and_records_the_change_once(
    gw: GatewayProcess, consumer: Consumer, shadow: ShadowService, config: dict[str, Any]
) -> None:
    config["shadow"]["confirm_window_s"] = 60.0
    gw.config_path.write_text(json.dumps(config))
    await consumer.subscribe("dt/#")
    gw.start()
    await consumer.wait_for(lambda: len(set(consumer.values("press.counter"))) >= 5, 40)
    await reported_status(shadow, "applied", None)
    oven_port = free_port()  # nothing listens there yet: the change waits in its confirm window
    oven = source(config, "boiler") | {"name": "oven", "port": oven_port, "points": [{"alias": "oven.x", "address": 0}]}
    accepted = await shadow.set_desired(THING, SHADOW, {"sources": [*config["sources"], oven]})
    await reported_status(shadow, "applied", accepted["version"], 15)  # reported, not yet confirmed
    await asyncio.sleep(1.0)
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(5)
    assert verify(trail_dir(gw)).ok
    assert shadow_outcomes(gw) == []  # not judged yet: nothing recorded

    gw.start()  # judges the same desired document again
    plc = start_sim("simulators.modbus_plc", oven_port, tick_ms=MODBUS_TICK_MS)
    try:
        await until(lambda: shadow_outcomes(gw), 40, "the change confirmed and recorded")
        await consumer.wait_for(lambda: any(is_data(t) and b"oven.x" in p for t, p in consumer.messages), 20)
        assert gw.stop() == 0
        gw.start()  # a third run: the confirmed change is the saved config, nothing new to record
        await consumer.wait_for(lambda: len(entries(gw, "gateway.started")) == 3, 30)
        await asyncio.sleep(2)
    finally:
        stop_process(plc)
    assert gw.stop() == 0
    result = verify(trail_dir(gw))
    assert result.ok
    outcomes = shadow_outcomes(gw)
    # Once, for the document the second run judged (the shadow's version grew with the first run's report).
    assert [e["event"] for e in outcomes] == ["config.applied"]
    assert outcomes[0]["fields"]["shadow_version"] >= accepted["version"]
    assert outcomes[0]["fields"]["changed"] == ["sources.2"]
    events = [e["event"] for e in entries(gw) if e["event"].startswith("gateway.")]
    assert events == ["gateway.started", "gateway.started", "gateway.stopped", "gateway.started", "gateway.stopped"]
