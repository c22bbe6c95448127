"""Readers against the project's PLC simulators on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edge_gateway.model import Quality
from edge_gateway.sources.base import SourceState
from edge_gateway.sources.modbus.config import ModbusTcpSource
from edge_gateway.sources.modbus.reader import ModbusReader
from edge_gateway.sources.opcua.config import OpcUaSource
from edge_gateway.sources.opcua.reader import OpcUaReader
from simulators.modbus_plc import ModbusPlc
from simulators.opcua_plc import OpcUaPlc, node_id
from simulators.ports import free_port
from simulators.process import stop_process
from tests.support import MODBUS_TICK_MS, Collected, Starter, start_sim


def opcua_config(port: int, extra_nodes: list[dict[str, str]] | None = None) -> OpcUaSource:
    nodes = [
        {"alias": f"plc.{tag.lower()}", "node_id": node_id(tag)}
        for tag in ("Counter", "Temperature", "Pressure", "Speed", "Running", "State")
    ]
    return OpcUaSource.model_validate(
        {
            "type": "opcua",
            "name": "plc",
            "endpoint": f"opc.tcp://127.0.0.1:{port}",
            "publishing_interval_ms": 100,
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
            "nodes": nodes + (extra_nodes or []),
        }
    )


async def test_opcua_counter_arrives_complete_in_order_with_types(start_task: Starter) -> None:
    port = free_port()
    async with OpcUaPlc(port=port, tick_ms=50):
        sink = Collected()
        reader = OpcUaReader(opcua_config(port, [{"alias": "plc.ghost", "node_id": "ns=2;s=Line1.Ghost"}]))
        start_task(reader.run(sink))
        await sink.wait(lambda: len(sink.values("plc.counter")) >= 30, 15)
        counter = sink.values("plc.counter")
        assert counter == list(range(counter[0], counter[0] + len(counter)))  # +1 each, no gap, in order
        assert isinstance(sink.values("plc.temperature")[0], float)
        assert isinstance(sink.values("plc.speed")[0], int)
        assert isinstance(sink.values("plc.running")[0], bool)
        assert sink.values("plc.state")[0] in ("RUNNING", "IDLE")
        ghost = [r for r in sink.readings if r.point == "plc.ghost"]
        assert len(ghost) == 1
        assert ghost[0].quality is Quality.BAD
        assert ghost[0].status == 0x80340000  # BadNodeIdUnknown, the original code kept
        good = [r for r in sink.readings if r.quality is Quality.GOOD]
        assert all(r.source_ts_ns is not None for r in good)
        assert reader.status.state is SourceState.CONNECTED
        assert reader.status.errors_by_kind == {"bad_node": 1}


async def test_opcua_reader_reconnects_after_plc_restart(start_task: Starter) -> None:
    port = free_port()
    proc = start_sim("simulators.opcua_plc", port)
    try:
        sink = Collected()
        reader = OpcUaReader(opcua_config(port))
        start_task(reader.run(sink))
        await sink.wait(lambda: len(sink.values("plc.counter")) >= 5, 15)
        stop_process(proc)
        await sink.wait(lambda: reader.status.state is SourceState.RECONNECTING, 10)
        before = len(sink.readings)
        proc = start_sim("simulators.opcua_plc", port)
        await sink.wait(lambda: reader.status.state is SourceState.CONNECTED, 20)
        await sink.wait(lambda: any(r.point == "plc.counter" for r in sink.readings[before:]), 10)
        assert reader.status.reconnects >= 1
    finally:
        stop_process(proc)


def modbus_config(port: int, poll_ms: int = 50, extra: list[dict[str, Any]] | None = None) -> ModbusTcpSource:
    points: list[dict[str, Any]] = [
        {"alias": "m.counter", "address": 0, "data_type": "uint32"},
        {"alias": "m.temperature", "address": 2, "data_type": "int16", "scale": 0.1},
        {"alias": "m.pressure", "address": 3, "data_type": "float32"},
        {"alias": "m.speed", "address": 5, "data_type": "uint16"},
        {"alias": "m.position", "address": 6, "data_type": "int32"},
        {"alias": "m.energy", "table": "input", "address": 0, "data_type": "uint32"},
        {"alias": "m.flow", "table": "input", "address": 2, "data_type": "float32", "word_order": "little"},
        {"alias": "m.ambient", "table": "input", "address": 4, "data_type": "int16", "scale": 0.1},
    ]
    return ModbusTcpSource.model_validate(
        {
            "type": "modbus",
            "name": "m",
            "host": "127.0.0.1",
            "port": port,
            "poll_interval_ms": poll_ms,
            "timeout_s": 1.0,
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
            "points": points + (extra or []),
        }
    )


async def test_modbus_values_decode_to_what_the_plc_holds(start_task: Starter) -> None:
    port = free_port()
    async with ModbusPlc(port=port, tick_ms=200) as plc:
        sink = Collected()
        reader = ModbusReader(modbus_config(port, poll_ms=20))
        assert len(reader.requests) == 2  # holding 0..7 and input 0..4, one read each
        start_task(reader.run(sink))
        await sink.wait(lambda: len(sink.values("m.counter")) >= 3, 10)
        # Compare one whole poll with the PLC's state at that tick (the counter identifies the tick).
        plc.step()  # freeze-frame: read the registers the PLC has now and the value it computed
        await sink.wait(lambda: plc.counter in sink.values("m.counter"), 5)
        latest = {}
        for r in sink.readings:
            if r.point == "m.counter" and r.value == plc.counter:
                ts = r.gateway_ts_ns
                latest = {x.point: x.value for x in sink.readings if x.gateway_ts_ns == ts}
                break
        h, i = plc.holding, plc.input
        assert latest["m.counter"] == (h[0] << 16) | h[1]
        assert latest["m.temperature"] == pytest.approx((h[2] - 65536 if h[2] > 32767 else h[2]) / 10)
        assert latest["m.speed"] == h[5]
        pressure, flow = latest["m.pressure"], latest["m.flow"]
        assert isinstance(pressure, float)
        assert 5.0 < pressure < 7.0
        assert isinstance(flow, float)
        assert 10.0 < flow < 15.0  # low word first decoded right
        assert latest["m.energy"] == (i[0] << 16) | i[1]


async def test_modbus_counter_has_no_gaps_when_polled_faster_than_it_ticks(start_task: Starter) -> None:
    """The simulator runs in its own process: a stall of this test's event loop delays the reader's polls
    but cannot make the simulator's drift-free ticks catch up in a burst. Polled every 20 ms, ticking every
    250 ms, a gap needs the reader to miss twelve poll slots in a row: none is allowed."""
    port = free_port()
    proc = start_sim("simulators.modbus_plc", port, tick_ms=MODBUS_TICK_MS)
    try:
        sink = Collected()
        reader = ModbusReader(modbus_config(port, poll_ms=20))
        start_task(reader.run(sink))
        await sink.wait(lambda: len(set(sink.values("m.counter"))) >= 12, 60)  # about 3 s; the timeout gives up
        values = sink.values("m.counter")
    finally:
        stop_process(proc)
    assert values == sorted(values)  # never back
    distinct = sorted(set(values))
    missing = sorted(set(range(distinct[0], distinct[-1] + 1)) - set(distinct))
    assert not missing, f"counter values never read: {missing}"
    assert len(values) > len(distinct)  # polled faster than it ticks: some tick was read more than once


async def test_modbus_illegal_address_is_bad_with_reason_and_others_stay_good(start_task: Starter) -> None:
    port = free_port()
    async with ModbusPlc(port=port):
        sink = Collected()
        reader = ModbusReader(
            modbus_config(port, extra=[{"alias": "m.missing", "address": 500, "data_type": "uint16"}])
        )
        start_task(reader.run(sink))
        await sink.wait(lambda: any(r.point == "m.missing" for r in sink.readings) and sink.values("m.counter"), 10)
        missing = next(r for r in sink.readings if r.point == "m.missing")
        assert missing.quality is Quality.BAD
        assert missing.value is None
        assert "modbus exception 2 (illegal data address) reading holding registers 500..500 from unit 1" in str(
            missing.status
        )
        assert reader.status.errors_by_kind["exception"] >= 1
        assert reader.status.state is SourceState.CONNECTED


async def test_modbus_reader_marks_the_gap_and_reconnects_after_plc_restart(start_task: Starter) -> None:
    port = free_port()
    proc = start_sim("simulators.modbus_plc", port)
    try:
        sink = Collected()
        reader = ModbusReader(modbus_config(port))
        start_task(reader.run(sink))
        await sink.wait(lambda: len(sink.values("m.counter")) >= 3, 10)
        stop_process(proc)
        await sink.wait(lambda: reader.status.state is SourceState.RECONNECTING, 10)
        gap = [r for r in sink.readings if r.quality is Quality.BAD]
        assert {r.point for r in gap} >= {"m.counter", "m.speed"}
        assert "lost" in str(gap[0].status) or "connect" in str(gap[0].status)
        calls = sink.calls
        await asyncio.sleep(1.0)
        assert sink.calls - calls <= 1  # no hot loop of BAD readings while the PLC is away
        before = len(sink.readings)
        proc = start_sim("simulators.modbus_plc", port)
        await sink.wait(lambda: any(r.quality is Quality.GOOD for r in sink.readings[before:]), 15)
        assert reader.status.reconnects >= 1
        assert reader.status.state is SourceState.CONNECTED
    finally:
        stop_process(proc)
