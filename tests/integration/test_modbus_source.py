"""ModbusReader against the Modbus PLC simulator on loopback: values, faults, reconnects, cancellation.

Complements the Modbus cases in test_sources.py. Every peer is real: the pymodbus simulator (in-process
when the test needs its state or fault injection, a subprocess when it must die), and a small TCP hop
(``ModbusTap``) that forwards Modbus TCP frames and can swallow requests, to make a PLC that answers
some requests and never others.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import struct
from typing import Any, Self

import pytest
from pymodbus.constants import ExcCodes

from edge_gateway.model import Quality
from edge_gateway.sources.base import SourceState
from edge_gateway.sources.modbus.config import ModbusTcpSource
from edge_gateway.sources.modbus.reader import ModbusReader
from simulators.modbus_plc import REGISTERS, ModbusPlc
from simulators.ports import free_port
from simulators.process import stop_process
from tests.support import MODBUS_TICK_MS, Collected, Starter, start_sim, until

FROZEN_TICK_MS = 3_600_000  # the simulator's own ticks never come during a test: the test calls step()

POINTS: list[dict[str, Any]] = [
    {"alias": "counter", "address": 0, "data_type": "uint32"},
    {"alias": "temperature", "address": 2, "data_type": "int16", "scale": 0.1},
    {"alias": "pressure", "address": 3, "data_type": "float32"},
    {"alias": "speed", "address": 5, "data_type": "uint16"},
    {"alias": "position", "address": 6, "data_type": "int32"},
    {"alias": "status", "address": 8, "data_type": "uint16"},
    {"alias": "energy", "table": "input", "address": 0, "data_type": "uint32", "scale": 0.001},
    {"alias": "flow", "table": "input", "address": 2, "data_type": "float32", "word_order": "little"},
    {"alias": "ambient", "table": "input", "address": 4, "data_type": "int16", "scale": 0.1, "offset": 273.15},
]


def config(port: int, points: list[dict[str, Any]] | None = None, **overrides: Any) -> ModbusTcpSource:
    doc: dict[str, Any] = {
        "type": "modbus",
        "name": "plc",
        "host": "127.0.0.1",
        "port": port,
        "poll_interval_ms": 50,
        "timeout_s": 1.0,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
        "points": POINTS if points is None else points,
    }
    return ModbusTcpSource.model_validate(doc | overrides)


class ModbusTap:
    """A TCP hop in front of a Modbus TCP server: forwards every frame both ways, except requests whose
    function code is in ``drop`` (those get no answer, as from a PLC that ignores them). Counts the
    client connections open through it."""

    def __init__(self, upstream_port: int, drop: frozenset[int] = frozenset()) -> None:
        self.upstream_port = upstream_port
        self.drop = drop
        self.open_connections = 0
        self.dropped = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.open_connections += 1
        plc_r, plc_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._requests(client_r, plc_w))
                tg.create_task(self._answers(plc_r, client_w))
        finally:
            self.open_connections -= 1
            self._handlers.discard(task)
            for w in (client_w, plc_w):
                w.close()

    async def _requests(self, client_r: asyncio.StreamReader, plc_w: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await client_r.readexactly(7)  # MBAP: transaction, protocol, length, unit
                (length,) = struct.unpack(">H", header[4:6])
                pdu = await client_r.readexactly(length - 1)
                if pdu[0] in self.drop:
                    self.dropped += 1
                    continue
                plc_w.write(header + pdu)
        except asyncio.IncompleteReadError:
            pass  # the reader closed its connection
        plc_w.close()  # the PLC then closes its side, which ends _answers

    async def _answers(self, plc_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):  # the reader went away mid-answer
            while data := await plc_r.read(4096):
                client_w.write(data)
                await client_w.drain()


def s16(word: int) -> int:
    return word - 0x10000 if word & 0x8000 else word


def f32(hi: int, lo: int) -> float:
    return float(struct.unpack(">f", struct.pack(">HH", hi, lo))[0])


def expected_values(plc: ModbusPlc) -> dict[str, Any]:
    """What each configured point must read, decoded from the simulator's registers by hand."""
    h, i = plc.holding, plc.input
    return {
        "counter": plc.counter,
        "temperature": pytest.approx(s16(h[2]) * 0.1),
        "pressure": f32(h[3], h[4]),
        "speed": h[5],
        "position": (h[6] << 16 | h[7]) - (1 << 32 if h[6] & 0x8000 else 0),
        "status": h[8],
        "energy": pytest.approx(((i[0] << 16) | i[1]) * 0.001),
        "flow": f32(i[3], i[2]),  # low word first
        "ambient": pytest.approx(s16(i[4]) * 0.1 + 273.15),
    }


async def test_every_type_decodes_to_what_the_plc_holds_and_the_counter_steps_by_one(start_task: Starter) -> None:
    port = free_port()
    async with ModbusPlc(port=port, tick_ms=FROZEN_TICK_MS) as plc:
        sink = Collected()
        reader = ModbusReader(config(port))
        assert [(r.table, r.start, r.count) for r in reader.requests] == [("holding", 0, 9), ("input", 0, 5)]
        start_task(reader.run(sink))
        for _ in range(5):
            plc.step()
            await until(lambda: sink.polls and sink.polls[-1][0].value == plc.counter)
            latest = sink.polls[-1]
            assert {r.point: r.value for r in latest} == expected_values(plc)
            assert all(r.quality is Quality.GOOD and r.status is None for r in latest)
            assert len({r.gateway_ts_ns for r in latest}) == 1  # one poll, one timestamp
        counters = sorted(set(sink.good("counter")))
        assert counters == list(range(1, plc.counter + 1)) or counters == list(range(2, plc.counter + 1))
        assert isinstance(sink.good("counter")[0], int)
        assert isinstance(sink.good("energy")[0], float)
        assert reader.status.errors == 0
        assert reader.status.state is SourceState.CONNECTED


async def test_counter_under_live_ticks_is_non_decreasing_and_has_no_gaps(start_task: Starter) -> None:
    # The simulator in its own process: a stall of this event loop cannot make its ticks catch up in a burst
    # (which an in-process simulator does), so no gap is excused.
    port = free_port()
    proc = start_sim("simulators.modbus_plc", port, tick_ms=MODBUS_TICK_MS)
    try:
        sink = Collected()
        start_task(ModbusReader(config(port, poll_interval_ms=50)).run(sink))
        await until(lambda: len(set(sink.good("counter"))) >= 12, 60)
        values = sink.good("counter")
    finally:
        stop_process(proc)
    assert values == sorted(values)
    distinct = sorted(set(values))
    assert distinct == list(range(distinct[0], distinct[-1] + 1))


async def test_a_busy_plc_gives_bad_readings_for_those_reads_then_good_ones_again(start_task: Starter) -> None:
    port = free_port()
    async with ModbusPlc(port=port, tick_ms=FROZEN_TICK_MS) as plc:

        def busy_after_second_poll(n: int) -> None:
            if n == 2:  # between two polls: the third poll's holding read, then its input read
                plc.fail_next_reads(2, ExcCodes.DEVICE_BUSY)

        sink = Collected(on_poll=busy_after_second_poll)
        reader = ModbusReader(config(port, poll_interval_ms=100))
        start_task(reader.run(sink))
        await until(lambda: len(sink.polls) >= 5)
        busy_poll = sink.polls[2]
        assert [poll for poll in sink.polls if any(r.quality is Quality.BAD for r in poll)] == [busy_poll]
        assert all(r.quality is Quality.BAD and r.value is None for r in busy_poll)
        assert [r.point for r in busy_poll] == [p["alias"] for p in POINTS]
        reasons = {str(r.status) for r in busy_poll}
        assert reasons == {
            f"modbus exception 6 (server device busy) reading holding registers 0..8 from unit 1 at 127.0.0.1:{port}",
            f"modbus exception 6 (server device busy) reading input registers 0..4 from unit 1 at 127.0.0.1:{port}",
        }
        assert reader.status.errors_by_kind == {"exception": 2}
        assert reader.status.state is SourceState.CONNECTED
        assert reader.status.reconnects == 0


async def test_a_wrong_address_next_to_good_ones_makes_only_its_own_point_bad(start_task: Starter) -> None:
    port = free_port()
    last = REGISTERS - 1  # the simulator's last holding register; the one after it does not exist
    points = [
        *({"alias": f"r{a}", "address": a} for a in range(last - 5, last + 1)),
        {"alias": "beyond", "address": last + 1},
        {"alias": "counter", "address": 0, "data_type": "uint32"},
    ]
    async with ModbusPlc(port=port, tick_ms=FROZEN_TICK_MS):
        sink = Collected()
        reader = ModbusReader(config(port, points))
        assert [(r.start, r.count) for r in reader.requests] == [(0, 2), (last - 5, 7)]  # the planner bridged it
        start_task(reader.run(sink))
        await until(lambda: len(sink.polls) >= 3)
        for poll in sink.polls:
            quality = {r.point: r.quality for r in poll}
            assert quality.pop("beyond") is Quality.BAD
            assert set(quality.values()) == {Quality.GOOD}
        reason = str(sink.bad("beyond")[0].status)
        assert reason.startswith(f"modbus exception 2 (illegal data address) reading holding registers {last + 1}..")
        polls = len(sink.polls)  # the poll under way may have counted its error already
        assert reader.status.errors_by_kind in ({"exception": polls}, {"exception": polls + 1})  # "beyond" only
        # The refined plan is kept: later polls do not probe the refused range again.
        assert all(r.end <= last or r.start == last + 1 for r in reader.requests)


async def test_a_request_the_plc_never_answers_times_out_alone(start_task: Starter) -> None:
    port = free_port()
    async with ModbusPlc(port=port, tick_ms=FROZEN_TICK_MS), ModbusTap(port, drop=frozenset({4})) as tap:
        sink = Collected()
        reader = ModbusReader(config(tap.port, poll_interval_ms=100, timeout_s=0.3))
        start_task(reader.run(sink))
        await until(lambda: len(sink.bad("flow")) >= 3)
        assert tap.dropped >= 3
        for poll in sink.polls:
            assert {r.point for r in poll if r.quality is Quality.BAD} == {"energy", "flow", "ambient"}
        reason = str(sink.bad("flow")[0].status)
        assert reason == f"read input registers 0..4 from unit 1 at 127.0.0.1:{tap.port}: no response within 0.3 s"
        assert sink.good("counter")
        assert reader.status.errors_by_kind["timeout"] in (len(sink.polls), len(sink.polls) + 1)
        assert reader.status.errors_by_kind["overrun"] >= 1  # 0.3 s of waiting in a 0.1 s slot
        assert reader.status.state is SourceState.CONNECTED
        assert tap.open_connections == 1


async def test_a_plc_absent_at_start_emits_nothing_until_it_comes_up(start_task: Starter) -> None:
    port = free_port()
    sink = Collected()
    reader = ModbusReader(config(port))
    start_task(reader.run(sink))
    await until(lambda: reader.status.errors_by_kind.get("connection", 0) >= 3)
    state_while_absent = reader.status.state  # a local, so mypy does not narrow the later check
    assert state_while_absent is SourceState.RECONNECTING
    assert "cannot connect to 127.0.0.1" in str(reader.status.last_error)
    assert sink.polls == []  # nothing to mark: there was never data
    async with ModbusPlc(port=port, tick_ms=FROZEN_TICK_MS):
        await until(lambda: sink.good("counter"))
        assert reader.status.state is SourceState.CONNECTED
        assert reader.status.reconnects >= 3


async def test_cancelling_the_reader_closes_its_connection_and_propagates() -> None:
    port = free_port()
    async with ModbusPlc(port=port, tick_ms=FROZEN_TICK_MS), ModbusTap(port) as tap:
        sink = Collected()
        task = asyncio.get_running_loop().create_task(ModbusReader(config(tap.port)).run(sink))
        await until(lambda: sink.good("counter"))
        assert tap.open_connections == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: tap.open_connections == 0, 5)


async def test_a_slow_sink_counts_skipped_polls_instead_of_drifting(start_task: Starter) -> None:
    port = free_port()
    async with ModbusPlc(port=port, tick_ms=FROZEN_TICK_MS):
        sink = Collected(delay_s=0.25)  # each hand-off takes 2.5 poll slots
        reader = ModbusReader(config(port, poll_interval_ms=100))
        start_task(reader.run(sink))
        await until(lambda: len(sink.polls) >= 5)
        overruns = reader.status.errors_by_kind["overrun"]
        assert overruns >= 2 * (len(sink.polls) - 1)  # at least two skipped slots per completed poll
        # Polls start on the 100 ms grid of the first one: no drift from the slow hand-off.
        starts = [poll[0].gateway_ts_ns for poll in sink.polls]
        offsets = [((t - starts[0]) / 1e6) % 100 for t in starts]
        assert all(min(o, 100 - o) < 40 for o in offsets), offsets


async def test_plc_killed_and_restarted_on_the_same_port_marks_one_gap_and_reconnects(start_task: Starter) -> None:
    port = free_port()
    proc = start_sim("simulators.modbus_plc", port, tick_ms=100)
    try:
        sink = Collected()
        reader = ModbusReader(config(port))
        start_task(reader.run(sink))
        await until(lambda: len(sink.good("counter")) >= 3)
        stop_process(proc, signal.SIGKILL)
        await until(lambda: reader.status.state is SourceState.RECONNECTING)
        await asyncio.sleep(1.0)  # several reconnect attempts while the PLC is away
        assert reader.status.errors_by_kind["connection"] >= 2
        polls_while_down = len(sink.polls)
        proc = start_sim("simulators.modbus_plc", port, tick_ms=100)
        await until(lambda: len(sink.polls) > polls_while_down and sink.polls[-1][0].quality is Quality.GOOD)
        assert reader.status.state is SourceState.CONNECTED
        assert reader.status.reconnects >= 1
        for point in POINTS:  # exactly one BAD reading per point marks the outage
            (gap,) = sink.bad(point["alias"])
            assert "connection to 127.0.0.1" in str(gap.status)
            assert "lost" in str(gap.status)
    finally:
        stop_process(proc)
