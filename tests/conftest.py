"""Fixtures with real peers on loopback: a test PKI, Mosquitto with mutual TLS, an MQTT consumer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_gateway.publish.transport.mqtt import MqttTransport
from edge_gateway.sources.base import Sink, Source
from simulators.iot_core import MosquittoBroker
from simulators.opcua_process import OpcUaSimProcess
from simulators.pki import Pki, add_client, generate_pki
from simulators.ports import free_port
from simulators.process import stop_process
from simulators.shadow import ShadowService
from tests.support import (
    ALLOW_ALL_ACL,
    MODBUS_TICK_MS,
    THING,
    Consumer,
    GatewayProcess,
    PlcProcesses,
    Starter,
    gateway_config,
    mqtt_settings,
    start_sim,
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
def plc_processes() -> Iterator[PlcProcesses]:
    opcua_port, modbus_port = free_port(), free_port()
    procs = {"press": start_sim("simulators.opcua_plc", opcua_port)}
    try:
        procs["boiler"] = start_sim("simulators.modbus_plc", modbus_port, tick_ms=MODBUS_TICK_MS)
        yield PlcProcesses((opcua_port, modbus_port), procs)
    finally:
        for proc in procs.values():
            stop_process(proc)


@pytest.fixture
def plcs(plc_processes: PlcProcesses) -> tuple[int, int]:
    """Both PLC simulators as subprocesses: (OPC UA port, Modbus port)."""
    return plc_processes.ports


@pytest.fixture
def opcua_sim() -> Iterator[OpcUaSimProcess]:
    """The OPC UA simulator as a process the test starts, kills and restarts; stopped in teardown."""
    sim = OpcUaSimProcess(free_port())
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def running_opcua_sim() -> Iterator[OpcUaSimProcess]:
    """One started OPC UA simulator process shared by a module's tests (they must not stop it)."""
    sim = OpcUaSimProcess(free_port())
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def gateway(tmp_path: Path, pki: Pki, broker: MosquittoBroker, plcs: tuple[int, int]) -> Iterator[GatewayProcess]:
    """The gateway, configured for both simulators and the broker; the test starts it."""
    config = gateway_config(tmp_path, pki, broker, opcua_port=plcs[0], modbus_port=plcs[1])
    gw = GatewayProcess(config, tmp_path)
    yield gw
    gw.stop()


@pytest.fixture
async def shadow(pki: Pki, broker: MosquittoBroker) -> AsyncIterator[ShadowService]:
    """The Device Shadow service stand-in on the test broker."""
    async with ShadowService(mqtt_settings(pki, broker, client="shadow-service"), client_id="shadow-service") as svc:
        yield svc


@pytest.fixture
async def start_task() -> AsyncIterator[Starter]:
    """Run coroutines as tasks; cancel them in teardown and check that one cancel really stops each."""
    tasks: list[asyncio.Task[None]] = []

    def start(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name="test:task")
        tasks.append(task)
        return task

    yield start
    for task in tasks:
        task.cancel()
    async with asyncio.timeout(5):
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results


@pytest.fixture
def run_reader(start_task: Starter) -> Callable[[Source, Sink], asyncio.Task[None]]:
    """Run a source reader into a sink as a task, stopped (and checked to stop) in teardown."""

    def start(reader: Source, sink: Sink) -> asyncio.Task[None]:
        return start_task(reader.run(sink))

    return start
