"""Fixtures with real peers on loopback: a test PKI, Mosquitto with mutual TLS, an MQTT consumer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from edge_gateway.publish.mqtt import MqttTransport
from simulators.iot_core import MosquittoBroker, Pki, add_client, free_port, generate_pki
from tests.support import (
    ALLOW_ALL_ACL,
    MODBUS_TICK_MS,
    THING,
    Consumer,
    GatewayProcess,
    gateway_config,
    mqtt_settings,
    start_sim,
    stop_process,
)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    pki = generate_pki(directory, thing_name=THING)
    add_client(directory, "test-consumer")
    add_client(directory, "shadow-service")
    add_client(directory, "shadow-cli")
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


@pytest.fixture
def plcs() -> Iterator[tuple[int, int]]:
    """Both PLC simulators as subprocesses: (OPC UA port, Modbus port)."""
    opcua_port, modbus_port = free_port(), free_port()
    opcua = start_sim("simulators.opcua_plc", opcua_port)
    modbus = start_sim("simulators.modbus_plc", modbus_port, tick_ms=MODBUS_TICK_MS)
    yield opcua_port, modbus_port
    stop_process(opcua)
    stop_process(modbus)


@pytest.fixture
def gateway(tmp_path: Path, pki: Pki, broker: MosquittoBroker, plcs: tuple[int, int]) -> Iterator[GatewayProcess]:
    """The gateway, configured for both simulators and the broker; the test starts it."""
    config = gateway_config(tmp_path, pki, broker, opcua_port=plcs[0], modbus_port=plcs[1])
    gw = GatewayProcess(config, tmp_path)
    yield gw
    gw.stop()
