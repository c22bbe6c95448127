"""Several devices on one connection or serial line, against the simulator in a separate process:
coalesced reads counted at the simulator, poll groups, isolation of a dead unit, injected faults
(busy N times, garbled answers, a range the device never answers), and RTU over a pseudo-terminal and
over TCP with two unit ids end to end."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edge_gateway.model import Quality
from edge_gateway.sources.base import SourceState
from edge_gateway.sources.modbus.config import ModbusSource
from edge_gateway.sources.modbus.reader import ModbusReader
from edge_gateway.sources.modbus.recovery import QUARANTINE_S
from simulators.modbus_process import ModbusSimProcess
from tests.support import Collected, Starter, until


def line_config(sim: ModbusSimProcess, devices: list[dict[str, Any]], **overrides: Any) -> ModbusSource:
    doc: dict[str, Any] = {
        "type": "modbus",
        "name": "line",
        "transport": sim.transport,
        "poll_interval_ms": 100,
        "timeout_s": 0.5,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
        "devices": devices,
    }
    if sim.transport == "rtu":
        doc["serial"] = {"port": sim.serial_port, "baudrate": sim.baudrate, "parity": "N"}
    else:
        doc["host"], doc["port"] = "127.0.0.1", sim.port
    return ModbusSource.model_validate(doc | overrides)


def device(name: str, unit: int, points: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "unit_id": unit, "points": [p | {"alias": f"{name}.{p['alias']}"} for p in points]}


PROCESS_POINTS: list[dict[str, Any]] = [
    {"alias": "counter", "address": 0, "data_type": "uint32"},
    {"alias": "temperature", "address": 2, "data_type": "int16", "scale": 0.1},
    {"alias": "flow", "table": "input", "address": 2, "data_type": "float32", "word_order": "little"},
    {"alias": "running", "table": "coil", "address": 0},
]


def polls_of(sink: Collected, device_name: str) -> list[list[Any]]:
    return [poll for poll in sink.polls if poll and poll[0].point.startswith(f"{device_name}.")]


async def test_spread_points_are_read_in_the_fewest_requests_counted_at_the_simulator(start_task: Starter) -> None:
    holding = [{"alias": f"h{a}", "address": a} for a in range(0, 600, 3)]  # 200 points, 2-register holes
    coils = [{"alias": f"c{a}", "table": "coil", "address": a} for a in (*range(0, 1500, 5), *range(2500, 4000, 5))]
    points = holding + coils
    with ModbusSimProcess(units=(1, 2), registers=600) as sim:
        config = line_config(
            sim,
            [device("a", 1, points), device("b", 2, points)],
            poll_interval_ms=60_000,  # exactly one poll per device during the test
            max_gap_registers=2,
            max_gap_bits=4,
        )
        reader = ModbusReader(config)
        sink = Collected()
        start_task(reader.run(sink))
        await until(lambda: len(sink.polls) == 2)
        assert all(r.quality is Quality.GOOD for poll in sink.polls for r in poll)
        for unit in (1, 2):
            requests = sim.requests(unit)
            # Registers: 42 points (0..123) fit in one 125-register read: ceil(200 / 42) = 5 reads.
            assert [(a, c) for _, fc, a, c in requests if fc == 3] == [(0, 124), (126, 124), (252, 124), (378, 124),
                                                                      (504, 94)]  # fmt: skip
            # Bits: each run of 300 coils spans 1,496 bits, under the 2,000-bit limit: one read each.
            assert [(a, c) for _, fc, a, c in requests if fc == 1] == [(0, 1496), (2500, 1496)]
        assert len(sim.requests()) == 14 == len(reader.requests)


async def test_poll_groups_keep_their_own_intervals(start_task: Starter) -> None:
    with ModbusSimProcess() as sim:
        points = [
            {"alias": "fast", "address": 0, "data_type": "uint32", "group": "fast"},
            {"alias": "slow", "address": 50, "group": "slow"},
        ]
        config = line_config(
            sim,
            [device("d", 1, points)],
            poll_groups=[{"name": "fast", "interval_ms": 50}, {"name": "slow", "interval_ms": 500}],
        )
        sink = Collected()
        start_task(ModbusReader(config).run(sink))
        await until(lambda: sum(1 for p in sink.polls if p[0].point == "d.slow") >= 3)
        groups = [{r.point for r in poll} for poll in sink.polls]
        assert all(g in ({"d.fast"}, {"d.slow"}) for g in groups)  # one sink call per group poll
        fast, slow = groups.count({"d.fast"}), groups.count({"d.slow"})
        assert fast >= 5 * slow  # 10x nominally; generous for a loaded machine
        addresses = [a for _, _, a, _ in sim.requests()]
        assert addresses.count(0) == fast
        assert addresses.count(50) == slow


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
async def test_a_dead_unit_does_not_lower_the_healthy_units_poll_rate(start_task: Starter, transport: str) -> None:
    """Rate against a control, not against the clock: the same healthy unit alone on a line of its own,
    polled by a second reader on this same event loop over the same window, so a loaded machine slows
    both alike. A dead unit that held up the line (no backoff, or waits in the healthy unit's slots)
    would leave its neighbour with a fraction of the control's polls."""
    window_s = 4.0
    with (
        ModbusSimProcess(transport=transport, units=(1,)) as sim,
        ModbusSimProcess(transport=transport, units=(1,)) as alone_sim,
    ):
        reader = ModbusReader(
            line_config(sim, [device("ok", 1, PROCESS_POINTS), device("dead", 9, PROCESS_POINTS)], timeout_s=0.08)
        )
        alone = ModbusReader(line_config(alone_sim, [device("ok", 1, PROCESS_POINTS)], timeout_s=0.08))
        sink, control = Collected(), Collected()
        start_task(reader.run(sink))
        start_task(alone.run(control))
        await until(
            lambda: len(polls_of(sink, "ok")) >= 3 and polls_of(sink, "dead") and len(polls_of(control, "ok")) >= 3,
            60,
        )
        before, control_before = len(polls_of(sink, "ok")), len(polls_of(control, "ok"))
        dead = reader.devices["dead"]
        probes_before = dead.requests
        await asyncio.sleep(window_s)
        healthy = len(polls_of(sink, "ok")) - before
        alone_polls = len(polls_of(control, "ok")) - control_before
        probes = dead.requests - probes_before
        # A loaded machine can stall either simulator past the 80 ms timeout now and then: the line with a dead
        # unit on it is allowed a few polls fewer than its control, never a fraction of them.
        assert healthy >= 0.8 * alone_polls - 1, (healthy, alone_polls, reader.devices)
        # Nothing of the dead unit's failure reaches its neighbour: a BAD reading of the healthy unit can only be
        # its own request timing out on a stalled machine, never an error about unit 9 or the connection.
        bad = [r for poll in polls_of(sink, "ok") for r in poll if r.quality is not Quality.GOOD]
        assert all("from unit 1 " in (r.status or "") and "no response" in (r.status or "") for r in bad), bad
        assert len(bad) <= len(polls_of(sink, "ok")) // 4, bad
        assert dead.state == "backing_off"
        # Backed off, not retried in a hot loop: a probe every second or more, one request each (a loaded
        # machine only makes fewer), and many more of its slots skipped than probed.
        assert probes <= 1 + window_s
        assert dead.skipped_polls > 3 * dead.requests, (dead.skipped_polls, dead.requests)
        # Every probe timed out; the last one may still be waiting for its timeout.
        assert set(dead.errors_by_kind) <= {"timeout"}
        assert dead.requests - 1 <= dead.errors_by_kind.get("timeout", 0) <= dead.requests
        (first_bad, *_) = polls_of(sink, "dead")
        assert {r.quality for r in first_bad} == {Quality.BAD}
        assert "no response within 0.08 s" in str(first_bad[0].status)
        assert "from unit 9" in str(first_bad[0].status)
        assert reader.devices["ok"].errors_by_kind == {}
        assert reader.status.state is SourceState.CONNECTED
        assert reader.status.reconnects == 0


@pytest.mark.parametrize("transport", ["rtu", "rtu_over_tcp"])
async def test_rtu_with_two_unit_ids_end_to_end(start_task: Starter, transport: str) -> None:
    with ModbusSimProcess(transport=transport, units=(1, 2)) as sim:
        sim.command("set_value", unit=2, table="holding", address=40, data_type="float64", value=-2.5)
        sim.command("set_value", unit=2, table="discrete_input", address=7, data_type="bool", value=True)
        extra = [
            {"alias": "f64", "address": 40, "data_type": "float64"},
            {"alias": "di7", "table": "discrete_input", "address": 7},
        ]
        config = line_config(sim, [device("m1", 1, PROCESS_POINTS), device("m2", 2, PROCESS_POINTS + extra)])
        reader = ModbusReader(config)
        sink = Collected()
        start_task(reader.run(sink))
        await until(lambda: len(polls_of(sink, "m1")) >= 2 and len(polls_of(sink, "m2")) >= 2)
        counter = sim.command("step")["counter"]
        await until(lambda: all(sink.good(f"{d}.counter")[-1:] == [counter] for d in ("m1", "m2")))
        assert sink.good("m2.f64")[-1] == -2.5
        assert sink.good("m2.di7")[-1] is True
        assert isinstance(sink.good("m1.running")[-1], bool)
        assert all(r.quality is Quality.GOOD for r in sink.readings)
        assert {u for u, *_ in sim.requests()} == {1, 2}
        assert reader.status.errors == 0


async def test_busy_n_times_makes_n_bad_polls_of_that_unit_only(start_task: Starter) -> None:
    with ModbusSimProcess(units=(1, 2)) as sim:
        points = [{"alias": "counter", "address": 0, "data_type": "uint32"}]
        reader = ModbusReader(line_config(sim, [device("m1", 1, points), device("m2", 2, points)]))
        sink = Collected()
        start_task(reader.run(sink))
        await until(lambda: len(polls_of(sink, "m2")) >= 2)
        sim.command("busy", unit=2, count=3)
        await until(lambda: len(sink.bad("m2.counter")) == 3 and len(sink.good("m2.counter")) >= 5)
        reasons = {str(r.status) for r in sink.bad("m2.counter")}
        where = f"holding registers 0..1 from unit 2 at 127.0.0.1:{sim.port}"
        assert reasons == {f"modbus exception 6 (server device busy) reading {where}"}
        assert reader.devices["m2"].errors_by_kind == {"exception": 3}
        assert reader.devices["m2"].state == "ok"  # it answered: no backoff for busy
        assert sink.bad("m1.counter") == []
        assert reader.devices["m1"].errors_by_kind == {}


@pytest.mark.parametrize(("transport", "mode"), [("rtu", "crc"), ("rtu_over_tcp", "short"), ("tcp", "short")])
async def test_garbled_answers_are_bad_with_the_reason(start_task: Starter, transport: str, mode: str) -> None:
    with ModbusSimProcess(transport=transport, units=(1,)) as sim:
        points = [{"alias": "counter", "address": 0, "data_type": "uint32"}]
        reader = ModbusReader(
            line_config(
                sim, [device("m", 1, points)], timeout_s=0.2, device_backoff_min_s=0.1, device_backoff_max_s=0.2
            )
        )
        sink = Collected()
        start_task(reader.run(sink))
        await until(lambda: len(sink.polls) >= 2)
        sim.command("garble", unit=1, count=2, mode=mode)
        await until(lambda: len(sink.bad("m.counter")) == 2 and sink.polls[-1][0].quality is Quality.GOOD)
        for bad in sink.bad("m.counter"):
            assert "invalid answer (bad CRC or short frame" in str(bad.status)
        assert reader.devices["m"].errors_by_kind == {"frame": 2}
        assert reader.status.reconnects == 0


async def test_a_range_the_device_never_answers_is_narrowed_down_and_quarantined(start_task: Starter) -> None:
    with ModbusSimProcess(units=(1,)) as sim:
        sim.command("silence", unit=1, table="holding", start=51, end=51)
        points: list[dict[str, Any]] = [
            *({"alias": f"r{a}", "address": a} for a in range(5)),
            *({"alias": f"r{a}", "address": a} for a in (50, 51, 52)),
        ]
        reader = ModbusReader(line_config(sim, [device("m", 1, points)], timeout_s=0.1, max_gap_registers=4))
        assert [(r.start, r.count) for r in reader.requests] == [(0, 5), (50, 3)]
        sink = Collected()
        start_task(reader.run(sink))
        await until(lambda: any("never answers" in str(r.status) for r in sink.bad("m.r51")))
        await until(lambda: sink.polls[-1][-1].point == "m.r52" and sink.polls[-1][-1].quality is Quality.GOOD)
        polls_then = len(sink.polls)
        await until(lambda: len(sink.polls) >= polls_then + 5)
        reason = str(sink.bad("m.r51")[-1].status)
        assert reason == (
            f"unit 1 never answers holding registers 51..51 from unit 1 at 127.0.0.1:{sim.port} although it"
            f" answers its other reads: check the address map of device m; retried every {QUARANTINE_S:.0f} s"
        )
        for poll in sink.polls[polls_then:]:
            assert {r.point for r in poll if r.quality is Quality.BAD} == {"m.r51"}
        # Narrowed down by halves, then left alone: a handful of requests ever touched register 51.
        touching = [r for r in sim.requests() if r[1] == 3 and r[2] <= 51 < r[2] + r[3]]
        assert len(touching) <= 5
        assert reader.devices["m"].state == "ok"


async def test_slow_devices_keep_their_rate_with_several_requests_in_flight(start_task: Starter) -> None:
    """Three devices answering 60 ms late, polled every 100 ms: one connection cannot carry that (180 ms
    of answers per 100 ms: overruns), three connections in flight can."""
    units = (1, 2, 3)
    points = [{"alias": "counter", "address": 0, "data_type": "uint32"}]
    with ModbusSimProcess(units=units) as sim:
        for unit in units:
            sim.command("delay", unit=unit, ms=60)
        devices = [device(f"m{u}", u, points) for u in units]
        readers = [ModbusReader(line_config(sim, devices, max_outstanding=n)) for n in (1, 3)]
        sinks = [Collected(), Collected()]
        for reader, sink in zip(readers, sinks, strict=True):
            start_task(reader.run(sink))
        # Counted, not timed: both readers share this event loop and the simulator, so a loaded machine
        # slows both; the one connection overruns for want of answers, the three do not.
        await until(lambda: readers[0].status.errors_by_kind.get("overrun", 0) >= 20, 60)
        one, three = (r.status.errors_by_kind.get("overrun", 0) for r in readers)
        assert three * 4 < one
        for name in ("m1", "m2", "m3"):
            assert len(polls_of(sinks[0], name)) < len(polls_of(sinks[1], name))
        assert all(r.quality is Quality.GOOD for sink in sinks for r in sink.readings)


async def test_a_serial_port_that_cannot_be_opened_is_retried_with_a_clear_reason(start_task: Starter) -> None:
    port = "/dev/serial/by-id/edge-gateway-test-absent"  # a device path (the config refuses anything else)
    config = ModbusSource.model_validate(
        {
            "type": "modbus",
            "name": "line",
            "transport": "rtu",
            "serial": {"port": port},
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.1,
            "points": [{"alias": "x", "address": 0}],
        }
    )
    reader = ModbusReader(config)
    sink = Collected()
    start_task(reader.run(sink))
    await until(lambda: reader.status.errors_by_kind.get("connection", 0) >= 3)
    assert reader.status.state is SourceState.RECONNECTING
    assert reader.status.last_error == (
        f"cannot open serial port {port}; check that it exists, that this user may open it (group dialout) and"
        " that no other program holds it"
    )
    assert sink.polls == []
