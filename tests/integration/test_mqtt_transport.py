"""MqttTransport against a real Mosquitto with mutual TLS."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge_gateway.config.model import HttpProxySettings
from edge_gateway.errors import PublishError
from edge_gateway.publish.transport.mqtt import MqttTransport
from edge_gateway.publish.transport.topics import check_iot_core_limits, topic_matches
from simulators.iot_core import MosquittoBroker
from simulators.pki import Pki, generate_pki
from tests.http_proxy import HttpConnectProxy
from tests.support import DENY_GATEWAY_ACL, THING, Consumer, mqtt_settings


async def started(pki: Pki, broker: MosquittoBroker) -> MqttTransport:
    t = MqttTransport(mqtt_settings(pki, broker), f"{THING}-gateway")
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
    # Within our limit, but the whole packet is over the broker's max_packet_size (as on IoT Core):
    # awscrt refuses it (5147) and that is mapped to a permanent error too.
    with pytest.raises(PublishError, match=r"AWS_ERROR_MQTT5_PACKET_VALIDATION.*make the message smaller") as info:
        await t.publish("dt/x", b"x" * (128 * 1024))
    assert info.value.retryable is False
    assert t.connected
    assert await t.publish("dt/x", b"ok") == 16
    assert t.status.disconnects == 0
    await t.stop()


async def test_a_refusal_in_the_puback_is_a_retryable_error_with_its_reason(pki: Pki, broker: MosquittoBroker) -> None:
    t = await started(pki, broker)
    broker.set_acl(DENY_GATEWAY_ACL)  # as IoT Core with a policy that lacks iot:Publish
    await asyncio.sleep(0.3)  # SIGHUP reload
    with pytest.raises(PublishError, match=r"NOT_AUTHORIZED \(135\)") as info:
        await t.publish("dt/x", b"denied")
    assert info.value.retryable is True
    assert info.value.reason_code == 135
    assert t.connected
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


async def test_a_frozen_broker_is_noticed_by_the_keep_alive_ping_and_the_session_resumes(
    pki: Pki, broker: MosquittoBroker
) -> None:
    t = await started(pki, broker)
    broker.freeze()  # the TCP connection stays open, nothing answers: a half-open path
    # Nothing but the unanswered PINGREQ can notice a silent path: the error says that is what did. How long
    # it takes (keep-alive + ping timeout) is measured by `python -m bench.timings`, not asserted here.
    async with asyncio.timeout(4 * (t.settings.keep_alive_s + t.settings.ping_timeout_ms / 1000)):  # gives up
        while t.connected:
            await asyncio.sleep(0.05)
    assert "PING_RESPONSE_TIMEOUT" in (t.status.last_error or "")
    assert t.status.disconnects == 1
    broker.thaw()
    await t.wait_connected(30)
    assert t.status.rejoined_session  # same broker process: the session (and subscriptions) survived
    assert await t.publish("dt/after-freeze", b"x") in (0, 16)
    await t.stop()


async def test_subscriptions_come_back_after_a_broker_restart_loses_the_session(
    pki: Pki, broker: MosquittoBroker
) -> None:
    sender = await started(pki, broker)
    receiver = MqttTransport(mqtt_settings(pki, broker, client="test-consumer"), "test-consumer")
    await receiver.start()
    await receiver.wait_connected(10)
    received: list[tuple[str, bytes, int]] = []
    arrived = asyncio.Event()

    def on_message(topic: str, payload: bytes) -> None:
        received.append((topic, payload, threading.get_ident()))
        arrived.set()

    await receiver.subscribe("cmd/#", on_message)
    assert await sender.publish("cmd/a", b"before") == 0
    await asyncio.wait_for(arrived.wait(), 5)

    broker.stop()  # persistence false: the restarted broker knows no session, no subscription
    broker.start()
    await sender.wait_connected(10)
    async with asyncio.timeout(10):
        while receiver.status.connects < 2:
            await asyncio.sleep(0.05)
    assert receiver.status.rejoined_session is False
    arrived.clear()
    async with asyncio.timeout(10):
        while await sender.publish("cmd/b", b"after") != 0:  # 16 until the re-subscription is in place
            await asyncio.sleep(0.1)
    await asyncio.wait_for(arrived.wait(), 5)
    assert [(topic, payload) for topic, payload, _ in received][:1] == [("cmd/a", b"before")]
    assert ("cmd/b", b"after") in [(topic, payload) for topic, payload, _ in received]
    assert {ident for _, _, ident in received} == {threading.get_ident()}  # on the event loop thread
    await receiver.stop()
    await sender.stop()


_WILL_CLIENT = """
import asyncio, sys, time
from pathlib import Path
from edge_gateway.config.model import MqttSettings
from edge_gateway.publish.transport.mqtt import MqttTransport

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


# IoT Core's quotas per connection, with the token bucket's first burst allowed for: 400 small publishes
# cannot be acknowledged in less than 400 / 110 s, 40 x 96 KiB in less than 3,840 / 540 s.
SMALL, BIG, BIG_KIB = 400, 40, 96
MIN_SMALL_S, MIN_BIG_S = SMALL / 110, BIG * BIG_KIB / 540


async def test_iot_core_flow_control_spreads_publishes_and_bytes_out_and_still_delivers_every_one(
    pki: Pki, broker: MosquittoBroker, consumer: Consumer
) -> None:
    """Both bounds of a limiter. Upper: the sends take at least as long as IoT Core's rates allow (a load on
    the machine only makes them take longer, so this cannot fail for being slow). Lower: every publish is
    acknowledged and arrives (a limiter that stalls, or drops, fails); the timeout only gives up waiting, at
    many times the nominal 11.5 s. The rates themselves are measured by `python -m bench.timings`."""
    arrived: list[tuple[str, int]] = []
    await consumer.transport.subscribe("flow/#", lambda topic, p: arrived.append((topic, len(p))))
    t = MqttTransport(mqtt_settings(pki, broker, iot_core_flow_control=True), f"{THING}-gateway")
    await t.start()
    await t.wait_connected(10)
    try:
        async with asyncio.timeout(120):
            # Many small messages: the publish rate is the limit.
            started = time.monotonic()
            small = await asyncio.gather(*(t.publish("flow/small", b"x") for _ in range(SMALL)))
            small_s = time.monotonic() - started
            # Fewer, big messages: the byte rate is the limit.
            started = time.monotonic()
            big = await asyncio.gather(*(t.publish("flow/big", b"y" * BIG_KIB * 1024) for _ in range(BIG)))
            big_s = time.monotonic() - started
            while len(arrived) < SMALL + BIG:
                await asyncio.sleep(0.05)
    finally:
        await t.stop()
    assert small == [0] * SMALL  # every one acknowledged by the broker, which had a subscriber for it
    assert big == [0] * BIG
    assert sorted(arrived) == sorted([("flow/small", 1)] * SMALL + [("flow/big", BIG_KIB * 1024)] * BIG)
    assert small_s >= MIN_SMALL_S, f"{SMALL} publishes in {small_s:.2f} s: over IoT Core's 100 publishes/s"
    assert big_s >= MIN_BIG_S, f"{BIG * BIG_KIB} KiB in {big_s:.2f} s: over IoT Core's 512 KiB/s"


async def _through(
    proxy: HttpConnectProxy, password: str, tmp_path: Path, pki: Pki, broker: MosquittoBroker
) -> MqttTransport:
    """A started transport using ``proxy`` as user "gw" with ``password`` (from a file, as configured)."""
    secret = tmp_path / "proxy-password"
    secret.write_text(password)
    settings = HttpProxySettings(host="127.0.0.1", port=proxy.port, username="gw", password_file=secret)
    t = MqttTransport(mqtt_settings(pki, broker, proxy=settings), f"{THING}-gateway")
    await t.start()
    return t


async def test_through_an_http_proxy_with_basic_authentication(
    tmp_path: Path, pki: Pki, broker: MosquittoBroker, consumer: Consumer
) -> None:
    await consumer.subscribe("dt/#")
    with HttpConnectProxy(credentials=("gw", "s3cret")) as proxy:
        t = await _through(proxy, "s3cret\n", tmp_path, pki, broker)
        await t.wait_connected(10)
        assert await t.publish("dt/test-gateway/p", b"via proxy") == 0
        await t.stop()
        assert proxy.requests == [(f"127.0.0.1:{broker.port}", True)]
    await consumer.wait_for(lambda: bool(consumer.messages), 5)
    assert consumer.messages == [("dt/test-gateway/p", b"via proxy")]


async def test_a_proxy_that_refuses_the_credentials_is_a_clear_connect_failure(
    tmp_path: Path, pki: Pki, broker: MosquittoBroker
) -> None:
    with HttpConnectProxy(credentials=("gw", "s3cret")) as proxy:
        t = await _through(proxy, "wrong", tmp_path, pki, broker)
        # awscrt usually reports AWS_ERROR_HTTP_PROXY_CONNECT_FAILED; when the proxy's close overtakes its
        # 407 on a loaded machine, an attempt reports AWS_IO_SOCKET_CLOSED instead: the next one says it.
        errors: list[str] = []
        async with asyncio.timeout(15):
            while not any("PROXY" in e or "407" in e for e in errors):
                if t.status.last_error and t.status.last_error not in errors[-1:]:
                    errors.append(t.status.last_error)
                await asyncio.sleep(0.02)
        await t.stop()
        assert not t.status.connects
        assert proxy.requests[0] == (f"127.0.0.1:{broker.port}", False)
    assert all("PROXY" in e or "407" in e or "SOCKET_CLOSED" in e for e in errors), errors
