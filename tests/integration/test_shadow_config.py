"""Shadow-driven configuration end to end: the gateway (a subprocess), both PLC simulators, Mosquitto with
mutual TLS and the Device Shadow service stand-in (simulators/shadow/) on top of it."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from simulators.iot_core import MosquittoBroker
from simulators.pki import Pki
from simulators.ports import free_port
from simulators.shadow import ShadowRequestError, ShadowService
from tests.support import THING, Consumer, GatewayProcess, gateway_config, is_data, mqtt_settings

SHADOW = "edge-gateway"
WINDOW_S = 4.0


@pytest.fixture
def config(tmp_path: Path, pki: Pki, broker: MosquittoBroker, plcs: tuple[int, int]) -> dict[str, Any]:
    doc = gateway_config(tmp_path, pki, broker, opcua_port=plcs[0], modbus_port=plcs[1])
    # The rollback tests move the connection to a dead port: the local file must allow that endpoint.
    doc["shadow"] = {"confirm_window_s": WINDOW_S, "request_timeout_s": 3, "allowed_endpoints": ["127.0.0.1"]}
    return doc


@pytest.fixture
def gw(config: dict[str, Any], tmp_path: Path) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(config, tmp_path)
    yield gateway
    gateway.stop()


def source(config: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(next(s for s in config["sources"] if s["name"] == name))


async def until(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    msg = f"timed out after {timeout_s} s waiting for {what}"
    raise AssertionError(msg)


def config_status(svc: ShadowService) -> dict[str, Any] | None:
    doc = svc.document(THING, SHADOW)
    if doc is None:
        return None
    reported = doc.get("state", {}).get("reported", {})
    status = reported.get("config_status")
    return dict(status) if isinstance(status, dict) else None


async def reported_status(
    svc: ShadowService, status: str, version: int | None, timeout_s: float = 20
) -> dict[str, Any]:
    def matches() -> dict[str, Any] | None:
        s = config_status(svc)
        return s if s and s["status"] == status and (version is None or s.get("version") == version) else None

    result: dict[str, Any] = await until(matches, timeout_s, f"config_status {status} version {version}")
    return result


def cloud_docs(consumer: Consumer) -> list[dict[str, Any]]:
    return [json.loads(p) for t, p in consumer.messages if t.startswith("dt/") and is_data(t)]


def rate(consumer: Consumer, alias: str, since_ms: int, until_ms: int) -> float:
    """Readings per second of ``alias`` with a timestamp in [since_ms, until_ms)."""
    n = sum(1 for ts, _ in consumer.points(alias) if since_ms <= ts < until_ms)
    return n / ((until_ms - since_ms) / 1000)


def assert_no_gap(values: list[Any], alias: str) -> None:
    distinct = sorted(set(values))
    missing = sorted(set(range(distinct[0], distinct[-1] + 1)) - set(distinct))
    assert not missing, f"{alias}: {len(missing)} value(s) missing, first {missing[:10]}"


async def start(gw: GatewayProcess, consumer: Consumer, svc: ShadowService) -> None:
    await consumer.subscribe("dt/#")
    gw.start()
    await consumer.wait_for(lambda: len(set(consumer.values("press.counter"))) >= 10, 40)
    await reported_status(svc, "applied", None)  # first contact: no shadow yet, it reports what runs


async def test_a_poll_interval_change_applies_within_seconds_and_opcua_flows_without_a_gap(
    gw: GatewayProcess, consumer: Consumer, shadow: ShadowService, config: dict[str, Any]
) -> None:
    await start(gw, consumer, shadow)
    assert "version" not in config_status(shadow)  # type: ignore[operator]  # no shadow yet: no version
    await asyncio.sleep(3)
    boiler = source(config, "boiler") | {"poll_interval_ms": 500}
    accepted = await shadow.set_desired(THING, SHADOW, {"sources": [source(config, "press"), boiler]})
    changed_ms = int(time.time() * 1000)
    status = await reported_status(shadow, "applied", accepted["version"], 10)
    assert status["changes"] == "sources changed: boiler"
    assert status["config_hash"].startswith("sha256:")
    assert status["errors"] == []
    doc = shadow.document(THING, SHADOW)
    assert doc is not None
    assert "delta" not in doc["state"]  # reported mirrors desired
    assert doc["state"]["reported"]["sources"][1]["poll_interval_ms"] == 500

    await asyncio.sleep(4)
    now_ms = int(time.time() * 1000)
    before = rate(consumer, "boiler.counter", changed_ms - 2500, changed_ms - 500)
    after = rate(consumer, "boiler.counter", changed_ms + 1000, now_ms - 500)
    assert after > 0  # still polled
    assert before > 2 * after  # polled far less often than before (every 50 ms, now every 500 ms)
    # No more polls than the new interval allows over the span they cover (a fixed schedule: one may be late by
    # up to one interval; a loaded machine only makes fewer).
    stamps = sorted({ts for ts, _ in consumer.points("boiler.counter") if ts >= changed_ms + 1000})
    assert len(stamps) >= 2
    assert len(stamps) <= (stamps[-1] - stamps[0]) / 500 + 2
    await consumer.wait_for(lambda: len(set(consumer.values("press.counter"))) >= 60, 20)
    assert_no_gap(consumer.values("press.counter"), "press.counter")  # the OPC UA reader never stopped
    assert gw.status()["shadow"]["version"] == accepted["version"]


async def test_a_document_with_three_errors_is_rejected_with_every_path_and_nothing_changes(
    gw: GatewayProcess, consumer: Consumer, shadow: ShadowService, config: dict[str, Any]
) -> None:
    await start(gw, consumer, shadow)
    before = config_status(shadow)
    assert before is not None
    boiler = source(config, "boiler") | {"poll_interval_ms": 5, "port": 70000}
    desired = {"sources": [source(config, "press"), boiler], "publisher": {"mqtt": {"key_file": "/tmp/x.key"}}}
    accepted = await shadow.set_desired(THING, SHADOW, desired)
    status = await reported_status(shadow, "rejected", accepted["version"], 10)
    assert {e["path"] for e in status["errors"]} == {
        "sources.1.modbus.poll_interval_ms",
        "sources.1.modbus.port",
        "publisher.mqtt.key_file",
    }
    assert status["config_hash"] == before["config_hash"]  # the running config is untouched
    doc = shadow.document(THING, SHADOW)
    assert doc is not None
    assert "sources" in doc["state"]["delta"]  # the operator still sees what is not in effect
    mark_ms = int(time.time() * 1000)
    await asyncio.sleep(2)
    assert rate(consumer, "boiler.counter", mark_ms - 1500, mark_ms + 1500) > 10  # still every 50 ms
    assert "desired version" in gw.log()
    assert "rejected, the running config is unchanged" in gw.log()


async def test_sources_are_added_and_removed_and_a_destination_added(
    gw: GatewayProcess, consumer: Consumer, shadow: ShadowService, config: dict[str, Any]
) -> None:
    await start(gw, consumer, shadow)
    await consumer.subscribe("dt2/#")
    press, boiler = source(config, "press"), source(config, "boiler")
    pump = boiler | {"name": "pump", "points": [{"alias": "pump.counter", "address": 0, "data_type": "uint32"}]}
    second = {"type": "iotcore", "name": "archive", "topic": "dt2/{thing}/{source}", "max_latency_ms": 200}
    published_before = max(d["seq"][1] for d in cloud_docs(consumer))
    accepted = await shadow.set_desired(
        THING,
        SHADOW,
        {
            "sources": [press, boiler, pump],
            "publisher": {"destinations": [*config["publisher"]["destinations"], second]},
        },
    )
    status = await reported_status(shadow, "applied", accepted["version"], 10)
    assert status["changes"] == "sources added: pump; destinations added: archive"
    await consumer.wait_for(lambda: len(consumer.values("pump.counter")) >= 5, 15)

    def archive() -> list[dict[str, Any]]:
        return [json.loads(p) for t, p in consumer.messages if t.startswith("dt2/")]

    await consumer.wait_for(lambda: {d["src"] for d in archive()} == {"press", "boiler", "pump"}, 15)
    assert min(d["seq"][0] for d in archive()) > published_before  # the new destination starts at the head

    accepted = await shadow.set_desired(THING, SHADOW, {"sources": [press, boiler]})
    status = await reported_status(shadow, "applied", accepted["version"], 10)
    assert status["changes"] == "sources removed: pump"
    await asyncio.sleep(1)
    count = len(consumer.values("pump.counter"))
    await asyncio.sleep(2)
    assert len(consumer.values("pump.counter")) == count  # no more readings from the removed source
    assert "pump" not in gw.status()["sources"]


async def test_an_unreachable_endpoint_is_rolled_back_and_what_was_buffered_is_delivered(
    gw: GatewayProcess, consumer: Consumer, shadow: ShadowService
) -> None:
    await start(gw, consumer, shadow)
    dead_port = free_port()
    accepted = await shadow.set_desired(THING, SHADOW, {"publisher": {"mqtt": {"port": dead_port}}})
    status = await reported_status(shadow, "rolled_back", accepted["version"], WINDOW_S + 30)
    assert f"no cloud connection to 127.0.0.1:{dead_port} for {WINDOW_S:.0f} s" in status["reason"]
    doc = shadow.document(THING, SHADOW)
    assert doc is not None
    assert doc["state"]["delta"] == {"publisher": {"mqtt": {"port": dead_port}}}  # not in effect
    # Readings collected while cut off arrive after the rollback: the counter has no gap.
    mark = max(consumer.values("press.counter"))
    await consumer.wait_for(lambda: max(consumer.values("press.counter")) > mark + 20, 20)
    assert_no_gap(consumer.values("press.counter"), "press.counter")
    # The same desired document is not applied again.
    await asyncio.sleep(WINDOW_S + 1)
    assert config_status(shadow)["status"] == "rolled_back"  # type: ignore[index]
    assert gw.status()["mqtt"]["port"] != dead_port
    assert gw.log().count("rolling back desired version") == 1


async def test_a_gateway_that_boots_without_the_broker_runs_the_saved_config(
    gw: GatewayProcess, consumer: Consumer, shadow: ShadowService, config: dict[str, Any], broker: MosquittoBroker
) -> None:
    await start(gw, consumer, shadow)
    pump = source(config, "boiler") | {"name": "pump", "points": [{"alias": "pump.x", "address": 0}]}
    accepted = await shadow.set_desired(THING, SHADOW, {"sources": [*config["sources"], pump]})
    await reported_status(shadow, "applied", accepted["version"], 10)
    await asyncio.sleep(0.5)  # the save follows the confirmation
    assert gw.stop() == 0
    broker.stop()
    gw.status_path.unlink()
    gw.start()
    status = gw.wait_status(lambda s: "pump" in s["sources"] and s["sources"]["pump"]["readings"] > 0, 30)
    assert status["mqtt"]["connected"] is False
    assert f"running the saved shadow config (version {accepted['version']})" in gw.log()


# ---- generated documents: random JSON, wrong types, huge, truncated --------------------------------------

_MODBUS_PORT = -1  # replaced by the simulator's port when sent
_TEMPLATE: dict[str, Any] = {
    "sources": [
        {
            "type": "modbus",
            "name": "fuzz",
            "host": "127.0.0.1",
            "port": _MODBUS_PORT,
            "poll_interval_ms": 200,
            "points": [{"alias": "fuzz.a", "address": 0, "data_type": "uint32"}],
        }
    ],
    "heartbeat": {"interval_s": 30},
}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=20,
)


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    out = [path] if path else []
    for key, child in items:
        out += _paths(child, (*path, key))
    return out


@st.composite
def wrong_types(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(_TEMPLATE)
    path = draw(st.sampled_from(_paths(doc)))
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = draw(json_values)
    return doc


documents = st.one_of(
    json_values.map(lambda v: {"state": {"desired": v}}),
    st.dictionaries(st.sampled_from(["sources", "publisher", "status", "gateway", "version", "x"]), json_values).map(
        lambda d: {"state": {"desired": d}}
    ),
    wrong_types().map(lambda d: {"state": {"desired": d}}),
    st.integers(9_000, 20_000).map(lambda n: {"state": {"desired": {"status": {"note": "x" * n}}}}),  # huge
    st.tuples(wrong_types(), st.floats(0, 1)).map(  # truncated on the wire
        lambda t: json.dumps({"state": {"desired": t[0]}})[: int(len(json.dumps({"state": {"desired": t[0]}})) * t[1])]
    ),
)


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.generate],  # no shrinking against a live gateway
)
@given(doc=documents)
async def test_generated_documents_never_crash_the_gateway(
    gw: GatewayProcess,
    consumer: Consumer,
    shadow: ShadowService,
    plcs: tuple[int, int],
    doc: Any,
) -> None:
    if gw.proc is None:
        await start(gw, consumer, shadow)
    text = (doc if isinstance(doc, str) else json.dumps(doc)).replace(f'"port": {_MODBUS_PORT}', f'"port": {plcs[1]}')
    with contextlib.suppress(ShadowRequestError):  # the service refuses what AWS would (400, 413)
        await shadow.update(THING, SHADOW, text)
    assert gw.proc is not None
    assert gw.proc.poll() is None, gw.log()[-3000:]
    assert "Traceback" not in gw.log()


async def test_after_the_generated_documents_a_valid_one_still_applies(
    gw: GatewayProcess, consumer: Consumer, shadow: ShadowService, plcs: tuple[int, int], config: dict[str, Any]
) -> None:
    await start(gw, consumer, shadow)
    refused = 0
    for doc in ("{", '{"state": {"desired": [1, 2]}}', '{"state": {"desired": {"sources": 3}}}'):
        try:
            await shadow.update(THING, SHADOW, doc)
        except ShadowRequestError:
            refused += 1
    assert refused == 2
    await reported_status(shadow, "rejected", None, 20)  # the gateway refuses sources: 3
    accepted = await shadow.set_desired(THING, SHADOW, {"sources": config["sources"], "heartbeat": {"interval_s": 20}})
    status = await reported_status(shadow, "applied", accepted["version"], 20)
    assert status["changes"] == "status intervals changed"
    assert "Traceback" not in gw.log()


async def test_a_report_too_big_for_the_shadow_is_replaced_by_a_small_one(
    gw: GatewayProcess, consumer: Consumer, pki: Pki, broker: MosquittoBroker, config: dict[str, Any]
) -> None:
    settings = mqtt_settings(pki, broker, client="shadow-service")
    desired = {"sources": config["sources"]}
    limit = len(json.dumps(desired, separators=(",", ":"))) * 3 // 2  # fits, but not twice (reported mirrors it)
    # Only the config report here: the health summary (refused as well in so small a document) is off.
    config["heartbeat"] = {"shadow_report": False}
    gw.config_path.write_text(yaml.safe_dump(config))
    async with ShadowService(settings, client_id="shadow-service", max_document_bytes=limit) as svc:
        await start(gw, consumer, svc)
        accepted = await svc.set_desired(THING, SHADOW, desired)
        status = await reported_status(svc, "applied", accepted["version"], 15)
        assert status["errors"] == [{"path": "(report)", "message": "413 The payload exceeds the maximum size allowed"}]
        doc = svc.document(THING, SHADOW)
        assert doc is not None
        assert "sources" not in doc["state"]["reported"]
        assert svc.counts["update/rejected"] == 1  # once, not in a loop
        await asyncio.sleep(2)
        assert svc.counts["update/rejected"] == 1


async def test_throttled_requests_are_asked_again_with_backoff(
    gw: GatewayProcess, consumer: Consumer, pki: Pki, broker: MosquittoBroker, config: dict[str, Any]
) -> None:
    settings = mqtt_settings(pki, broker, client="shadow-service")
    async with ShadowService(settings, client_id="shadow-service", rate_limit_per_s=1.0) as svc:
        await start(gw, consumer, svc)
        boiler = source(config, "boiler") | {"poll_interval_ms": 400}
        accepted = await svc.set_desired(THING, SHADOW, {"sources": [source(config, "press"), boiler]})
        await reported_status(svc, "applied", accepted["version"], 30)
        assert svc.counts["get/accepted"] + svc.counts["update/accepted"] >= 3
        requests = sum(svc.counts.values())
        await asyncio.sleep(3)
        assert sum(svc.counts.values()) - requests <= 2
