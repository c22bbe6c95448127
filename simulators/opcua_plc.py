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

Every value is written with a source timestamp (the tick's time).

Options for tests (all off by default, so the plain simulator is what it always was):
- ``--bulk N``: N more variables ``ns=2;s=Bulk.<i>`` (i = 0..N-1, zero-padded to 5 digits) under
  Objects/Bulk/G<nnn> (50 per folder), types cycling Boolean, Int32, UInt32, Double, String, Double[2];
  ``--bulk-changes K`` changes K of them per tick (round robin; default all): 10,000 nodes at 1 s
  make 10,000 changes/s.
- ``--pki DIR``: also serve Sign and SignAndEncrypt endpoints (Basic256Sha256, Aes128_Sha256_RsaOaep,
  Aes256_Sha256_RsaPss) with a server certificate generated into DIR (``server_cert.der``,
  ``server_key.pem``; kept when present). ``--user NAME:PASSWORD`` then requires that user (anonymous
  sessions are refused).
- ``--max-per-call N``: advertise N as MaxNodesPerRead / MaxNodesPerRegisterNodes /
  MaxMonitoredItemsPerCall and answer larger Read and CreateMonitoredItems requests with
  BadTooManyOperations, as a real PLC does.
- ``--huge``: variables far over the gateway's size limits, under Objects/Huge (built only with this
  option, so the plain simulator stays small and fast): ``ns=2;s=Huge.String`` (a 52,428,800-byte
  String), ``Huge.Array`` (Int32[10,000,000], 40 MB on the wire), ``Huge.Medium`` (a 2 MiB String) and
  ``Huge.MediumArray`` (Double[300,000]); the last two fit in a message but not in one value.
- Control methods under Objects/Sim, callable by any client: ``Sim.FreezeSubscriptions()`` stops every
  subscription's publishing (no data, no keep-alives) while sessions stay open and reads still work,
  as a wedged PLC firmware does; returns how many it froze. ``Sim.SetBulkStatus(code)`` writes every
  bulk variable with that StatusCode from the next tick on (0 = Good again).

Start-up takes about 1.5 s, nearly all of it asyncua loading the standard address space (plus about
1 s per 10,000 bulk nodes). Kill it and start a new process on the same port to simulate a PLC restart.

Run alone: ``python -m simulators.opcua_plc --port 4840 [--host 127.0.0.1] [--tick-ms 100] [options]``;
prints ``READY opc.tcp://HOST:PORT`` and then ``nodes: <NodeId>, …`` once it serves, and stops cleanly
on SIGINT/SIGTERM. In a test: ``async with OpcUaPlc(port=free_port(), tick_ms=50) as plc: … plc.counter``.

Module split: the address space (names, node ids, bulk values) is ``simulators/opcua_address.py``; what
makes the asyncua server behave like a PLC (security, users, operation limits, the transfer fix) is
``simulators/opcua_server.py``; this module is the ticking process and the command line, and re-exports
the address-space names tests import from here.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import math
import random
import sys
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.node import Node
from asyncua.server.server import Server
from asyncua.ua.status_codes import StatusCodes

from simulators import opcua_server
from simulators.opcua_address import (
    BULK_PER_FOLDER,
    BULK_TYPES,
    EPOCH,
    HUGE,
    INITIAL,
    NAMESPACE,
    NAMESPACE_INDEX,
    TAGS,
    bulk_node_id,
    bulk_value,
    huge_node_id,
    node_id,
)
from simulators.opcua_server import APPLICATION_URI, SECURE_POLICIES
from simulators.ticking import TickingSimulator

__all__ = [
    "APPLICATION_URI",
    "BULK_TYPES",
    "HUGE",
    "NAMESPACE",
    "NAMESPACE_INDEX",
    "SECURE_POLICIES",
    "TAGS",
    "OpcUaPlc",
    "bulk_node_id",
    "bulk_value",
    "huge_node_id",
    "main",
    "node_id",
]

_RUN_PERIOD_TICKS = 200
_BATCH_TICKS = 100


class OpcUaPlc(TickingSimulator):
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 4840,
        *,
        tick_ms: int = 100,
        bulk: int = 0,
        bulk_changes: int | None = None,
        pki: Path | None = None,
        users: dict[str, str] | None = None,
        max_per_call: int = 0,
        huge: bool = False,
    ) -> None:
        self.host, self.port, self.tick_s = host, port, tick_ms / 1000
        self.counter = 0  # the value of Line1.Counter last written
        self.bulk, self.bulk_changes = bulk, bulk if bulk_changes is None else bulk_changes
        self.pki, self.users, self.max_per_call = pki, users or {}, max_per_call
        self.bulk_status = StatusCodes.Good
        self.huge = huge
        self._bulk_steps = [0] * bulk
        self._bulk_next = 0
        self._bulk_ids = [ua.NodeId.from_string(bulk_node_id(i)) for i in range(bulk)]
        self._tick = 0
        self._rng = random.Random(7)
        self._batch_start = EPOCH
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

    async def _write_bulk(self) -> None:
        server = self._server
        if server is None or not self.bulk:
            return
        now = dt.datetime.now(dt.UTC)
        status = ua.StatusCode(ua.UInt32(self.bulk_status))
        for _ in range(self.bulk_changes):
            i = self._bulk_next
            self._bulk_next = (i + 1) % self.bulk
            self._bulk_steps[i] += 1
            dv = ua.DataValue(
                ua.Variant(bulk_value(i, self._bulk_steps[i]), BULK_TYPES[i % len(BULK_TYPES)]),
                StatusCode=status,
                SourceTimestamp=now,  # type: ignore[arg-type]
                ServerTimestamp=now,  # type: ignore[arg-type]
            )
            await server.write_attribute_value(self._bulk_ids[i], dv)

    async def tick(self) -> None:
        await self._write_tick()
        await self._write_bulk()

    def freeze_subscriptions(self) -> int:
        """Stop every subscription's publish loop; sessions and reads carry on."""
        assert self._server is not None
        frozen = 0
        for sub in self._server.iserver.subscription_service.subscriptions.values():
            task = sub._task  # noqa: SLF001 - the simulated fault is exactly this loop dying
            if task is not None and not task.done():
                task.cancel()
                frozen += 1
        return frozen

    async def _add_controls(self, server: Server, idx: int) -> None:
        sim = await server.nodes.objects.add_folder(f"ns={idx};s=Sim", "Sim")

        async def freeze(_parent: ua.NodeId) -> list[ua.Variant]:
            return [ua.Variant(self.freeze_subscriptions(), ua.VariantType.UInt32)]

        async def set_bulk_status(_parent: ua.NodeId, code: ua.Variant) -> list[ua.Variant]:
            self.bulk_status = int(code.Value)
            return []

        await sim.add_method(
            f"ns={idx};s=Sim.FreezeSubscriptions", "FreezeSubscriptions", freeze, [], [ua.VariantType.UInt32]
        )
        await sim.add_method(
            f"ns={idx};s=Sim.SetBulkStatus", "SetBulkStatus", set_bulk_status, [ua.VariantType.UInt32], []
        )

    async def _add_bulk(self, server: Server, idx: int) -> None:
        if not self.bulk:
            return
        bulk = await server.nodes.objects.add_folder(f"ns={idx};s=Bulk", "Bulk")
        folder = bulk
        for i in range(self.bulk):
            # asyncua checks every sibling when adding a node: 10,000 in one folder would take minutes.
            if i % BULK_PER_FOLDER == 0:
                name = f"G{i // BULK_PER_FOLDER:03d}"
                folder = await bulk.add_folder(f"ns={idx};s=Bulk.{name}", name)
            vtype = BULK_TYPES[i % len(BULK_TYPES)]
            await folder.add_variable(bulk_node_id(i), f"B{i:05d}", ua.Variant(bulk_value(i, 0), vtype))

    async def _serve(self) -> None:
        server = Server()
        await server.init()
        idx = await server.register_namespace(NAMESPACE)
        if idx != NAMESPACE_INDEX:
            msg = f"namespace {NAMESPACE} got index {idx}, expected {NAMESPACE_INDEX}: node ids would not match"
            raise RuntimeError(msg)
        server.set_endpoint(self.url)
        server.set_server_name("edge-gateway OPC UA PLC simulator")
        await opcua_server.secure(server, self.pki, self.users)
        line = await server.nodes.objects.add_folder(f"ns={idx};s=Line1", "Line1")
        for tag, vtype in TAGS.items():
            self._nodes[tag] = await line.add_variable(node_id(tag), tag, ua.Variant(INITIAL[tag], vtype))
        await self._add_bulk(server, idx)
        if self.huge:
            folder = await server.nodes.objects.add_folder(f"ns={idx};s=Huge", "Huge")
            for name, (vtype, make) in HUGE.items():
                await folder.add_variable(huge_node_id(name), name, ua.Variant(make(), vtype))
        await self._add_controls(server, idx)
        await self._write_tick()  # counter = 1 before anyone can connect
        await server.start()
        await opcua_server.set_limits(server, self.max_per_call)
        opcua_server.enforce_limits(server, self.max_per_call)
        opcua_server.fix_transfer(server)
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
    parser.add_argument("--bulk", type=int, default=0, help="this many more variables under Objects/Bulk")
    parser.add_argument("--bulk-changes", type=int, default=None, help="bulk variables changed per tick")
    parser.add_argument("--pki", type=Path, default=None, help="serve secured endpoints, server certificate here")
    parser.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD", help="require this user")
    parser.add_argument("--max-per-call", type=int, default=0, help="advertised and enforced operation limit")
    parser.add_argument("--huge", action="store_true", help="add the oversized variables under Objects/Huge")
    args = parser.parse_args(argv)
    users = dict(u.split(":", 1) for u in args.user)
    if users and args.pki is None:
        parser.error("--user needs --pki (a password is never sent over an unsecured channel)")
    # asyncua warns about the unsecured endpoint on every start: expected here, and noise for whoever
    # reads our stdout/stderr.
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    plc = OpcUaPlc(
        args.host,
        args.port,
        tick_ms=args.tick_ms,
        bulk=args.bulk,
        bulk_changes=args.bulk_changes,
        pki=args.pki,
        users=users,
        max_per_call=args.max_per_call,
        huge=args.huge,
    )
    asyncio.run(plc.run_until_signal("nodes: " + ", ".join(node_id(t) for t in TAGS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
