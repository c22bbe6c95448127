"""Fixtures with real peers on loopback: a test PKI, Mosquitto with mutual TLS, an MQTT consumer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from edge_gateway.publish.mqtt import MqttTransport
from simulators.iot_core import MosquittoBroker, Pki, add_client, generate_pki
from tests.support import ALLOW_ALL_ACL, THING, Consumer, mqtt_settings


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    pki = generate_pki(directory, thing_name=THING)
    add_client(directory, "test-consumer")
    return pki


@pytest.fixture
def broker(pki: Pki, tmp_path: Path) -> Iterator[MosquittoBroker]:
    b = MosquittoBroker(pki, tmp_path / "broker")
    b.set_acl(ALLOW_ALL_ACL)
    b.start()
    yield b
    b.stop()


@pytest.fixture
async def consumer(pki: Pki, broker: MosquittoBroker) -> AsyncIterator[Consumer]:
    transport = MqttTransport(mqtt_settings(pki, broker, client="test-consumer"), "test-consumer")
    await transport.start()
    await transport.wait_connected(10)
    yield Consumer(transport)
    await transport.stop()
