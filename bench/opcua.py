"""OPC UA source benchmark (`make bench-opcua`): prints a table, writes bench/results/opcua.json.

- notifications_per_s: PublishResponses of 1,000 data changes each (Double, Good, both timestamps),
  decoded from their binary encoding by asyncua as on the wire, handed to the reader's publish handler,
  turned into Readings and flushed into a sink, per second of CPU of one core (the asyncua simulator
  cannot produce 20,000 changes/s on this machine, so one encoded response is replayed).
  handler_notifications_per_s: the same without the binary decoding (our share of the cost).
- subscribe_10k_nodes_s: from the reader's start to a GOOD value for each of 10,000 nodes of the
  simulator (separate process, operation limit 1,000 per call advertised and enforced).
- rss_mb_10k_nodes: the benchmark process's RSS with those 10,000 nodes subscribed and changing
  (CHANGES_PER_S of them per second), and cpu_percent_10k_nodes its CPU use (of one core) meanwhile,
  notifications_per_s_10k_nodes the rate that arrived from the simulator meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import resource
import time
from collections.abc import Sequence
from pathlib import Path

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary

from bench.common import print_table, rss_mb, write_results
from edge_gateway.model import Quality, Reading
from edge_gateway.sources.opcua.config import OpcUaSource
from edge_gateway.sources.opcua.reader import OpcUaReader
from edge_gateway.sources.opcua.session import Session
from simulators.opcua_plc import bulk_node_id
from simulators.opcua_process import OpcUaSimProcess
from simulators.ports import free_port

RESULTS = Path(__file__).parent / "results"  # beside this file, not bench/results of the working directory
N = 10_000
CHANGES_PER_S = 5_000  # what the asyncua simulator sustains next to us on this 2-core machine


def _config(endpoint: str, n: int) -> OpcUaSource:
    return OpcUaSource.model_validate(
        {
            "type": "opcua",
            "name": "bench",
            "endpoint": endpoint,
            "publishing_interval_ms": 1000,
            "timeout_s": 30,
            "nodes": [{"alias": f"b.{i}", "node_id": bulk_node_id(i)} for i in range(n)],
        }
    )


async def notifications_per_s(seconds: float = 3.0, *, decode: bool = True) -> float:
    reader = OpcUaReader(_config("opc.tcp://127.0.0.1:1", N), max_pending=1_000_000)
    session = Session(reader)
    now = dt.datetime.now(dt.UTC)
    items = [
        ua.MonitoredItemNotification(
            ClientHandle=h,
            Value=ua.DataValue(ua.Variant(float(h), ua.VariantType.Double), SourceTimestamp=now, ServerTimestamp=now),  # type: ignore[arg-type]
        )
        for h in range(1, 1001)
    ]
    result = ua.PublishResult(
        NotificationMessage=ua.NotificationMessage(NotificationData=[ua.DataChangeNotification(MonitoredItems=items)])
    )
    wire = struct_to_binary(ua.PublishResponse(Parameters=result))
    count = 0

    async def sink(readings: Sequence[Reading]) -> None:
        nonlocal count
        count += len(readings)

    cpu0, t0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if decode:
            result = struct_from_binary(ua.PublishResponse, Buffer(wire)).Parameters
        await session.on_publish(result)
        await reader._flush(sink)  # noqa: SLF001 - the pump's own flush
    cpu = time.process_time() - cpu0
    return count / cpu


async def subscribe_10k() -> dict[str, float]:
    sim = OpcUaSimProcess(
        free_port(), "--bulk", str(N), "--bulk-changes", str(CHANGES_PER_S), "--max-per-call", "1000", tick_ms=1000
    )
    await asyncio.to_thread(sim.start)
    try:
        seen: set[str] = set()
        received = 0

        async def sink(readings: Sequence[Reading]) -> None:
            nonlocal received
            received += len(readings)
            seen.update(r.point for r in readings if r.quality is Quality.GOOD)

        reader = OpcUaReader(_config(sim.endpoint, N))
        t0 = time.perf_counter()
        task = asyncio.create_task(reader.run(sink))
        while len(seen) < N:
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - t0
        await asyncio.sleep(2)  # settle after the initial values
        cpu0, wall0, got0 = time.process_time(), time.perf_counter(), received
        await asyncio.sleep(10)  # values keep changing
        wall = time.perf_counter() - wall0
        cpu_percent = 100 * (time.process_time() - cpu0) / wall
        rate = (received - got0) / wall
        rss = rss_mb(default=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return {
            "subscribe_10k_nodes_s": round(elapsed, 2),
            "rss_mb_10k_nodes": round(rss, 1),
            "cpu_percent_10k_nodes": round(cpu_percent, 1),
            "notifications_per_s_10k_nodes": round(rate),
        }
    finally:
        await asyncio.to_thread(sim.stop)


async def main() -> None:
    rate = await notifications_per_s()
    handler_rate = await notifications_per_s(decode=False)
    results: dict[str, float] = {"notifications_per_s": round(rate), "handler_notifications_per_s": round(handler_rate)}
    results |= await subscribe_10k()
    print_table([("figure", f"{'value':>10}"), *((k, f"{v:>10}") for k, v in results.items())], width=30)
    write_results("opcua", results, directory=RESULTS, indent=2, end="\n")


if __name__ == "__main__":
    asyncio.run(main())
