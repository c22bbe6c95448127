"""The Device Shadow stand-in against a real Mosquitto with mutual TLS: a device and a watching app over MQTT.

The broker's ACL gives the service's own certificate (``shadow-service``) and the CLI's (``shadow-cli``)
``$aws/things/#``, beside the standard test users.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge_gateway.publish.transport.mqtt import MqttTransport
from simulators.iot_core import MosquittoBroker
from simulators.pki import Pki
from simulators.process import stop_process
from simulators.shadow import ShadowCaller, ShadowKey, ShadowRequestError, ShadowService
from tests.support import THING, Consumer, mqtt_settings

SERVICE = "shadow-service"
CLI = "shadow-cli"
NOW = 1_700_000_000
CONFIG = ShadowKey(THING, "config")
PREFIX = CONFIG.topic_prefix


@contextlib.asynccontextmanager
async def running_service(pki: Pki, broker: MosquittoBroker, **options: Any) -> AsyncIterator[ShadowService]:
    settings = mqtt_settings(pki, broker, client=SERVICE)
    async with ShadowService(settings, client_id=SERVICE, clock=lambda: NOW, **options) as service:
        yield service


@contextlib.asynccontextmanager
async def connected(pki: Pki, broker: MosquittoBroker, client: str, client_id: str) -> AsyncIterator[MqttTransport]:
    transport = MqttTransport(mqtt_settings(pki, broker, client=client), client_id)
    await transport.start()
    try:
        await transport.wait_connected(10)
        yield transport
    finally:
        await transport.stop()


@pytest.fixture
async def service(pki: Pki, broker: MosquittoBroker) -> AsyncIterator[ShadowService]:
    async with running_service(pki, broker) as svc:
        yield svc


@pytest.fixture
async def device(pki: Pki, broker: MosquittoBroker) -> AsyncIterator[ShadowCaller]:
    """The gateway's side: requests with the thing's own certificate."""
    async with connected(pki, broker, THING, f"{THING}-device") as transport:
        yield ShadowCaller(transport)


@pytest.fixture
async def watcher(pki: Pki, broker: MosquittoBroker) -> AsyncIterator[Consumer]:
    """An app watching every shadow topic of the thing (requests, answers and events)."""
    async with connected(pki, broker, "test-consumer", "test-consumer") as transport:
        consumer = Consumer(transport)
        await consumer.subscribe(f"$aws/things/{THING}/shadow/#")
        yield consumer


def events(watcher: Consumer, suffix: str, key: ShadowKey = CONFIG) -> list[dict[str, Any]]:
    topic = f"{key.topic_prefix}/{suffix}"
    return [json.loads(payload) for t, payload in watcher.messages if t == topic]


async def wait_events(watcher: Consumer, suffix: str, count: int, key: ShadowKey = CONFIG) -> list[dict[str, Any]]:
    await watcher.wait_for(lambda: len(events(watcher, suffix, key)) >= count, 5)
    return events(watcher, suffix, key)


def stamped(value: Any) -> Any:
    """Metadata of ``value`` set at NOW."""
    if isinstance(value, dict):
        return {k: stamped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [stamped(v) for v in value]
    return {"timestamp": NOW}


async def test_get_of_a_missing_shadow_is_404(service: ShadowService, device: ShadowCaller) -> None:
    accepted, answer = await device.request(CONFIG, "get", {"clientToken": "g1"})
    assert not accepted
    assert answer == {"code": 404, "message": "No shadow exists with name: 'config'", "clientToken": "g1"}
    accepted, answer = await device.request(ShadowKey(THING), "get")
    assert (accepted, answer) == (False, {"code": 404, "message": f"No shadow exists with name: '{THING}'"})
    assert service.counts["get/rejected"] == 2


async def test_desired_then_reported_moves_the_delta_until_it_is_empty(
    service: ShadowService, device: ShadowCaller, watcher: Consumer
) -> None:
    desired = {"rate_ms": 500, "sources": {"press": {"enabled": True, "points": 10}}}
    accepted, answer = await device.request(CONFIG, "update", {"state": {"desired": desired}, "clientToken": "d1"})
    assert accepted
    assert answer == {
        "state": {"desired": desired},
        "metadata": {"desired": stamped(desired)},
        "version": 1,
        "timestamp": NOW,
        "clientToken": "d1",
    }
    [delta] = await wait_events(watcher, "update/delta", 1)
    assert delta == {
        "version": 1,
        "timestamp": NOW,
        "state": desired,
        "metadata": stamped(desired),
        "clientToken": "d1",
    }

    # The device reports part of it: the delta left is just the differing leaf, with its path.
    reported = {"rate_ms": 500, "sources": {"press": {"enabled": True, "points": 8}}}
    accepted, answer = await device.request(CONFIG, "update", {"state": {"reported": reported}, "clientToken": "r1"})
    assert accepted
    assert answer["version"] == 2
    deltas = await wait_events(watcher, "update/delta", 2)
    left = {"sources": {"press": {"points": 10}}}
    assert deltas[1] == {"version": 2, "timestamp": NOW, "state": left, "metadata": stamped(left), "clientToken": "r1"}
    _, doc = await device.request(CONFIG, "get", {})
    assert doc["state"]["delta"] == left

    # Reporting the rest clears the delta: no delta message, none in get.
    accepted, _ = await device.request(
        CONFIG, "update", {"state": {"reported": {"sources": {"press": {"points": 10}}}}}
    )
    assert accepted
    await wait_events(watcher, "update/documents", 3)
    assert len(events(watcher, "update/delta")) == 2
    _, doc = await device.request(CONFIG, "get", {"clientToken": "g"})
    assert doc == {
        "state": {"desired": desired, "reported": desired},
        "metadata": {"desired": stamped(desired), "reported": stamped(desired)},
        "version": 3,
        "timestamp": NOW,
        "clientToken": "g",
    }


async def test_null_deletes_a_key_and_a_whole_section(service: ShadowService, device: ShadowCaller) -> None:
    await device.request(CONFIG, "update", {"state": {"desired": {"a": 1, "b": {"c": 2}}, "reported": {"a": 1}}})
    accepted, answer = await device.request(CONFIG, "update", {"state": {"desired": {"b": {"c": None}}}})
    assert accepted
    assert answer["state"] == {"desired": {"b": {"c": None}}}
    assert service.document(THING, "config") == {
        "state": {"desired": {"a": 1}, "reported": {"a": 1}},
        "metadata": {"desired": {"a": {"timestamp": NOW}}, "reported": {"a": {"timestamp": NOW}}},
        "version": 2,
        "timestamp": NOW,
    }
    await device.request(CONFIG, "update", {"state": {"desired": None}})
    doc = service.document(THING, "config")
    assert doc is not None
    assert doc["state"] == {"reported": {"a": 1}}
    assert doc["metadata"] == {"reported": {"a": {"timestamp": NOW}}}


async def test_arrays_are_whole_values(service: ShadowService, device: ShadowCaller, watcher: Consumer) -> None:
    await device.request(
        CONFIG, "update", {"state": {"desired": {"tags": ["a", "b", "c"]}, "reported": {"tags": ["a"]}}}
    )
    [delta] = await wait_events(watcher, "update/delta", 1)
    assert delta["state"] == {"tags": ["a", "b", "c"]}
    await device.request(CONFIG, "update", {"state": {"desired": {"tags": ["z"]}}})
    deltas = await wait_events(watcher, "update/delta", 2)
    assert deltas[1]["state"] == {"tags": ["z"]}
    assert deltas[1]["metadata"] == {"tags": [{"timestamp": NOW}]}
    await device.request(CONFIG, "update", {"state": {"reported": {"tags": ["z"]}}})
    doc = service.document(THING, "config")
    assert doc is not None
    assert doc["state"] == {"desired": {"tags": ["z"]}, "reported": {"tags": ["z"]}}


async def test_version_conflict_is_409_with_the_client_token(service: ShadowService, device: ShadowCaller) -> None:
    await device.request(CONFIG, "update", {"state": {"reported": {"a": 1}}})
    accepted, answer = await device.request(
        CONFIG, "update", {"state": {"reported": {"a": 2}}, "version": 5, "clientToken": "stale"}
    )
    assert not accepted
    assert answer == {"code": 409, "message": "Version conflict", "clientToken": "stale"}
    accepted, answer = await device.request(CONFIG, "update", {"state": {"reported": {"a": 2}}, "version": 1})
    assert accepted
    assert answer["version"] == 2


async def test_oversized_document_is_413(service: ShadowService, device: ShadowCaller) -> None:
    big = {"state": {"desired": {"blob": "x" * 8192}}, "clientToken": "big"}
    accepted, answer = await device.request(CONFIG, "update", big)
    assert not accepted
    assert answer == {"code": 413, "message": "The payload exceeds the maximum size allowed", "clientToken": "big"}
    assert service.document(THING, "config") is None


async def test_the_size_limit_is_configurable(pki: Pki, broker: MosquittoBroker, device: ShadowCaller) -> None:
    async with running_service(pki, broker, max_document_bytes=64):
        accepted, answer = await device.request(CONFIG, "update", {"state": {"desired": {"blob": "x" * 64}}})
    assert not accepted
    assert answer["code"] == 413


async def test_malformed_requests_are_400(service: ShadowService, device: ShadowCaller) -> None:
    accepted, answer = await device.request(CONFIG, "update", b'{"state": {"desired": ')
    assert (accepted, answer) == (False, {"code": 400, "message": "Invalid JSON"})
    accepted, answer = await device.request(CONFIG, "update", {"clientToken": "no-state"})
    assert (accepted, answer) == (
        False,
        {"code": 400, "message": "Missing required node: state", "clientToken": "no-state"},
    )
    assert service.counts["update/rejected"] == 2
    assert service.document(THING, "config") is None


async def test_documents_carry_previous_and_current(
    service: ShadowService, device: ShadowCaller, watcher: Consumer
) -> None:
    await device.request(CONFIG, "update", {"state": {"reported": {"a": 1}}, "clientToken": "one"})
    await device.request(CONFIG, "update", {"state": {"desired": {"a": 2}}, "clientToken": "two"})
    first, second = await wait_events(watcher, "update/documents", 2)
    v1 = {"state": {"reported": {"a": 1}}, "metadata": {"reported": {"a": {"timestamp": NOW}}}, "version": 1}
    assert first == {"previous": None, "current": v1, "timestamp": NOW, "clientToken": "one"}
    v2 = {
        "state": {"desired": {"a": 2}, "reported": {"a": 1}},
        "metadata": {"desired": {"a": {"timestamp": NOW}}, "reported": {"a": {"timestamp": NOW}}},
        "version": 2,
    }
    assert second == {"previous": v1, "current": v2, "timestamp": NOW, "clientToken": "two"}
    # Answers come before events, in the order the state changed.
    topics = [t.removeprefix(PREFIX + "/") for t, _ in watcher.messages if not t.endswith(("/update", "/get"))]
    assert topics[:3] == ["update/accepted", "update/documents", "update/accepted"]


async def test_named_shadows_of_one_thing_are_independent(service: ShadowService, device: ShadowCaller) -> None:
    other, classic = ShadowKey(THING, "other"), ShadowKey(THING)
    await device.request(CONFIG, "update", {"state": {"desired": {"a": 1}}})
    await device.request(other, "update", {"state": {"desired": {"a": 2}}})
    await device.request(other, "update", {"state": {"desired": {"a": 3}}})
    await device.request(classic, "update", {"state": {"reported": {"a": 4}}})
    _, config_doc = await device.request(CONFIG, "get")
    _, other_doc = await device.request(other, "get")
    assert (config_doc["state"]["desired"], config_doc["version"]) == ({"a": 1}, 1)
    assert (other_doc["state"]["desired"], other_doc["version"]) == ({"a": 3}, 2)
    accepted, answer = await device.request(other, "delete", {"clientToken": "del"})
    assert (accepted, answer) == (True, {"version": 2, "timestamp": NOW, "clientToken": "del"})
    assert service.document(THING, "other") is None
    assert service.document(THING, "config") is not None
    assert service.document(THING) is not None
    accepted, answer = await device.request(other, "delete")
    assert (accepted, answer) == (False, {"code": 404, "message": "No shadow exists with name: 'other'"})


async def test_the_cloud_side_sets_desired_and_the_device_hears_it(
    service: ShadowService, device: ShadowCaller, watcher: Consumer
) -> None:
    await device.request(CONFIG, "update", {"state": {"reported": {"rate_ms": 1000}}})
    answer = await service.set_desired(THING, "config", {"rate_ms": 250}, version=1, client_token="op")  # noqa: S106 - a request id
    assert answer == {
        "state": {"desired": {"rate_ms": 250}},
        "metadata": {"desired": {"rate_ms": {"timestamp": NOW}}},
        "version": 2,
        "timestamp": NOW,
        "clientToken": "op",
    }
    [delta] = await wait_events(watcher, "update/delta", 1)
    assert delta == {
        "version": 2,
        "timestamp": NOW,
        "state": {"rate_ms": 250},
        "metadata": {"rate_ms": {"timestamp": NOW}},
        "clientToken": "op",
    }
    assert len(await wait_events(watcher, "update/accepted", 2)) == 2
    with pytest.raises(ShadowRequestError) as refused:
        await service.set_desired(THING, "config", {"rate_ms": 1}, version=1)
    assert (refused.value.code, refused.value.message) == (409, "Version conflict")
    assert events(watcher, "update/rejected") == []  # API refusals are not published over MQTT
    assert await service.delete(THING, "config") == {"version": 2, "timestamp": NOW}
    with pytest.raises(ShadowRequestError, match="404"):
        await service.delete(THING, "config")


async def test_requests_over_the_rate_limit_are_429(pki: Pki, broker: MosquittoBroker, device: ShadowCaller) -> None:
    async with running_service(pki, broker, rate_limit_per_s=1.0) as svc:
        first = await device.request(CONFIG, "get", {"clientToken": "1"})
        second = await device.request(CONFIG, "get", {"clientToken": "2"})
    assert first == (False, {"code": 404, "message": "No shadow exists with name: 'config'", "clientToken": "1"})
    assert second == (False, {"code": 429, "message": "Too Many Requests", "clientToken": "2"})
    assert svc.counts["get/rejected"] == 2


def run_cli(pki: Pki, broker: MosquittoBroker, *args: str) -> subprocess.CompletedProcess[str]:
    where = ["--pki", str(pki.directory), "--port", str(broker.port)]
    return subprocess.run(
        [sys.executable, "-m", "simulators.shadow", args[0], *where, *args[1:]],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_cli_serves_and_sets_desired_by_hand(pki: Pki, broker: MosquittoBroker, tmp_path: Path) -> None:
    where = ["--pki", str(pki.directory), "--port", str(broker.port)]
    server = subprocess.Popen(
        [sys.executable, "-m", "simulators.shadow", "serve", *where],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().startswith("READY shadow service on mqtts://127.0.0.1:")
        desired = tmp_path / "desired.json"
        desired.write_text(json.dumps({"rate_ms": 250}))
        done = run_cli(pki, broker, "set", "--thing", THING, "--name", "cli", "--file", str(desired))
        assert done.returncode == 0, done.stderr
        assert done.stderr.strip() == f"$aws/things/{THING}/shadow/name/cli/update/accepted"
        assert json.loads(done.stdout)["state"] == {"desired": {"rate_ms": 250}}
        stale = run_cli(pki, broker, "set", "--thing", THING, "--name", "cli", "--reported", "{}", "--version", "7")
        assert stale.returncode == 1
        assert json.loads(stale.stdout)["code"] == 409
        got = run_cli(pki, broker, "get", "--thing", THING, "--name", "cli")
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout)["state"]["delta"] == {"rate_ms": 250}
    finally:
        stop_process(server)
    assert server.returncode == 0
