"""OPC UA PLC simulator (asyncua server) with realistic, changing tags.

Address space, namespace ``urn:edge-gateway:sim:opcua`` (always index 2: it is the first namespace
registered, and start-up fails otherwise), under Objects/Line1:

    ns=2;s=Line1.Counter       UInt32      +1 every tick, starting at 1, one write per tick (proves no loss
                                           and no reordering end to end)
    ns=2;s=Line1.Temperature   Double      slow sine plus noise, °C
    ns=2;s=Line1.Pressure      Float       bar, slow sine plus noise
    ns=2;s=Line1.Speed         Int32       rpm, 0 while stopped
    ns=2;s=Line1.Running       Boolean     stops for one period in four (a period is 200 ticks)
    ns=2;s=Line1.State         String      "RUNNING" / "IDLE"
    ns=2;s=Line1.Level         Double      %, with a sensor that is not always right: StatusCode
                                           UncertainLastUsableValue on ticks ≡ 5 (mod 10), BadSensorFailure
                                           on ticks ≡ 9 (mod 10), Good otherwise
    ns=2;s=Line1.Setpoints     Double[3]   array (min, target, max temperature)
    ns=2;s=Line1.BatchStart    DateTime    when the current batch started; changes every 100 ticks

Every value is written with a source timestamp (the tick's time). Security: None only (a later issue
adds the secured endpoint). Start-up takes about 1.5 s, nearly all of it asyncua loading the standard
address space.

Run alone: ``python -m simulators.opcua_plc --port 4840 [--host 127.0.0.1] [--tick-ms 100]``; prints
``READY opc.tcp://HOST:PORT`` and then ``nodes: <NodeId>, …`` once it serves, and stops cleanly on
SIGINT/SIGTERM. In a test: ``async with OpcUaPlc(port=free_port(), tick_ms=50) as plc: … plc.counter``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import math
import random
import sys
from typing import Any

from asyncua import ua
from asyncua.common.node import Node
from asyncua.server.server import Server
from asyncua.ua.status_codes import StatusCodes

from simulators.ticking import TickingSimulator

NAMESPACE = "urn:edge-gateway:sim:opcua"
NAMESPACE_INDEX = 2

TAGS: dict[str, ua.VariantType] = {
    "Counter": ua.VariantType.UInt32,
    "Temperature": ua.VariantType.Double,
    "Pressure": ua.VariantType.Float,
    "Speed": ua.VariantType.Int32,
    "Running": ua.VariantType.Boolean,
    "State": ua.VariantType.String,
    "Level": ua.VariantType.Double,
    "Setpoints": ua.VariantType.Double,  # an array
    "BatchStart": ua.VariantType.DateTime,
}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_INITIAL: dict[str, Any] = {
    "Counter": 0,
    "Temperature": 0.0,
    "Pressure": 0.0,
    "Speed": 0,
    "Running": False,
    "State": "",
    "Level": 0.0,
    "Setpoints": [0.0, 0.0, 0.0],
    "BatchStart": _EPOCH,
}
_RUN_PERIOD_TICKS = 200
_BATCH_TICKS = 100


def node_id(tag: str) -> str:
    return f"ns={NAMESPACE_INDEX};s=Line1.{tag}"


class OpcUaPlc(TickingSimulator):
    def __init__(self, host: str = "127.0.0.1", port: int = 4840, *, tick_ms: int = 100) -> None:
        self.host, self.port, self.tick_s = host, port, tick_ms / 1000
        self.counter = 0  # the value of Line1.Counter last written
        self._tick = 0
        self._rng = random.Random(7)
        self._batch_start = _EPOCH
        self._server: Server | None = None
        self._nodes: dict[str, Node] = {}

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}"

    endpoint = url

    def values(self) -> dict[str, Any]:
        """The process one tick further."""
        self._tick += 1
        self.counter += 1
        t = self._tick * self.tick_s
        running = (self._tick // _RUN_PERIOD_TICKS) % 4 != 3
        if self._tick % _BATCH_TICKS == 1:
            self._batch_start = dt.datetime.now(dt.UTC)
        return {
            "Counter": self.counter,
            "Temperature": round(65 + 10 * math.sin(t / 20) + self._rng.uniform(-0.3, 0.3), 3),
            "Pressure": 4.0 + 0.4 * math.sin(t / 9) + self._rng.uniform(-0.02, 0.02),
            "Speed": 1200 + self._rng.randint(-30, 30) if running else 0,
            "Running": running,
            "State": "RUNNING" if running else "IDLE",
            "Level": round(50 + 30 * math.sin(t / 30) + self._rng.uniform(-0.5, 0.5), 2),
            "Setpoints": [60.0, 65.0, 75.0],
            "BatchStart": self._batch_start,
        }

    def status_of(self, tag: str) -> int:
        """The StatusCode written with ``tag`` at the current tick."""
        if tag != "Level":
            return StatusCodes.Good
        return {5: StatusCodes.UncertainLastUsableValue, 9: StatusCodes.BadSensorFailure}.get(
            self._tick % 10, StatusCodes.Good
        )

    async def _write_tick(self) -> None:
        now = dt.datetime.now(dt.UTC)
        for tag, value in self.values().items():
            dv = ua.DataValue(
                ua.Variant(value, TAGS[tag]),
                StatusCode=ua.StatusCode(ua.UInt32(self.status_of(tag))),
                SourceTimestamp=now,  # type: ignore[arg-type]
                ServerTimestamp=now,  # type: ignore[arg-type]
            )
            await self._nodes[tag].write_value(dv)

    async def tick(self) -> None:
        await self._write_tick()

    async def _serve(self) -> None:
        server = Server()
        await server.init()
        idx = await server.register_namespace(NAMESPACE)
        if idx != NAMESPACE_INDEX:
            msg = f"namespace {NAMESPACE} got index {idx}, expected {NAMESPACE_INDEX}: node ids would not match"
            raise RuntimeError(msg)
        server.set_endpoint(self.url)
        server.set_server_name("edge-gateway OPC UA PLC simulator")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        line = await server.nodes.objects.add_folder(f"ns={idx};s=Line1", "Line1")
        for tag, vtype in TAGS.items():
            self._nodes[tag] = await line.add_variable(node_id(tag), tag, ua.Variant(_INITIAL[tag], vtype))
        await self._write_tick()  # counter = 1 before anyone can connect
        await server.start()
        self._server = server

    async def _shutdown(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None
        self._nodes.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="OPC UA PLC simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4840)
    parser.add_argument("--tick-ms", type=int, default=100)
    args = parser.parse_args(argv)
    # asyncua warns about the unsecured endpoint on every start: expected here, and noise for whoever
    # reads our stdout/stderr.
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    plc = OpcUaPlc(args.host, args.port, tick_ms=args.tick_ms)
    asyncio.run(plc.run_until_signal("nodes: " + ", ".join(node_id(t) for t in TAGS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
