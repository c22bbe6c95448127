"""OpcUaReader against the project's OPC UA PLC simulator on loopback: in-process for data checks, as a
subprocess where the PLC has to die and come back. No mocks: real asyncua server, real sessions."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from asyncua.client.client import Client

from edge_gateway.model import Quality, Reading
from edge_gateway.sources.base import SourceState
from edge_gateway.sources.opcua.config import OpcUaSource
from edge_gateway.sources.opcua.reader import OpcUaReader
from simulators.opcua_plc import NAMESPACE, TAGS, OpcUaPlc, node_id
from simulators.opcua_process import OpcUaSimProcess
from simulators.ports import free_port
from simulators.process import stop_process
from tests.support import Collected, start_sim

BAD_NODE_ID_UNKNOWN = 0x80340000
UNCERTAIN_LAST_USABLE_VALUE = 0x40900000
BAD_SENSOR_FAILURE = 0x808C0000
PYTHON_TYPES: dict[str, type] = {
    "Counter": int,
    "Temperature": float,
    "Pressure": float,
    "Speed": int,
    "Running": bool,
    "State": str,
    "Level": float,
    "Setpoints": str,  # JSON text of the array
    "BatchStart": str,  # ISO 8601
}


def alias(tag: str) -> str:
    return f"plc.{tag.lower()}"


def config(port: int, *extra_nodes: dict[str, str], **overrides: Any) -> OpcUaSource:
    nodes = [{"alias": alias(tag), "node_id": node_id(tag)} for tag in TAGS]
    doc: dict[str, Any] = {
        "type": "opcua",
        "name": "plc",
        "endpoint": f"opc.tcp://127.0.0.1:{port}",
        "publishing_interval_ms": 50,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 1.0,
        "timeout_s": 2.0,
        "nodes": nodes + list(extra_nodes),
    }
    return OpcUaSource.model_validate(doc | overrides)


def state_of(reader: OpcUaReader) -> SourceState:
    return reader.status.state  # a call, so mypy does not pin the state across awaits


def assert_consecutive(values: list[Any], what: str) -> None:
    assert values, f"no {what} values"
    expected = list(range(values[0], values[0] + len(values)))
    assert values == expected, f"{what}: not +1 each time: {values}"


@pytest.fixture
async def plc() -> AsyncIterator[OpcUaPlc]:
    async with OpcUaPlc(port=free_port(), tick_ms=50) as p:
        yield p


async def test_simulator_serves_the_documented_tags_with_a_counter_from_1() -> None:
    async with OpcUaPlc(port=free_port(), tick_ms=50) as plc:
        assert plc.counter == 1  # written before the server accepted anyone
        async with Client(plc.endpoint, timeout=5) as client:
            assert await client.get_namespace_index(NAMESPACE) == 2
            for tag, vtype in TAGS.items():
                assert await client.get_node(node_id(tag)).read_data_type_as_variant_type() == vtype, tag
            assert await client.get_node(node_id("Setpoints")).read_value() == [60.0, 65.0, 75.0]
            first = await client.get_node(node_id("Counter")).read_value()
            await asyncio.sleep(0.3)
            second = await client.get_node(node_id("Counter")).read_value()
            assert 1 <= first < second <= plc.counter


async def test_simulator_process_prints_ready_and_stops_cleanly_on_sigterm() -> None:
    port = free_port()
    proc = await asyncio.to_thread(start_sim, "simulators.opcua_plc", port)  # asserts the READY line
    try:
        assert proc.stdout is not None
        nodes_line = await asyncio.to_thread(proc.stdout.readline)
        assert re.fullmatch(r"nodes: (ns=2;s=Line1\.\w+, )+ns=2;s=Line1\.\w+\n", nodes_line), nodes_line
        assert "ns=2;s=Line1.Counter" in nodes_line
        async with Client(f"opc.tcp://127.0.0.1:{port}", timeout=5) as client:
            assert await client.get_node(node_id("Counter")).read_value() >= 1
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 8) == 0
    finally:
        stop_process(proc)


async def test_counter_arrives_complete_in_order_with_types_and_timestamps(
    plc: OpcUaPlc, run_reader: Callable[[OpcUaReader, Collected], asyncio.Task[None]]
) -> None:
    sink = Collected()
    reader = OpcUaReader(config(plc.port))
    run_reader(reader, sink)
    await sink.wait(lambda: len(sink.values(alias("Counter"))) >= 40, 10, "40 counter values (2 s at 50 ms)")

    assert_consecutive(sink.values(alias("Counter")), "counter")
    for tag, python_type in PYTHON_TYPES.items():
        values = sink.values(alias(tag))
        assert values, f"no GOOD {tag}"
        assert {type(v) for v in values} == {python_type}, f"{tag}: {values[:5]}"
    assert set(sink.values(alias("State"))) <= {"RUNNING", "IDLE"}
    assert json.loads(sink.values(alias("Setpoints"))[0]) == [60.0, 65.0, 75.0]
    started = dt.datetime.fromisoformat(sink.values(alias("BatchStart"))[0])
    assert abs((dt.datetime.now(dt.UTC) - started).total_seconds()) < 60

    for r in sink.readings:
        assert r.source == "plc"
        assert r.source_ts_ns is not None, r
        assert abs(r.gateway_ts_ns - r.source_ts_ns) < 5e9, r
    counter_ts = [r.source_ts_ns or 0 for r in sink.of(alias("Counter"))]
    assert counter_ts == sorted(counter_ts)
    assert all(r.quality is Quality.GOOD and r.status is None for r in sink.readings if r.point != alias("Level"))

    # Group commit: every tick changes several tags and the sink gets them together, not one call each.
    assert len(sink.batches) < len(sink.readings) / 2
    assert max(len(b) for b in sink.batches) >= len(TAGS)

    st = reader.status
    assert st.state is SourceState.CONNECTED
    assert st.readings == len(sink.readings)
    assert st.bad_readings == sum(1 for r in sink.readings if r.quality is Quality.BAD)
    assert st.last_good_ns is not None
    assert st.errors == 0
    assert st.reconnects == 0


async def test_quality_and_original_status_code_follow_the_plc(
    plc: OpcUaPlc, run_reader: Callable[[OpcUaReader, Collected], asyncio.Task[None]]
) -> None:
    sink = Collected()
    run_reader(OpcUaReader(config(plc.port)), sink)
    level = alias("Level")
    # The simulator's level sensor is Uncertain once and Bad once every 10 ticks.
    await sink.wait(
        lambda: {r.quality for r in sink.of(level, None)} == set(Quality), 5, "GOOD, UNCERTAIN and BAD levels"
    )
    for r in sink.of(level, None):
        expected = {
            Quality.GOOD: None,
            Quality.UNCERTAIN: UNCERTAIN_LAST_USABLE_VALUE,
            Quality.BAD: BAD_SENSOR_FAILURE,
        }[r.quality]
        assert r.status == expected, r
        if r.quality is not Quality.BAD:
            assert isinstance(r.value, float)  # an Uncertain value is still the PLC's value
        assert r.source_ts_ns is not None


async def test_bad_node_ids_each_give_one_bad_reading_and_the_rest_flow(
    plc: OpcUaPlc, run_reader: Callable[[OpcUaReader, Collected], asyncio.Task[None]]
) -> None:
    extra = [
        {"alias": "plc.ghost", "node_id": "ns=2;s=Line1.Ghost"},
        {"alias": "plc.garbled", "node_id": "Line1.Counter"},
        {"alias": "plc.elsewhere", "node_id": "nsu=urn:nowhere;s=Line1.Counter"},
        # Same node as plc.counter, by namespace URI: resolved on connect, and its own alias.
        {"alias": "plc.counter_by_uri", "node_id": f"nsu={NAMESPACE};s=Line1.Counter"},
    ]
    sink = Collected()
    reader = OpcUaReader(config(plc.port, *extra))
    run_reader(reader, sink)
    await sink.wait(
        lambda: len(sink.values("plc.counter_by_uri")) >= 10 and len(sink.values(alias("Counter"))) >= 10,
        10,
        "counter values under both aliases",
    )

    bad = {a: sink.of(a, None) for a in ("plc.ghost", "plc.garbled", "plc.elsewhere")}
    for a, readings in bad.items():
        assert len(readings) == 1, (a, readings)
        assert readings[0].quality is Quality.BAD
        assert readings[0].value is None
    assert bad["plc.ghost"][0].status == BAD_NODE_ID_UNKNOWN  # the server's StatusCode, kept as is
    assert "not a valid NodeId" in str(bad["plc.garbled"][0].status)
    assert "namespace 'urn:nowhere' is not on the server" in str(bad["plc.elsewhere"][0].status)

    by_index, by_uri = sink.values(alias("Counter")), sink.values("plc.counter_by_uri")
    assert_consecutive(by_index, "counter")
    assert_consecutive(by_uri, "counter by namespace URI")
    assert set(by_uri) & set(by_index)
    assert all(sink.values(alias(tag)) for tag in TAGS)

    st = reader.status
    assert st.state is SourceState.CONNECTED
    assert st.errors_by_kind == {"bad_node": 3}
    assert "ns=2;s=Line1.Ghost" in (st.last_error or "") or "urn:nowhere" in (st.last_error or "")


async def test_reader_marks_the_gap_and_reconnects_after_the_plc_restarts(
    opcua_sim: OpcUaSimProcess, run_reader: Callable[[OpcUaReader, Collected], asyncio.Task[None]]
) -> None:
    await asyncio.to_thread(opcua_sim.start)
    sink = Collected()
    reader = OpcUaReader(config(opcua_sim.port))
    run_reader(reader, sink)
    await sink.wait(lambda: len(sink.values(alias("Counter"))) >= 10, 10, "counter values before the kill")

    opcua_sim.kill()
    killed_ns = time.time_ns()
    await sink.wait(lambda: reader.status.state is SourceState.RECONNECTING, 5, "RECONNECTING after the kill")
    # The gap is marked: one BAD reading per alias, with the reason, after the last good values.
    await sink.wait(lambda: len(sink.of(alias("Counter"), Quality.BAD)) == 1, 2, "the gap marker")
    gap = [r for r in sink.readings if r.status is not None and "lost" in str(r.status)]
    assert sorted(r.point for r in gap) == sorted(alias(t) for t in TAGS)
    assert sink.readings[-len(gap) :] == gap
    before_counter = sink.values(alias("Counter"))
    assert_consecutive(before_counter, "counter before the kill")

    # While the PLC is away nothing is emitted and the reader keeps trying (no hot loop of readings).
    seen = len(sink.readings)
    await asyncio.sleep(1.0)
    assert len(sink.readings) == seen
    assert reader.status.reconnects >= 1

    await asyncio.to_thread(opcua_sim.start)
    await sink.wait(lambda: reader.status.state is SourceState.CONNECTED, 10, "CONNECTED after the restart")
    await sink.wait(lambda: len(sink.values(alias("Counter"))) >= len(before_counter) + 10, 10, "new counter values")
    after = sink.values(alias("Counter"))[len(before_counter) :]
    assert_consecutive(after, "counter after the restart")
    # They come from the new PLC process (which counts from 1 again): stamped after the kill.
    new_readings = sink.of(alias("Counter"))[len(before_counter) :]
    assert all((r.source_ts_ns or 0) > killed_ns for r in new_readings)
    st = reader.status
    assert st.reconnects >= 1
    assert st.errors_by_kind.get("connection", 0) >= 1
    assert st.last_good_ns is not None
    assert st.last_good_ns > sink.of(alias("Counter"), Quality.BAD)[0].gateway_ts_ns


async def test_unreachable_plc_is_retried_with_backoff_and_cancel_stops_it(
    run_reader: Callable[[OpcUaReader, Collected], asyncio.Task[None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()  # nobody listens here
    sink = Collected()
    reader = OpcUaReader(config(port, reconnect_min_s=0.1, reconnect_max_s=0.2))
    task = run_reader(reader, sink)
    await sink.wait(lambda: reader.status.reconnects >= 3, 5, "three connection attempts")
    assert state_of(reader) is SourceState.RECONNECTING
    assert sink.readings == []  # nothing was ever connected: no gap to mark
    assert f"opc.tcp://127.0.0.1:{port}" in (reader.status.last_error or "")
    assert reader.status.errors_by_kind["connection"] >= 3
    # The state change is logged once, not once per attempt (by us or by asyncua).
    warnings = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0][0] == "edge_gateway.sources.opcua.reader"
    assert warnings[0][1].endswith("reconnecting with backoff")

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(3):
            await task
    assert state_of(reader) is SourceState.STOPPED


class StallingSink(Collected):
    """A sink whose first call blocks until released: a buffer stuck on a slow disk."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, readings: Sequence[Reading]) -> None:
        self.entered.set()
        await self.release.wait()
        await super().__call__(readings)


async def test_a_stalled_sink_costs_the_oldest_readings_counted_and_logged_once(
    plc: OpcUaPlc,
    run_reader: Callable[[OpcUaReader, Collected], asyncio.Task[None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = StallingSink()
    reader = OpcUaReader(config(plc.port), max_pending=20)
    run_reader(reader, sink)
    async with asyncio.timeout(10):
        await sink.entered.wait()
    await asyncio.sleep(1.0)  # ~20 ticks, several changed tags each: far more than 20 notifications
    sink.release.set()
    await sink.wait(lambda: len(sink.batches) >= 3, 5, "batches after the release")

    dropped = reader.status.errors_by_kind["overflow"]
    assert dropped > 0
    assert len(sink.batches[1]) == 20  # the queue was full: the newest 20 were kept
    counter = sink.values(alias("Counter"))
    assert counter == sorted(set(counter))  # order kept, nothing twice
    assert counter[-1] - counter[0] + 1 > len(counter)  # and the drop shows as a gap
    warnings = [r.getMessage() for r in caplog.records if "oldest reading" in r.getMessage()]
    assert warnings == [
        f"opcua plc: dropped the {dropped} oldest reading(s): more than 20 waited for the sink (buffer too slow?)"
    ]
    assert reader.status.state is SourceState.CONNECTED


def _asyncua_client_tasks() -> list[asyncio.Task[Any]]:
    out = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and "asyncua/client" in code.co_filename.replace("\\", "/"):
            out.append(task)
    return out


async def test_cancel_closes_the_session_and_leaves_no_client_tasks(
    plc: OpcUaPlc, run_reader: Callable[[OpcUaReader, Collected], asyncio.Task[None]]
) -> None:
    sink = Collected()
    reader = OpcUaReader(config(plc.port))
    task = run_reader(reader, sink)
    await sink.wait(lambda: len(sink.values(alias("Counter"))) >= 3, 10, "counter values")
    assert _asyncua_client_tasks()

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(3):  # the session close is bounded by CLOSE_TIMEOUT_S
            await task
    assert reader.status.state is SourceState.STOPPED
    await asyncio.sleep(0.1)
    assert _asyncua_client_tasks() == []
    server = plc._server
    assert server is not None
    # The server saw the session closed (not left to time out).
    assert not server.iserver.subscription_service.subscriptions
