"""OPC UA PLC simulator (asyncua server) with realistic, changing tags.

Address space, namespace ``urn:edge-gateway:sim:opcua`` (index 2), under Objects/Line1:

    ns=2;s=Line1.Counter       UInt32   +1 every tick, starting at 1 (proves no loss and no reordering)
    ns=2;s=Line1.Temperature   Double   slow sine plus noise, °C
    ns=2;s=Line1.Pressure      Float    bar
    ns=2;s=Line1.Speed         Int32    rpm, 0 while stopped
    ns=2;s=Line1.Running       Boolean  stops one period in four
    ns=2;s=Line1.State         String   "RUNNING" / "IDLE"

Every value is written with a source timestamp. Security: None only (a later issue adds the secured
endpoint). Run alone: ``python -m simulators.opcua_plc --port 4840 [--host 127.0.0.1] [--tick-ms 100]``;
prints ``READY opc.tcp://HOST:PORT`` once it serves.
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

from simulators.ticking import TickingSimulator

NAMESPACE = "urn:edge-gateway:sim:opcua"

TAGS: dict[str, ua.VariantType] = {
    "Counter": ua.VariantType.UInt32,
    "Temperature": ua.VariantType.Double,
    "Pressure": ua.VariantType.Float,
    "Speed": ua.VariantType.Int32,
    "Running": ua.VariantType.Boolean,
    "State": ua.VariantType.String,
}
_INITIAL: dict[ua.VariantType, Any] = {
    ua.VariantType.UInt32: 0,
    ua.VariantType.Double: 0.0,
    ua.VariantType.Float: 0.0,
    ua.VariantType.Int32: 0,
    ua.VariantType.Boolean: False,
    ua.VariantType.String: "",
}


def node_id(tag: str) -> str:
    return f"ns=2;s=Line1.{tag}"


class OpcUaPlc(TickingSimulator):
    def __init__(self, host: str = "127.0.0.1", port: int = 4840, *, tick_ms: int = 100) -> None:
        self.host, self.port, self.tick_s = host, port, tick_ms / 1000
        self.counter = 0
        self._tick = 0
        self._rng = random.Random(7)
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
        running = (self._tick // 200) % 4 != 3
        return {
            "Counter": self.counter,
            "Temperature": round(65 + 10 * math.sin(t / 20) + self._rng.uniform(-0.3, 0.3), 3),
            "Pressure": 4.0 + 0.4 * math.sin(t / 9),
            "Speed": 1200 + self._rng.randint(-30, 30) if running else 0,
            "Running": running,
            "State": "RUNNING" if running else "IDLE",
        }

    async def _write_tick(self) -> None:
        now = dt.datetime.now(dt.UTC)
        for tag, value in self.values().items():
            dv = ua.DataValue(ua.Variant(value, TAGS[tag]), SourceTimestamp=now, ServerTimestamp=now)  # type: ignore[arg-type]
            await self._nodes[tag].write_value(dv)

    async def tick(self) -> None:
        await self._write_tick()

    async def _serve(self) -> None:
        logging.getLogger("asyncua").setLevel(logging.ERROR)
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://{self.host}:{self.port}")
        server.set_server_name("edge-gateway OPC UA PLC simulator")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace(NAMESPACE)
        if idx != 2:
            msg = f"namespace {NAMESPACE} got index {idx}, expected 2"
            raise RuntimeError(msg)
        line = await server.nodes.objects.add_folder(f"ns={idx};s=Line1", "Line1")
        for tag, vtype in TAGS.items():
            node = await line.add_variable(f"ns={idx};s=Line1.{tag}", tag, ua.Variant(_INITIAL[vtype], vtype))
            self._nodes[tag] = node
        await server.start()
        self._server = server
        await self._write_tick()

    async def _shutdown(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="OPC UA PLC simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4840)
    parser.add_argument("--tick-ms", type=int, default=100)
    args = parser.parse_args(argv)
    plc = OpcUaPlc(args.host, args.port, tick_ms=args.tick_ms)
    asyncio.run(plc.run_until_signal("nodes: " + ", ".join(node_id(t) for t in TAGS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
