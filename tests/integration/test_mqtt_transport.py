"""MqttTransport against a real Mosquitto with mutual TLS."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edge_gateway.errors import PublishError
from edge_gateway.publish.mqtt import MqttTransport, check_iot_core_limits, topic_matches
from simulators.iot_core import MosquittoBroker, Pki, generate_pki
from tests.support import THING, Consumer, mqtt_settings


async def started(settings_pki: Pki, broker: MosquittoBroker, **kw: object) -> MqttTransport:
    t = MqttTransport(mqtt_settings(settings_pki, broker), f"{THING}-gateway", **kw)  # type: ignore[arg-type]
    await t.start()
    await t.wait_connected(10)
    return t


async def test_publish_round_trip_and_no_subscriber_code_is_success(
    pki: Pki, broker: MosquittoBroker, consumer: Consumer
) -> None:
    t = await started(pki, broker)
    assert await t.publish("nobody/listens", b"x") == 16  # NO_MATCHING_SUBSCRIBERS is a success
    await consumer.subscribe("dt/#")
    payload = bytes(range(256)) * 100
    assert await t.publish("dt/test-gateway/a", payload) == 0
    await consumer.wait_for(lambda: bool(consumer.messages), 5)
    assert consumer.messages == [("dt/test-gateway/a", payload)]
    await t.stop()


async def test_oversized_payload_is_refused_and_the_connection_stays_up(pki: Pki, broker: MosquittoBroker) -> None:
    t = await started(pki, broker)
    with pytest.raises(PublishError, match="over IoT Core's 131072") as info:
        await t.publish("dt/x", b"x" * (128 * 1024 + 1))
    assert info.value.retryable is False
    assert t.connected
    assert await t.publish("dt/x", b"ok") == 16
    await t.stop()


def test_iot_core_topic_limits() -> None:
    check_iot_core_limits("$aws/rules/my_rule/a/b/c/d/e/f/g/h", b"")  # prefix not counted: 7 slashes
    with pytest.raises(PublishError, match="8 slashes"):
        check_iot_core_limits("a/b/c/d/e/f/g/h/i", b"")
    with pytest.raises(PublishError, match="over IoT Core's 256"):
        check_iot_core_limits("t" * 257, b"")
    with pytest.raises(PublishError, match="wildcard"):
        check_iot_core_limits("dt/+/x", b"")
    assert topic_matches("dt/#", "dt/a/b")
    assert topic_matches("dt/+/status", "dt/gw/status")
    assert not topic_matches("dt/+/status", "dt/gw/data")


async def test_broker_outage_is_noticed_and_the_client_reconnects_by_itself(pki: Pki, broker: MosquittoBroker) -> None:
    t = await started(pki, broker)
    broker.stop()
    async with asyncio.timeout(10):
        while t.connected:
            await asyncio.sleep(0.05)
    assert t.status.disconnects == 1
    pending = asyncio.create_task(t.publish("dt/queued", b"sent after reconnect"))
    await asyncio.sleep(1.0)
    assert not pending.done()  # held in the client's queue, not failed
    broker.start()
    await t.wait_connected(15)
    assert await asyncio.wait_for(pending, 10) in (0, 16)
    assert t.status.connects == 2
    await t.stop()


_WILL_CLIENT = """
import asyncio, sys, time
from pathlib import Path
from edge_gateway.config import MqttSettings
from edge_gateway.publish.mqtt import MqttTransport

async def main():
    s = MqttSettings.model_validate_json(sys.argv[1])
    t = MqttTransport(s, "will-client", will=("status/will-client", b"offline"))
    await t.start()
    await t.wait_connected(10)
    print("CONNECTED", flush=True)
    if sys.argv[2] == "clean":
        await t.stop()
        print("STOPPED", flush=True)
    time.sleep(60)

asyncio.run(main())
"""


@pytest.mark.parametrize("ending", ["kill", "clean"])
async def test_last_will_on_kill_but_not_on_clean_stop(
    pki: Pki, broker: MosquittoBroker, consumer: Consumer, ending: str
) -> None:
    await consumer.subscribe("status/#")
    settings = mqtt_settings(pki, broker).model_dump_json()
    proc = subprocess.Popen([sys.executable, "-c", _WILL_CLIENT, settings, ending], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "CONNECTED"
        if ending == "clean":
            assert proc.stdout.readline().strip() == "STOPPED"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        await asyncio.sleep(1.5)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    expected = [("status/will-client", b"offline")] if ending == "kill" else []
    assert consumer.messages == expected


async def test_client_certificate_from_a_foreign_ca_cannot_connect(
    pki: Pki, broker: MosquittoBroker, tmp_path: Path
) -> None:
    foreign = generate_pki(tmp_path / "foreign", thing_name="intruder")
    settings = mqtt_settings(pki, broker, cert_file=foreign.client_cert, key_file=foreign.client_key)
    t = MqttTransport(settings, "intruder")
    await t.start()
    with pytest.raises(PublishError, match="no MQTT connection"):
        await t.wait_connected(3)
    assert t.status.connection_failures >= 1
    assert "connect failed" in (t.status.last_error or "")
    await t.stop()
