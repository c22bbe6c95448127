"""Modbus source benchmark against the simulator in a separate process.

1. Throughput over Modbus TCP: 32 devices (unit ids) on one connection, each with 600 points of mixed
   types (uint16, int32, float32) over 1,000 holding registers, polled every 50 ms (more than the line
   carries: there is always a poll due). Points/s and registers/s delivered GOOD to the sink,
   with the reader pinned to one core and the simulator on the other; once with one request in flight
   and once with ``max_outstanding`` 4 (four connections).
2. Scheduler jitter: 10 devices x 100 points, each polled every 100 ms; the p50/p99/max lateness of poll
   starts against their deadlines.
3. RTU at 115200 baud (8N2, 11 bits per character like 8E1) over the simulator's paced pseudo-terminal line:
   4 devices x 125 uint16 registers, polled as fast as the line allows, against the theoretical limit of
   that line: a read of 125 registers is an 8-byte request and a 255-byte answer plus two 3.5-character
   silences (1.75 ms each above 19,200 baud, per the Modbus serial line specification).

    python -m bench.modbus [--seconds 10]

Prints a table and writes bench/results/modbus.json (a flat object of numbers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

from bench.common import cpu_seconds, print_table, write_results
from edge_gateway.model import Quality, Reading
from edge_gateway.sources.modbus.config import ModbusSource
from edge_gateway.sources.modbus.reader import ModbusReader
from simulators.modbus_process import ModbusSimProcess

BAUD = 115200
BITS_PER_CHAR = 11  # 8N2: start + 8 data + 2 stop (a pseudo-terminal refuses parity; 8E1 is 11 bits too)
T35_S = 0.00175  # inter-frame silence above 19,200 baud


class Count:
    def __init__(self) -> None:
        self.good = 0
        self.bad = 0
        self.registers = 0
        self.registers_per_point: dict[str, int] = {}

    async def __call__(self, readings: Sequence[Reading]) -> None:
        for r in readings:
            if r.quality is Quality.GOOD:
                self.good += 1
                self.registers += self.registers_per_point.get(r.point, 1)
            else:
                self.bad += 1


def mixed_points(prefix: str, registers: int) -> list[dict[str, Any]]:
    """uint16, int32 and float32 points in turn, packed over ``registers`` registers."""
    points: list[dict[str, Any]] = []
    address, n = 0, 0
    kinds = (("uint16", 1), ("int32", 2), ("float32", 2))
    while True:
        data_type, width = kinds[n % 3]
        if address + width > registers:
            return points
        points.append({"alias": f"{prefix}.p{address}", "address": address, "data_type": data_type})
        address, n = address + width, n + 1


def config(sim: ModbusSimProcess, devices: list[dict[str, Any]], **extra: Any) -> ModbusSource:  # noqa: ANN401
    doc: dict[str, Any] = {
        "type": "modbus",
        "name": "bench",
        "transport": sim.transport,
        "timeout_s": 2.0,
        "poll_interval_ms": 10,
        "devices": devices,
    }
    if sim.transport == "rtu":
        doc["serial"] = {"port": sim.serial_port, "baudrate": BAUD, "parity": "N", "stop_bits": 2}
    else:
        doc |= {"host": "127.0.0.1", "port": sim.port}
    return ModbusSource.model_validate(doc | extra)


class Span:
    """Wall time and the CPU time of this process (the reader) and of the simulator over a measurement."""

    seconds = reader_cpu = sim_cpu = 0.0


async def measure(reader: ModbusReader, sink: Count, seconds: float, sim: ModbusSimProcess) -> Span:
    """Run the reader, skip a warm-up second, and measure the next ``seconds``."""
    assert sim.proc is not None
    task = asyncio.get_running_loop().create_task(reader.run(sink))
    try:
        await asyncio.sleep(1.0)
        sink.good = sink.bad = sink.registers = 0
        reader.lateness_s.clear()
        span = Span()
        started, cpu0, sim0 = time.perf_counter(), time.process_time(), cpu_seconds(sim.proc.pid)
        await asyncio.sleep(seconds)
        span.seconds = time.perf_counter() - started
        span.reader_cpu = (time.process_time() - cpu0) / span.seconds
        span.sim_cpu = (cpu_seconds(sim.proc.pid) - sim0) / span.seconds
        return span
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def pin(pid: int, cpu: int) -> None:
    with contextlib.suppress(OSError):  # a machine with one core: run unpinned
        os.sched_setaffinity(pid, {cpu % (os.cpu_count() or 1)})


async def tcp_throughput(seconds: float, outstanding: int) -> dict[str, float]:
    devices_n, registers = 32, 1000
    with ModbusSimProcess(units=tuple(range(1, devices_n + 1)), registers=registers) as sim:
        assert sim.proc is not None
        pin(sim.proc.pid, 0)
        devices = [
            {"name": f"d{u}", "unit_id": u, "points": mixed_points(f"d{u}", registers)} for u in range(1, devices_n + 1)
        ]
        cfg = config(sim, devices, max_outstanding=outstanding, poll_interval_ms=50)
        sink = Count()
        sink.registers_per_point = {p.alias: p.register_count for p in cfg.all_points}
        reader = ModbusReader(cfg)
        span = await measure(reader, sink, seconds, sim)
        return {
            "points_per_s": sink.good / span.seconds,
            "registers_per_s": sink.registers / span.seconds,
            "reader_cpu": span.reader_cpu,
            "sim_cpu": span.sim_cpu,
            "bad": sink.bad,
            "points": len(cfg.all_points),
            "reads_per_poll": len(reader.requests),
        }


async def jitter(seconds: float) -> dict[str, float]:
    devices_n = 10
    with ModbusSimProcess(units=tuple(range(1, devices_n + 1)), registers=200) as sim:
        assert sim.proc is not None
        pin(sim.proc.pid, 0)
        devices = [
            {"name": f"d{u}", "unit_id": u, "points": [{"alias": f"d{u}.p{a}", "address": a} for a in range(100)]}
            for u in range(1, devices_n + 1)
        ]
        reader = ModbusReader(config(sim, devices, poll_interval_ms=100))
        sink = Count()
        await measure(reader, sink, seconds, sim)
        late_ms = sorted(x * 1000 for x in reader.lateness_s)
        return {
            "polls": len(late_ms),
            "lateness_p50_ms": statistics.median(late_ms),
            "lateness_p99_ms": late_ms[int(len(late_ms) * 0.99) - 1],
            "lateness_max_ms": late_ms[-1],
            "overruns": reader.status.errors_by_kind.get("overrun", 0),
        }


async def rtu(seconds: float) -> dict[str, float]:
    devices_n, registers = 4, 125
    units = tuple(range(1, devices_n + 1))
    with ModbusSimProcess(transport="rtu", units=units, baudrate=BAUD, registers=200) as sim:
        assert sim.proc is not None
        pin(sim.proc.pid, 0)
        devices = [
            {"name": f"d{u}", "unit_id": u, "points": [{"alias": f"d{u}.p{a}", "address": a} for a in range(registers)]}
            for u in range(1, devices_n + 1)
        ]
        reader = ModbusReader(config(sim, devices))
        sink = Count()
        span = await measure(reader, sink, seconds, sim)
        request_bytes, answer_bytes = 8, 5 + 2 * registers
        frame_s = (request_bytes + answer_bytes) * BITS_PER_CHAR / BAUD + 2 * T35_S
        theoretical = registers / frame_s
        measured = sink.good / span.seconds
        return {
            "points_per_s": measured,
            "theoretical_points_per_s": theoretical,
            "frame_efficiency": measured / theoretical,
            "bad": sink.bad,
        }


async def run(seconds: float) -> dict[str, float]:
    pin(0, 1)  # this process (the reader) on its own core
    one = await tcp_throughput(seconds, 1)
    four = await tcp_throughput(seconds, 4)
    jit = await jitter(seconds)
    line = await rtu(seconds)
    rows = [
        ("TCP, 32 devices, 1 in flight: points/s", one["points_per_s"]),
        ("TCP, 32 devices, 1 in flight: registers/s", one["registers_per_s"]),
        ("TCP, 32 devices, 1 in flight: reader CPU (cores)", one["reader_cpu"]),
        ("TCP, 32 devices, 1 in flight: simulator CPU (cores)", one["sim_cpu"]),
        ("TCP, 32 devices, 4 in flight: points/s", four["points_per_s"]),
        ("TCP, 32 devices, 4 in flight: registers/s", four["registers_per_s"]),
        ("TCP, 32 devices, 4 in flight: reader CPU (cores)", four["reader_cpu"]),
        ("TCP, 32 devices, 4 in flight: simulator CPU (cores)", four["sim_cpu"]),
        ("TCP, reader CPU per point (µs)", 1e6 * four["reader_cpu"] / four["points_per_s"]),
        ("poll lateness at 100 ms, 10 devices: p50 ms", jit["lateness_p50_ms"]),
        ("poll lateness at 100 ms, 10 devices: p99 ms", jit["lateness_p99_ms"]),
        ("poll lateness at 100 ms, 10 devices: max ms", jit["lateness_max_ms"]),
        ("RTU 115200 8N2, 4 devices: points/s", line["points_per_s"]),
        ("RTU 115200 8N2: theoretical points/s", line["theoretical_points_per_s"]),
        ("RTU frame efficiency", line["frame_efficiency"]),
    ]
    print_table(((name, f"{value:>12,.2f}") for name, value in rows), sep="  ")
    best = four if four["points_per_s"] > one["points_per_s"] else one
    return {
        "points_per_s": round(best["points_per_s"]),
        "registers_per_s": round(best["registers_per_s"]),
        "points_per_s_one_in_flight": round(one["points_per_s"]),
        "points_per_s_four_in_flight": round(four["points_per_s"]),
        "reader_cpu_cores_four_in_flight": round(four["reader_cpu"], 2),
        "reader_cpu_us_per_point": round(1e6 * four["reader_cpu"] / four["points_per_s"], 2),
        "simulator_cpu_cores_four_in_flight": round(four["sim_cpu"], 2),
        "bad_readings_tcp": one["bad"] + four["bad"],
        "poll_lateness_p50_ms": round(jit["lateness_p50_ms"], 2),
        "poll_lateness_p99_ms": round(jit["lateness_p99_ms"], 2),
        "poll_lateness_max_ms": round(jit["lateness_max_ms"], 2),
        "poll_overruns_100ms": jit["overruns"],
        "rtu_points_per_s": round(line["points_per_s"]),
        "rtu_theoretical_points_per_s": round(line["theoretical_points_per_s"]),
        "rtu_frame_efficiency": round(line["frame_efficiency"], 3),
        "bad_readings_rtu": line["bad"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    # Overruns are expected at 10 ms intervals (the line is kept busy on purpose): do not print each.
    logging.getLogger("edge_gateway").setLevel(logging.ERROR)
    # pymodbus reports the answer to a request cancelled at the end of a measurement: not a finding.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    result = asyncio.run(run(args.seconds))
    write_results("modbus", result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
