"""OPC UA faults against the simulator in a separate process: the PLC killed and restarted on the same
port, and a network cut after which the new session takes the old subscription over."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from edge_gateway.model import Quality
from edge_gateway.sources.base import SourceState
from edge_gateway.sources.opcua.config import OpcUaSource
from edge_gateway.sources.opcua.reader import OpcUaReader
from simulators.opcua_plc import node_id
from simulators.opcua_process import OpcUaSimProcess
from tests.integration.test_opcua_source import assert_consecutive
from tests.netpath import NetPath
from tests.support import Collected

pytestmark = pytest.mark.slow


def source(port: int, **fields: Any) -> OpcUaSource:
    doc: dict[str, Any] = {
        "type": "opcua",
        "name": "plc",
        "endpoint": f"opc.tcp://127.0.0.1:{port}",
        "publishing_interval_ms": 50,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 5.0,  # as docs/opcua.md recommends for PLCs that restart
        "timeout_s": 2.0,
        "nodes": [
            {"alias": "plc.counter", "node_id": node_id("Counter")},
            {"alias": "plc.state", "node_id": node_id("State")},
        ],
    }
    return OpcUaSource.model_validate(doc | fields)


async def test_plc_killed_and_restarted_data_resumes_at_the_first_attempt_after_it_is_back_with_the_gap_marked(
    opcua_sim: OpcUaSimProcess, run_reader: Callable[[OpcUaReader, Collected], asyncio.Task[None]]
) -> None:
    await asyncio.to_thread(opcua_sim.start)
    sink = Collected()
    reader = OpcUaReader(source(opcua_sim.port))
    run_reader(reader, sink)
    await sink.wait(lambda: len(sink.values("plc.counter")) >= 10, 10, "counter values")

    opcua_sim.kill()
    killed_ns = time.time_ns()
    await sink.wait(lambda: len(sink.of("plc.counter", Quality.BAD)) == 1, 10, "the gap marker")
    before = sink.values("plc.counter")
    await asyncio.sleep(3)  # the PLC stays down a while; the reader backs off meanwhile
    assert reader.status.state is SourceState.RECONNECTING
    down = len(sink.readings)

    await asyncio.to_thread(opcua_sim.start)  # a new process on the same port, listening when this returns
    failed_before_back = reader.status.reconnects
    await sink.wait(lambda: len(sink.values("plc.counter")) > len(before), 60, "data after the restart")
    # Counted, not timed: at most one attempt (under way as the PLC came up) fails after it is back, so the
    # data resumes within one backoff delay, which never exceeds reconnect_max_s (5 s; test_backoff.py).
    assert reader.status.reconnects - failed_before_back <= 1, (failed_before_back, reader.status)

    # Nothing but the gap marker between the last value before the kill and the first after the restart.
    gap = [r for r in sink.readings if r.quality is Quality.BAD]
    assert sorted(r.point for r in gap) == ["plc.counter", "plc.state"]
    assert all("lost" in str(r.status) for r in gap)
    assert sink.readings.index(gap[-1]) == down - 1
    assert_consecutive(before, "counter before the kill")
    await sink.wait(lambda: len(sink.values("plc.counter")) >= len(before) + 10, 10, "more data")
    after = sink.values("plc.counter")[len(before) :]
    assert_consecutive(after, "counter after the restart")
    # From the new PLC process: stamped after the kill.
    assert all((r.source_ts_ns or 0) > killed_ns for r in sink.of("plc.counter")[len(before) :])
    assert reader.transfers == 0  # the old subscription died with the old process


async def test_after_a_network_cut_the_new_session_takes_the_subscription_over_without_losing_values(
    opcua_sim: OpcUaSimProcess, run_reader: Callable[[OpcUaReader, Collected], asyncio.Task[None]]
) -> None:
    await asyncio.to_thread(opcua_sim.start)
    with NetPath("127.0.0.1", opcua_sim.port) as path:
        sink = Collected()
        reader = OpcUaReader(source(path.port))
        run_reader(reader, sink)
        await sink.wait(lambda: len(sink.values("plc.counter")) >= 10, 10, "counter values")

        path.cut()
        await sink.wait(lambda: len(sink.of("plc.counter", Quality.BAD)) == 1, 10, "the gap marker")
        before = sink.values("plc.counter")
        await asyncio.sleep(1.5)  # ~30 ticks the server queues for the subscription (queue_size 100)
        path.restore()
        await sink.wait(lambda: len(sink.values("plc.counter")) >= len(before) + 40, 15, "data after the cut")

    assert reader.transfers == 1
    # The server kept the subscription and its queued values: the counter has no hole at all.
    assert_consecutive(sink.values("plc.counter"), "counter across the cut")
