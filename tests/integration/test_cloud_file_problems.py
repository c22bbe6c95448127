"""Certificate, key and CA files that cannot make an MQTT client: collection goes on, the status says which file
and why, and fixed or rotated files are picked up without a restart (publish/transport/mqtt.py)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from edge_gateway.errors import PublishError
from edge_gateway.publish.transport.mqtt import MqttTransport
from edge_gateway.publish.transport.mqtt_client import build_client
from simulators.iot_core import MosquittoBroker
from simulators.pki import Pki
from tests.support import COUNTERS, THING, Consumer, GatewayProcess, gateway_config, mqtt_settings


def _copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing cert", r"publisher\.mqtt\.cert_file '.*/absent\.pem' does not exist: install the device certificate"),
        ("key not PEM", r"publisher\.mqtt\.key_file '.*/device\.key' is not the device's private key \(PEM\)"),
        ("cert holds a key", r"publisher\.mqtt\.cert_file '.*/device\.pem' is not the device certificate"),
        ("CA not PEM", r"publisher\.mqtt\.ca_file '.*/ca\.pem' is not the CA certificate"),
        ("key of another cert", r"private key publisher\.mqtt\.key_file '.*/device\.key' does not match the certif"),
    ],
)
def test_a_client_that_cannot_be_built_names_the_setting_the_file_and_what_to_do(
    pki: Pki, broker: MosquittoBroker, tmp_path: Path, case: str, expected: str
) -> None:
    cert = _copy(pki.directory / f"{THING}.pem", tmp_path / "device.pem")
    key = _copy(pki.directory / f"{THING}.key", tmp_path / "device.key")
    ca = _copy(pki.ca_file, tmp_path / "ca.pem")
    if case == "missing cert":
        cert = tmp_path / "absent.pem"
    elif case == "key not PEM":
        key.write_text("not a key\n")
    elif case == "cert holds a key":
        _copy(key, cert)
    elif case == "CA not PEM":
        ca.write_bytes(b"\x30\x82binary DER, not PEM")
    else:
        _copy(pki.directory / "test-consumer.key", key)
    settings = mqtt_settings(pki, broker, cert_file=cert, key_file=key, ca_file=ca)
    with pytest.raises(PublishError, match=expected) as info:
        build_client(settings, "t", None, {})
    assert info.value.retryable
    assert "picks up a fixed file without a restart" in str(info.value)
    assert isinstance(info.value.__cause__, OSError | RuntimeError)  # translated once, from the library's error


@pytest.fixture
async def watched() -> AsyncIterator[Callable[[MqttTransport], None]]:
    """Run ``watch_files`` of transports as the supervisor does; stop them (and the transports) in teardown."""
    running: list[tuple[MqttTransport, asyncio.Task[None]]] = []

    def watch(t: MqttTransport) -> None:
        running.append((t, asyncio.get_running_loop().create_task(t.watch_files(), name="mqtt:files")))

    yield watch
    for t, task in running:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await t.stop()


async def test_a_key_that_does_not_match_is_reported_and_picked_up_at_once_when_fixed(
    pki: Pki, broker: MosquittoBroker, tmp_path: Path, watched: Callable[[MqttTransport], None]
) -> None:
    cert = _copy(pki.directory / f"{THING}.pem", tmp_path / "device.pem")
    key = _copy(pki.directory / "test-consumer.key", tmp_path / "device.key")
    # A backoff far longer than the test: only noticing the changed file can bring the connection.
    settings = mqtt_settings(pki, broker, cert_file=cert, key_file=key, reconnect_min_s=600, reconnect_max_s=600)
    t = MqttTransport(settings, f"{THING}-gateway")
    await t.start()  # does not raise: the transport is "not connected" and says why
    watched(t)
    assert not t.connected
    assert "does not match" in (t.status.client_error or "")
    assert t.status.last_error == t.status.client_error
    with pytest.raises(PublishError, match="key_file") as info:
        await t.publish("dt/x", b"x")
    assert info.value.retryable  # the publisher holds the data and tries again

    _copy(pki.directory / f"{THING}.key", key)  # fixed in place
    await t.wait_connected(30)
    assert t.status.client_error is None
    assert await t.publish("dt/x", b"x") == 16  # NO_MATCHING_SUBSCRIBERS: delivered


async def test_rotated_files_are_used_at_once_by_a_clean_reconnect(
    pki: Pki, broker: MosquittoBroker, tmp_path: Path, watched: Callable[[MqttTransport], None]
) -> None:
    # Before: an identity whose ACL (tests/support.py) does not allow dt/#, so its publishes are refused.
    cert = _copy(pki.directory / "shadow-cli.pem", tmp_path / "device.pem")
    key = _copy(pki.directory / "shadow-cli.key", tmp_path / "device.key")
    t = MqttTransport(mqtt_settings(pki, broker, cert_file=cert, key_file=key), f"{THING}-gateway")
    await t.start()
    watched(t)
    await t.wait_connected(10)
    with pytest.raises(PublishError, match=r"NOT_AUTHORIZED \(135\)"):
        await t.publish("dt/rotation", b"old certificate")

    _copy(pki.directory / f"{THING}.pem", cert)  # rotation: new certificate and key replace the files
    _copy(pki.directory / f"{THING}.key", key)
    async with asyncio.timeout(30):
        while not (t.connected and t.status.connects == 2):  # one clean reconnect, no restart
            await asyncio.sleep(0.05)
    assert await t.publish("dt/rotation", b"new certificate") == 16  # allowed: the new identity
    assert t.status.client_error is None


async def test_a_gateway_without_its_certificate_collects_and_publishes_the_backlog_once_it_is_installed(
    tmp_path: Path, pki: Pki, broker: MosquittoBroker, plcs: tuple[int, int], consumer: Consumer
) -> None:
    cert = tmp_path / "later" / "device.pem"  # does not exist yet
    config = gateway_config(tmp_path, pki, broker, opcua_port=plcs[0], modbus_port=plcs[1])
    config["publisher"]["mqtt"]["cert_file"] = str(cert)
    gateway = GatewayProcess(config, tmp_path)
    await consumer.subscribe("dt/#")
    try:
        gateway.start()
        broken = gateway.wait_status(lambda s: bool(s["mqtt"]["client_error"]) and s["buffer"]["appended"] > 0, 30)
        assert f"publisher.mqtt.cert_file '{cert}' does not exist" in broken["mqtt"]["client_error"]
        # Collection goes on while the client is retried (with backoff; logged once: see the end).
        held = gateway.wait_status(
            lambda s: s["buffer"]["appended"] > broken["buffer"]["appended"] + 50 and s["mqtt"]["build_failures"] >= 3,
            30,
        )
        assert not held["mqtt"]["connected"]
        assert {s["state"] for s in held["sources"].values()} == {"connected"}
        assert consumer.messages == []  # nothing reached the broker: not even a presence
        fixed_ms = held["time"] * 1000  # every reading in ``held`` was collected before this moment

        _copy(pki.directory / f"{THING}.pem", cert)  # installed in place: no restart
        backlog = held["buffer"]["last_seq"]
        caught_up = gateway.wait_status(lambda s: s["destinations"]["cloud"]["points"] >= backlog, 60)
        assert caught_up["mqtt"]["connected"]
        assert caught_up["mqtt"]["client_error"] is None
        assert caught_up["mqtt"]["connects"] == 1
        await consumer.wait_for(lambda: sum(int(d["n"]) for d in consumer.docs()) >= backlog, 30)
    finally:
        gateway.stop()
    assert gateway.proc is not None
    assert gateway.proc.returncode == 0  # one process from start to stop
    # The backlog went out, from the very first reading on, after the fresh status.
    assert min(d["seq"][0] for d in consumer.docs()) == 1
    for alias in COUNTERS:
        assert any(ts < fixed_ms for ts, _value in consumer.points(alias)), f"{alias}: no reading from the outage"
    topics = [topic for topic, _payload in consumer.messages]
    assert topics[0].endswith("/status")
    log = gateway.log()
    assert "Traceback" not in log
    assert log.count("mqtt: cannot build the MQTT client") == 1  # logged once, not once per retry
