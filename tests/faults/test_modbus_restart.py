"""The Modbus simulator (a separate process) killed and restarted: polling resumes within 5 s of it being
back, with the default reconnect settings, and the outage is marked by exactly one BAD reading per point."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from edge_gateway.model import Quality
from edge_gateway.sources.base import SourceState
from edge_gateway.sources.modbus.config import ModbusSource
from edge_gateway.sources.modbus.reader import ModbusReader
from simulators.modbus_process import ModbusSimProcess
from tests.integration.test_modbus_source import Collect, until
from tests.support import Starter

pytestmark = pytest.mark.slow

OUTAGE_S = 5.0  # long enough for the reconnect backoff to reach its cap (4 s)


async def test_polling_resumes_within_5_s_of_the_simulator_being_back(start_task: Starter) -> None:
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
        reader = ModbusReader(config)
        sink = Collect()
        start_task(reader.run(sink))
        await until(lambda: len(sink.good("a.counter")) >= 3 and len(sink.good("b.counter")) >= 3)
        sim.kill()
        await until(lambda: reader.status.state is SourceState.RECONNECTING)
        await asyncio.sleep(OUTAGE_S)
        polls_while_down = len(sink.polls)
        sim.start()
        back = time.monotonic()
        await until(lambda: len(sink.polls) > polls_while_down and sink.polls[-1][0].quality is Quality.GOOD, 10)
        resumed_after_s = time.monotonic() - back
        assert resumed_after_s < 5.0  # the bound
        assert reader.status.reconnects >= 2
        for alias in ("a.counter", "a.coil", "b.counter", "b.coil"):
            (gap,) = sink.bad(alias)
            assert f"connection to 127.0.0.1:{sim.port} lost" in str(gap.status)
    finally:
        sim.stop()
