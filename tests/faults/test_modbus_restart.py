"""The Modbus simulator (a separate process) killed and restarted: polling resumes at the first reconnect
attempt made after it is back, with the default reconnect settings, and the outage is marked by exactly one
BAD reading per point.

The issue's bound (resumed within 5 s of the PLC being back) follows from two counted facts, not a clock
reading: the default backoff cap is 4 s (tests/unit/test_backoff.py shows a delay never exceeds the cap),
and at most one attempt fails after the simulator is back (one may be under way as it comes up)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edge_gateway.model import Quality
from edge_gateway.sources.base import SourceState
from edge_gateway.sources.modbus.config import ModbusSource
from edge_gateway.sources.modbus.reader import ModbusReader
from simulators.modbus_process import ModbusSimProcess
from tests.support import Collected, Starter, until

pytestmark = pytest.mark.slow

OUTAGE_S = 5.0  # long enough for the reconnect backoff to reach its cap (4 s)


async def test_polling_resumes_at_the_first_attempt_after_the_simulator_is_back(start_task: Starter) -> None:
    transport = "tcp"
    sim = ModbusSimProcess(transport=transport, units=(1, 2), tick_ms=100)
    sim.start()
    try:
        points: list[dict[str, Any]] = [
            {"alias": "counter", "address": 0, "data_type": "uint32"},
            {"alias": "coil", "table": "coil"},
        ]
        config = ModbusSource.model_validate(
            {
                "type": "modbus",
                "name": "plc",
                "transport": transport,
                "host": "127.0.0.1",
                "port": sim.port,
                "poll_interval_ms": 100,
                "timeout_s": 0.5,
                "devices": [
                    {
                        "name": "a",
                        "unit_id": 1,
                        "points": [p | {"alias": f"a.{p['alias']}", "address": 0} for p in points],
                    },
                    {
                        "name": "b",
                        "unit_id": 2,
                        "points": [p | {"alias": f"b.{p['alias']}", "address": 0} for p in points],
                    },
                ],
            }  # reconnect_min_s / reconnect_max_s: the defaults
        )
        assert config.reconnect_max_s <= 4.0  # the default cap: no wait between attempts is longer
        reader = ModbusReader(config)
        sink = Collected()
        start_task(reader.run(sink))
        await until(lambda: len(sink.good("a.counter")) >= 3 and len(sink.good("b.counter")) >= 3)
        sim.kill()
        await until(lambda: reader.status.state is SourceState.RECONNECTING)
        await asyncio.sleep(OUTAGE_S)
        polls_while_down = len(sink.polls)
        sim.start()  # returns once the simulator listens again
        failed_before_back = reader.status.reconnects
        await until(lambda: len(sink.polls) > polls_while_down and sink.polls[-1][0].quality is Quality.GOOD, 60)
        assert reader.status.reconnects - failed_before_back <= 1, (failed_before_back, reader.status)
        assert failed_before_back >= 2  # the outage outlasted attempts: backoff was exercised
        for alias in ("a.counter", "a.coil", "b.counter", "b.coil"):
            (gap,) = sink.bad(alias)
            assert f"connection to 127.0.0.1:{sim.port} lost" in str(gap.status)
    finally:
        sim.stop()
