"""The shadow's confirm window and the audit trail as a trust anchor (issue 17), end to end: the gateway
subprocess, both PLC simulators, Mosquitto (its ACL plays the IoT policy) and the shadow service stand-in.

- a destination whose publishes the broker refuses (135) is rolled back, and audited with its values;
- a rejection is audited with the offending values, secrets masked;
- while the trail cannot be written, a change is refused and reported, and data keeps flowing;
- a trail truncated while the gateway is stopped becomes a discontinuity entry and a heartbeat problem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simulators.iot_core import MosquittoBroker
from simulators.shadow import ShadowService
from tests.integration.test_audit_trail import AUDIT, entries, shadow_outcomes, trail_dir
from tests.integration.test_shadow_config import SHADOW, WINDOW_S, config, gw, reported_status, source, start, until
from tests.support import THING, Consumer, GatewayProcess

__all__ = ["config", "gw"]  # the fixtures, shared with the shadow configuration tests

# The gateway may publish on dt/# and the shadow topics only: "refused/..." gets PUBACK 135 (not authorized).
POLICY_ACL = (
    "user test-consumer\ntopic readwrite #\ntopic readwrite $aws/#\n\n"
    "user test-gateway\ntopic readwrite dt/#\ntopic readwrite $aws/#\n\n"
    "user shadow-service\ntopic readwrite $aws/things/#\n\n"
    "user shadow-cli\ntopic readwrite $aws/things/#\n"
)
STOLEN = "/tmp/stolen.key"  # a path a hostile document names, never created


def replace_trail_file_with_a_directory(gw: GatewayProcess) -> None:
    """Unwritable even for root: the file the writer appends to is no longer at its path."""
    path = max(trail_dir(gw).glob("audit-*.jsonl"))
    path.rename(path.with_name("moved-aside.jsonl"))
    path.mkdir()


def shadow_health(svc: ShadowService) -> dict[str, Any]:
    doc = svc.document(THING, SHADOW) or {}
    health = doc.get("state", {}).get("reported", {}).get("health")
    return health if isinstance(health, dict) else {}


async def test_refused_destination_rolled_back_values_audited_and_an_unwritable_trail_refuses_changes(
    gw: GatewayProcess, consumer: Consumer, shadow: ShadowService, config: dict[str, Any], broker: MosquittoBroker
) -> None:
    broker.set_acl(POLICY_ACL)
    await start(gw, consumer, shadow)
    press, boiler, cloud = source(config, "press"), source(config, "boiler"), config["publisher"]["destinations"][0]

    # A destination on a topic the policy refuses: rolled back at its first refusal, within the window.
    blocked = {"type": "iotcore", "name": "blocked", "topic": "refused/{thing}/{source}", "max_latency_ms": 200}
    added = await shadow.set_desired(THING, SHADOW, {"publisher": {"destinations": [cloud, blocked]}})
    status = await reported_status(shadow, "rolled_back", added["version"], WINDOW_S + 20)
    assert "destination blocked: the broker refused its messages for good" in status["reason"]
    assert "135" in status["reason"] or "NOT_AUTHORIZED" in status["reason"].upper()
    gw.wait_status(lambda s: list(s["destinations"]) == ["cloud"], 5)

    # A hostile document: rejected, and audited with the values it tried to set (secrets masked).
    credentials = {"username": "reader", "password_file": STOLEN}
    hostile = {
        "sources": [press, boiler | {"poll_interval_ms": 1, "auth": credentials}],
        "publisher": {"destinations": [cloud]},  # the service merges desired: the blocked one goes
    }
    refused = await shadow.set_desired(THING, SHADOW, hostile)
    await reported_status(shadow, "rejected", refused["version"], 15)
    # A legitimate one: applied, audited with old and new values.
    faster = await shadow.set_desired(THING, SHADOW, {"sources": [press, boiler | {"poll_interval_ms": 100}]})
    await reported_status(shadow, "applied", faster["version"], WINDOW_S + 15)
    outcomes = await until(lambda: len(shadow_outcomes(gw)) >= 3 and shadow_outcomes(gw), 10, "three outcomes")
    back, no, ok = (e["fields"] for e in outcomes[-3:])
    assert [e["event"] for e in outcomes[-3:]] == ["config.rolled_back", "config.rejected", "config.applied"]
    new_destination = next(v for v in back["values"] if v["path"] == "publisher.destinations.1")
    assert new_destination["old"] is None
    assert new_destination["new"]["topic"] == "refused/{thing}/{source}"
    offending = {o["path"]: o for o in no["offending"]}
    assert list(offending) == [r["path"] for r in no["reasons"]]
    assert offending["sources.1.modbus.poll_interval_ms"]["value"] == 1
    assert '"***"' in json.dumps(no["offending"])  # the credentials, masked
    assert ok["values"] == [{"path": "sources.1.poll_interval_ms", "old": 50, "new": 100}]
    trail_bytes = b"".join(p.read_bytes() for p in trail_dir(gw).glob("audit-*.jsonl"))
    assert STOLEN.encode() not in trail_bytes

    # The trail cannot be written: the next change is refused and reported; collection goes on.
    replace_trail_file_with_a_directory(gw)
    slower = await shadow.set_desired(THING, SHADOW, {"sources": [press, boiler | {"poll_interval_ms": 400}]})
    status = await reported_status(shadow, "rejected", slower["version"], 15)
    assert status["errors"][0]["path"] == "(audit)"
    assert status["errors"][0]["message"].startswith("the audit trail cannot be written:")
    assert "was replaced while the gateway ran" in status["errors"][0]["message"]
    audit = gw.wait_status(lambda s: s["audit"]["write_error"] is not None, 5)["audit"]
    assert status["config_hash"] == ok["hash_after"]  # nothing applied: the last confirmed config runs
    gw.wait_status(lambda s: s["gateway"]["config"]["hash"] == ok["hash_after"], 5)
    mark = max(consumer.values("press.counter"))
    await consumer.wait_for(lambda: max(consumer.values("press.counter")) > mark + 10, 20)
    assert "cannot write the audit trail" in audit["write_error"]


async def test_a_trail_truncated_while_stopped_is_a_discontinuity_and_a_heartbeat_problem(
    gw: GatewayProcess, consumer: Consumer, shadow: ShadowService, config: dict[str, Any]
) -> None:
    config["heartbeat"] = {"interval_s": 2, "shadow_min_interval_s": 1}
    gw.config_path.write_text(json.dumps(config))
    await start(gw, consumer, shadow)
    first = gw.wait_status(lambda s: s["audit"]["last_seq"] >= 6 and s["audit"]["acked_seq"] >= 6, 20)["audit"]
    assert gw.stop() == 0
    anchor = json.loads((Path(config["gateway"]["data_dir"]) / "audit-anchor.json").read_text())
    assert anchor["seq"] >= first["acked_seq"]
    path = max(trail_dir(gw).glob("audit-*.jsonl"))
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:2]))  # truncated after seq 2

    gw.start()
    audit = gw.wait_status(lambda s: s["audit"].get("discontinuity") is not None, 30)["audit"]
    found = audit["discontinuity"]
    assert found["expected"] == anchor
    assert found["found"] is None
    assert found["entry_seq"] == 3
    recorded = entries(gw, "audit.discontinuity")
    assert [(e["seq"], e["fields"]["expected"]) for e in recorded] == [(3, anchor)]

    # Every heartbeat carries the chain head; the discontinuity is a problem in the shadow's health.
    def beat_with_problem() -> dict[str, Any] | None:
        beats = [d["status"] for d in consumer.status_docs("heartbeat") if d["status"]["audit"].get("discontinuity")]
        return beats[-1] if beats else None

    beat = await until(beat_with_problem, 15, "a heartbeat reporting the discontinuity")
    head = beat["audit"]["head"]
    assert {e["seq"]: e["hash"] for e in entries(gw)}[head["seq"]] == head["hash"]
    await until(lambda: "audit trail discontinuity" in shadow_health(shadow).get("problems", []), 15, "health")
    # Published again from the discontinuity entry on: the cloud holds it.
    await consumer.wait_for(
        lambda: any(t == AUDIT and json.loads(p)["event"] == "audit.discontinuity" for t, p in consumer.messages), 15
    )

    # A trail that cannot be opened at start: the gateway runs, a shadow change is refused.
    assert gw.stop() == 0
    replace_trail_file_with_a_directory(gw)
    gw.start()
    gw.wait_status(lambda s: s["audit"]["error"] is not None and s["gateway"]["pid"] == gw.proc.pid, 30)  # type: ignore[union-attr]
    boiler = source(config, "boiler") | {"poll_interval_ms": 200}
    change = await shadow.set_desired(THING, SHADOW, {"sources": [source(config, "press"), boiler]})
    status = await reported_status(shadow, "rejected", change["version"], 20)
    assert status["errors"][0]["path"] == "(audit)"
    await until(lambda: "audit trail not writable" in shadow_health(shadow).get("problems", []), 15, "health")
