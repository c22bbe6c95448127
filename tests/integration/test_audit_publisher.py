"""The audit publisher against the real client (MqttTransport) and Mosquitto with mutual TLS."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge_gateway.gxp.audit import AuditTrail, entry_hash, read_entries
from edge_gateway.gxp.audit_publisher import AuditPublisher
from edge_gateway.publish.transport.mqtt import MqttTransport
from edge_gateway.util.backoff import Backoff
from simulators.iot_core import MosquittoBroker
from simulators.pki import Pki
from tests.support import ALLOW_ALL_ACL, DENY_GATEWAY_ACL, THING, Consumer, mqtt_settings

TOPIC = f"dt/{THING}/audit"


@contextlib.asynccontextmanager
async def gateway_transport(pki: Pki, broker: MosquittoBroker) -> AsyncIterator[MqttTransport]:
    transport = MqttTransport(mqtt_settings(pki, broker), f"{THING}-gateway")
    await transport.start()
    await transport.wait_connected(10)
    try:
        yield transport
    finally:
        await transport.stop()


@contextlib.asynccontextmanager
async def running(publisher: AuditPublisher) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(publisher.run(), name="audit-publisher")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def received(consumer: Consumer) -> list[dict[str, Any]]:
    return [json.loads(p) for t, p in consumer.messages if t == TOPIC]


def seqs(consumer: Consumer) -> list[int]:
    """Arrival order with replays removed (at-least-once: a replay is the same entry again)."""
    out: list[int] = []
    for doc in received(consumer):
        if doc["seq"] not in out:
            out.append(doc["seq"])
    return out


async def append(trail: AuditTrail, n: int, start: int) -> None:
    for i in range(start, start + n):
        await asyncio.to_thread(trail.append, "config.applied", source="shadow", shadow_version=i, client_token=f"c{i}")


def assert_chain_as_stored(consumer: Consumer, directory: Path) -> None:
    stored = {e.seq: e.to_json() for e in read_entries(directory)}
    docs = received(consumer)
    for (topic, payload), doc in zip([m for m in consumer.messages if m[0] == TOPIC], docs, strict=True):
        assert topic == TOPIC
        assert payload == stored[doc["seq"]]  # byte for byte what the trail holds
        assert entry_hash(doc) == doc["hash"]
    by_seq = {d["seq"]: d for d in docs}
    for seq in sorted(by_seq)[1:]:
        assert by_seq[seq]["prev"] == by_seq[seq - 1]["hash"]


async def test_entries_are_published_in_order_and_a_restart_resumes_after_the_last_puback(
    pki: Pki, broker: MosquittoBroker, consumer: Consumer, tmp_path: Path
) -> None:
    await consumer.subscribe(f"dt/{THING}/audit")
    state = tmp_path / "audit-publish.json"
    with AuditTrail(tmp_path / "audit", max_file_bytes=4096, max_files=None) as trail:
        await append(trail, 5, 1)  # written before the publisher runs
        async with gateway_transport(pki, broker) as transport:
            publisher = AuditPublisher(trail, transport.publish, TOPIC, state, backoff=Backoff(0.1, 1.0))
            async with running(publisher):
                await consumer.wait_for(lambda: len(seqs(consumer)) == 5, 10)
                await append(trail, 3, 6)  # woken by the append, no polling
                await consumer.wait_for(lambda: len(seqs(consumer)) == 8, 10)
                await asyncio.wait_for(publisher.wait_acked(8), 10)
            assert json.loads(state.read_text())["seq"] == 8
            await append(trail, 2, 9)  # while the publisher is stopped
            publisher = AuditPublisher(trail, transport.publish, TOPIC, state, backoff=Backoff(0.1, 1.0))
            assert publisher.status()["pending"] == 2
            async with running(publisher):
                await consumer.wait_for(lambda: len(seqs(consumer)) == 10, 10)
    assert [d["seq"] for d in received(consumer)] == list(range(1, 11))  # nothing sent twice
    assert_chain_as_stored(consumer, tmp_path / "audit")


@pytest.mark.slow
async def test_a_broker_outage_loses_no_entry(
    pki: Pki, broker: MosquittoBroker, consumer: Consumer, tmp_path: Path
) -> None:
    await consumer.subscribe(f"dt/{THING}/audit")
    with AuditTrail(tmp_path / "audit", max_file_bytes=4096, max_files=None) as trail:
        async with gateway_transport(pki, broker) as transport:
            publisher = AuditPublisher(
                trail, transport.publish, TOPIC, tmp_path / "state.json", backoff=Backoff(0.1, 1.0)
            )
            async with running(publisher):
                await append(trail, 4, 1)
                # Everything acknowledged so far has reached the consumer: Mosquitto acknowledges before it
                # forwards, so stopping it earlier could drop a message IoT Core would not (test_outages.py).
                await consumer.wait_for(lambda: len(seqs(consumer)) == 4, 10)
                broker.stop()
                async with asyncio.timeout(10):
                    while transport.connected:
                        await asyncio.sleep(0.05)
                await append(trail, 6, 5)  # the gateway keeps auditing while offline
                assert publisher.acked_seq == 4
                # Back with the gateway refused (PUBACK 135, retried with backoff) until the consumer has
                # re-subscribed, so the consumer cannot miss what is published in between.
                broker.set_acl(DENY_GATEWAY_ACL)
                broker.start()
                await consumer.transport.wait_connected(20)
                await consumer.subscribe(f"dt/{THING}/audit")
                broker.set_acl(ALLOW_ALL_ACL)
                await consumer.wait_for(lambda: len(seqs(consumer)) == 10, 30)
                await append(trail, 1, 11)
                await consumer.wait_for(lambda: len(seqs(consumer)) == 11, 10)
                await asyncio.wait_for(publisher.wait_acked(11), 10)
    assert seqs(consumer) == list(range(1, 12))
    assert_chain_as_stored(consumer, tmp_path / "audit")


async def test_a_failure_code_is_retried_and_an_unsendable_entry_is_skipped_and_counted(tmp_path: Path) -> None:
    """With a publish coroutine that answers like the transport does: codes, retryable and permanent errors."""
    from edge_gateway.errors import PublishError  # noqa: PLC0415

    sent: list[int] = []
    answers = iter([135, 0])  # seq 1: refused once, then accepted

    async def publish(topic: str, payload: bytes) -> int:
        doc = json.loads(payload)
        if doc["seq"] == 2:
            raise PublishError("payload over IoT Core's 131072 bytes", retryable=False)
        if doc["seq"] == 3 and 3 not in sent:
            sent.append(3)
            raise PublishError("connection lost", retryable=True)
        code = next(answers) if doc["seq"] == 1 else 0
        if code < 0x80:
            sent.append(doc["seq"])
        return code

    with AuditTrail(tmp_path / "audit", max_file_bytes=4096, max_files=None) as trail:
        await append(trail, 4, 1)
        publisher = AuditPublisher(trail, publish, TOPIC, tmp_path / "state.json", backoff=Backoff(0.01, 0.02))
        async with running(publisher):
            await asyncio.wait_for(publisher.wait_acked(4), 10)
    assert sent == [1, 3, 3, 4]
    assert publisher.status() == {
        "acked_seq": 4,
        "pending": 0,
        "published": 3,
        "unpublishable": 1,
        "last_error": None,
    }
