"""Bounds on what an OPC UA server sends (sources/opcua/limits.py, values.py), against real peers on loopback.

The simulator runs with ``--huge`` in a process of its own (a 52,428,800-byte string, an Int32 array of
10,000,000 elements, a 2 MiB string and a Double[300,000]); the reader runs in another
(opcua_limits_child.py), so the peak RSS measured is the reader's alone. A hostile server stand-in (a
plain asyncio server speaking just enough OPC UA TCP) checks what asyncua itself would let through.
"""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from asyncua.client.client import Client
from asyncua.ua.uaerrors import UaError

from edge_gateway.sources.opcua.limits import CHUNK_BYTES, Limits, bound
from simulators.opcua_plc import huge_node_id, node_id
from simulators.opcua_process import OpcUaSimProcess
from simulators.ports import free_port

ROOT = Path(__file__).parents[2]
MAX_GROWTH_KB = 50 * 1024  # the bound: the reader's RSS grows by less than 50 MB
DEFAULTS = {"max_message_bytes": 8 * 1024 * 1024, "max_value_bytes": 1024 * 1024}


@pytest.fixture(scope="module")
def huge_sim() -> Iterator[OpcUaSimProcess]:
    sim = OpcUaSimProcess(free_port(), "--huge", tick_ms=100)
    sim.start()
    yield sim
    sim.stop()


def run_reader(config: dict[str, Any], bad: list[str], good: list[str]) -> dict[str, Any]:
    job = json.dumps({"config": config, "bad": bad, "good": good, "timeout_s": 60})
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integration.opcua_limits_child"],
        input=job,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"the reader process failed: {proc.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


def source(endpoint: str, nodes: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    return {
        "type": "opcua",
        "name": "plc",
        "endpoint": endpoint,
        "publishing_interval_ms": 100,
        "timeout_s": 10.0,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 1.0,
        "nodes": nodes,
    } | extra


def statuses(result: dict[str, Any], alias: str, quality: str) -> list[str | None]:
    return [status for point, q, status in result["readings"] if point == alias and q == quality]


def test_oversized_values_are_bad_readings_with_the_reason_and_the_reader_stays_small(
    huge_sim: OpcUaSimProcess,
) -> None:
    counter = node_id("Counter")
    polled = {
        "counter": counter,
        "string": huge_node_id("String"),
        "array": huge_node_id("Array"),
        "medium": huge_node_id("Medium"),
        "medium_array": huge_node_id("MediumArray"),
    }
    config = source(
        huge_sim.endpoint,
        [
            {"alias": "sub.counter", "node_id": counter},
            {"alias": "sub.string", "node_id": huge_node_id("String")},
            {"alias": "sub.array", "node_id": huge_node_id("Array")},
        ],
        groups=[
            {
                "name": "polled",
                "mode": "poll",
                "poll_interval_ms": 500,
                "nodes": [{"alias": f"poll.{name}", "node_id": nid} for name, nid in polled.items()],
            }
        ],
    )
    bad = ["sub.string", "sub.array", "poll.string", "poll.array", "poll.medium", "poll.medium_array"]
    result = run_reader(config, bad, ["sub.counter", "poll.counter"])
    assert result["finished"], f"not every expected reading came: {result['readings'][-20:]}"

    # Subscription: the initial Publish response holds 90 MB of values; it is dropped as it arrives.
    limit = f"exceeds max_message_bytes {DEFAULTS['max_message_bytes']:,}"
    for alias in ("sub.string", "sub.array"):
        (reason, *_) = statuses(result, alias, "BAD")
        assert reason is not None
        assert "response to Publish was refused" in reason, reason
        assert limit in reason, reason
    # Poll: the Read is split until each oversized node is read alone; the others are GOOD or fit a message.
    for alias in ("poll.string", "poll.array"):
        (reason, *_) = statuses(result, alias, "BAD")
        assert reason is not None
        assert "response to Read was refused" in reason, reason
        assert limit in reason, reason
    (medium,) = set(statuses(result, "poll.medium", "BAD"))
    assert medium == "node poll.medium: value of 2,097,152 bytes exceeds max_value_bytes 1,048,576"
    (medium_array,) = set(statuses(result, "poll.medium_array", "BAD"))
    assert medium_array == (
        "node poll.medium_array: array of 300,000 elements (over 1,048,576 bytes) exceeds max_value_bytes 1,048,576"
    )
    assert statuses(result, "poll.counter", "BAD") == []
    assert statuses(result, "sub.counter", "GOOD")
    assert statuses(result, "poll.counter", "GOOD")
    assert not statuses(result, "poll.string", "GOOD")
    assert not statuses(result, "sub.string", "GOOD")
    # The session survived every refusal.
    assert result["reconnects"] == 0, result["errors_by_kind"]
    assert result["errors_by_kind"]["too_large"] >= 5  # the Publish response, then each polled node alone
    growth = result["peak_rss_kb_after"] - result["peak_rss_kb_before"]
    assert growth < MAX_GROWTH_KB, f"the reader's peak RSS grew by {growth:,} kB"


def test_a_subscribed_value_over_max_value_bytes_is_bad_and_its_neighbour_good(huge_sim: OpcUaSimProcess) -> None:
    config = source(
        huge_sim.endpoint,
        [
            {"alias": "counter", "node_id": node_id("Counter")},
            {"alias": "medium", "node_id": huge_node_id("Medium")},
        ],
        max_value_bytes=1024 * 1024,
    )
    result = run_reader(config, ["medium"], ["counter"])
    assert result["finished"], result["readings"][-20:]
    assert statuses(result, "medium", "BAD") == [
        "node medium: value of 2,097,152 bytes exceeds max_value_bytes 1,048,576"
    ]
    assert statuses(result, "counter", "BAD") == []
    assert result["reconnects"] == 0


class HostileServer:
    """Accepts one Hello, answers with an Acknowledge that offers no limits at all (0 = unlimited and
    2 GiB buffers, which asyncua 2.1 would adopt), then sends a chunk header that claims 1 GiB and the
    first 64 KiB of it, and waits for the client to hang up."""

    def __init__(self) -> None:
        self.hello: bytes = b""
        self.server: asyncio.Server | None = None
        self.done = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            header = await reader.readexactly(8)
            (size,) = struct.unpack_from("<I", header, 4)
            self.hello = await reader.readexactly(size - 8)
            ack = struct.pack("<IIIII", 0, 2**31 - 1, 2**31 - 1, 0, 0)  # version, buffers, message size, chunks
            writer.write(b"ACKF" + struct.pack("<I", 8 + len(ack)) + ack)
            writer.write(b"OPNF" + struct.pack("<I", 1 << 30) + b"\0" * 65_536)
            await writer.drain()
            while await reader.read(65_536):  # until the client hangs up
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.done.set()

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port


@pytest.fixture
async def hostile() -> AsyncIterator[HostileServer]:
    h = HostileServer()
    h.server = await asyncio.start_server(h.handle, "127.0.0.1", 0)
    yield h
    h.server.close()
    await h.server.wait_closed()


async def test_the_client_keeps_its_own_limits_and_refuses_a_chunk_over_them(hostile: HostileServer) -> None:
    client = Client(f"opc.tcp://127.0.0.1:{hostile.port}", timeout=5)
    refused: list[tuple[str, bool]] = []

    def on_refused(reason: str, *, fatal: bool) -> None:
        refused.append((reason, fatal))

    bound(client, Limits(8 * 1024 * 1024, 256), on_refused)
    with pytest.raises((ConnectionError, UaError)):  # whichever request was under way fails
        await client.connect()
    client.disconnect_socket()
    # The Hello told the server our limits: receive buffer, then send buffer, message size, chunk count.
    assert struct.unpack_from("<IIIII", hostile.hello) == (0, CHUNK_BYTES, CHUNK_BYTES, 8 * 1024 * 1024, 256)
    (reason, fatal) = refused[0]
    assert fatal
    assert reason.startswith("the server sent a message chunk of 1,073,741,824 bytes, more than the 65,535")
    async with asyncio.timeout(10):
        await hostile.done.wait()  # the client hung up
