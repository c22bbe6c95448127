"""Modbus PLC simulator (pymodbus server): TCP, RTU over TCP, or RTU on a paced pseudo-terminal line.

Register map of every unit (PDU addresses, 0-based; 32-bit values span two registers):

    holding 0-1   counter        uint32, high word first; +1 every tick, starting at 1 (proves no loss)
    holding 2     temperature    int16, tenths of °C (215 = 21.5 °C; goes below zero)
    holding 3-4   pressure       float32, high word first, bar
    holding 5     speed          uint16, rpm
    holding 6-7   position       int32, high word first, signed (mm)
    holding 8     status word    uint16 bit field (bit 0 running, bit 1 alarm)
    input   0-1   energy         uint32, high word first, Wh
    input   2-3   flow           float32, LOW word first (a common vendor quirk), m³/h
    input   4     ambient        int16, tenths of °C
    coil    0     running        bool
    discrete 0    alarm          bool

Holding and input registers exist at 0..99 (``--registers N`` for more: registers 16 and up then hold a
pattern that changes every tick, for load tests); coils and discrete inputs at 0..4095. Anything beyond
answers exception 2 (illegal data address). Registers 9..15 and 16..99 (with the default size) and bits
1..4095 are never touched by a tick: tests write their values there. A tick updates every value at once,
and reads copy from that state in one step, so a client never sees half of a 32-bit value from one tick
and half from the next. Writes from clients are accepted and ignored.

Every unit in ``units`` answers; any other unit id never answers (as on a serial line). Injected faults,
per unit: ``fail_next_reads(n, code)`` (exception ``code``, default 6 busy, ``n`` times),
``garble_next(n, mode)`` (answer with a bad CRC or a short frame), ``delay_ms`` (answer late),
``silence(table, start, end)`` (reads touching that range are never answered). Every request is logged
(``requests``: unit, function code, address, count) so tests count reads at the simulator.

Run alone: ``python -m simulators.modbus_plc --port 5020 [--transport tcp|rtu_over_tcp|rtu] [--units 1,2]
[--baudrate 115200] [--control]``; prints ``READY modbus-tcp://HOST:PORT`` (or ``modbus-rtu://HOST:PORT``,
or ``modbus-rtu-serial:///dev/pts/N``, the path the client opens) once it serves. With ``--control`` it
also takes JSON commands on stdin, one per line, and answers each with one JSON line on stdout
(``simulators/modbus_process.py`` drives it from tests).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import math
import random
import struct
import sys
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.modbus_line import SerialLine
from simulators.modbus_values import value_words
from simulators.ticking import TickingSimulator

REGISTERS = 100
BITS = 4096
UNIT = 1
_TABLE_OF_FC = {1: "coil", 2: "discrete_input", 3: "holding", 4: "input"}
_FOREVER_S = 3600.0


def u32_words(value: int, *, signed: bool = False) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">i" if signed else ">I", value))
    return [hi, lo]


def f32_words(value: float, *, low_first: bool = False) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [lo, hi] if low_first else [hi, lo]


def i16(value: int) -> int:
    return value & 0xFFFF


@dataclass
class Unit:
    """One device's tables and its injected faults."""

    unit_id: int
    registers: int
    holding: list[int] = field(init=False)
    input: list[int] = field(init=False)
    coil: list[bool] = field(init=False)
    discrete_input: list[bool] = field(init=False)
    failures: list[ExcCodes] = field(default_factory=list)
    garbles: list[str] = field(default_factory=list)
    delay_s: float = 0.0
    silent: list[tuple[str, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.holding = [0] * self.registers
        self.input = [0] * self.registers
        self.coil = [False] * BITS
        self.discrete_input = [False] * BITS

    def words(self, table: str) -> list[int]:
        return {"holding": self.holding, "input": self.input}[table]

    def bits(self, table: str) -> list[bool]:
        return {"coil": self.coil, "discrete_input": self.discrete_input}[table]


class ModbusPlc(TickingSimulator):
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5020,
        *,
        tick_ms: int = 100,
        unit: int = UNIT,
        registers: int = REGISTERS,
        units: tuple[int, ...] | None = None,
        transport: str = "tcp",
        baudrate: int = 115200,
    ) -> None:
        self.host, self.port, self.tick_s, self.unit = host, port, tick_ms / 1000, unit
        self.transport = transport
        self.registers = max(registers, REGISTERS)
        self.units = {u: Unit(u, self.registers) for u in (units or (unit,))}
        primary = self.units.get(unit) or next(iter(self.units.values()))
        self.holding, self.input, self.coils = primary.holding, primary.input, primary.coil
        self.counter = 0
        # (unit, function code, address, count) of every request received, newest last.
        self.requests: collections.deque[tuple[int, int, int, int]] = collections.deque(maxlen=200_000)
        self.delay_s = 0.0
        self._tick = 0
        self._rng = random.Random(42)
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._line = SerialLine(baudrate) if transport == "rtu" else None
        self.step()

    # Fault injection ------------------------------------------------------------------------------

    def fail_next_reads(self, count: int, code: ExcCodes = ExcCodes.DEVICE_BUSY, unit: int | None = None) -> None:
        """Answer the next ``count`` reads of ``unit`` (default: the primary unit) with exception ``code``."""
        self.units[self.unit if unit is None else unit].failures += [code] * count

    def garble_next(self, count: int, mode: str = "crc", unit: int | None = None) -> None:
        """Corrupt the next ``count`` answers of ``unit``: ``crc`` flips the last byte, ``short`` cuts it."""
        self.units[self.unit if unit is None else unit].garbles += [mode] * count

    def silence(self, table: str, start: int, end: int, unit: int | None = None) -> None:
        """Never answer reads of ``unit`` touching ``table`` addresses ``start..end``."""
        self.units[self.unit if unit is None else unit].silent.append((table, start, end))

    # The process ----------------------------------------------------------------------------------

    def step(self) -> None:
        """Advance the process one tick and write every unit's process registers in one go."""
        self._tick += 1
        self.counter += 1
        t = self._tick * self.tick_s
        rng = self._rng
        temperature = 20 + 25 * math.sin(t / 30) + rng.uniform(-0.2, 0.2)
        running = (self._tick // 200) % 4 != 3
        pressure = 6.0 + 0.5 * math.sin(t / 7) + rng.uniform(-0.01, 0.01)
        speed = 1450 + rng.randint(-50, 50) if running else 0
        for u in self.units.values():
            h = u.holding
            h[0:2] = u32_words(self.counter)
            h[2] = i16(round(temperature * 10))
            h[3:5] = f32_words(pressure)
            h[5] = speed
            h[6:8] = u32_words(round(5000 * math.sin(t / 11)), signed=True)
            h[8] = (1 if running else 0) | (2 if temperature > 40 else 0)
            i = u.input
            i[0:2] = u32_words(self._tick * 3)
            i[2:4] = f32_words(12.5 + math.sin(t / 5), low_first=True)
            i[4] = i16(round((15 + 5 * math.sin(t / 60)) * 10))
            u.coil[0] = running
            u.discrete_input[0] = temperature > 40
            if self.registers > REGISTERS:
                h[16:] = [(self._tick + n) & 0xFFFF for n in range(self.registers - 16)]

    async def tick(self) -> None:
        self.step()

    # The server -----------------------------------------------------------------------------------

    async def _on_access(  # noqa: PLR0917 - pymodbus calls the action positionally
        self,
        unit: Unit,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        _set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        table = _TABLE_OF_FC.get(function_code)
        if table is None:
            return None  # a write: accepted, ignored
        delay = unit.delay_s or self.delay_s
        bits = function_code in (1, 2)
        # For bit reads pymodbus passes the bit address and the number of 16-bit registers it covers.
        first, last = (address, address + count * 16 - 1) if bits else (address, address + count - 1)
        if any(t == table and first <= end and start <= last for t, start, end in unit.silent):
            await asyncio.sleep(_FOREVER_S)
        if delay:
            await asyncio.sleep(delay)
        if unit.failures:
            return unit.failures.pop(0)
        if bits:
            source = unit.coil if bits and function_code == 1 else unit.discrete_input
            base = address // 16
            for n in range(count):
                word_bits = source[(base + n) * 16 : (base + n + 1) * 16]
                registers[base + n - start_address] = sum(1 << k for k, b in enumerate(word_bits) if b)
        else:
            words = unit.holding if function_code == 3 else unit.input
            offset = address - start_address
            registers[offset : offset + count] = words[address : address + count]
        return None

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.requests.append((pdu.dev_id, pdu.function_code, getattr(pdu, "address", 0), getattr(pdu, "count", 0)))
        return pdu

    def _trace_packet(self, sending: bool, packet: bytes) -> bytes:
        if not sending or not packet:
            return packet
        unit_id = packet[6] if self.transport == "tcp" else packet[0]
        unit = self.units.get(unit_id)
        if unit is None:
            return b""  # pymodbus answers an unknown unit with exception 4: this one never answers
        if not unit.garbles:
            return packet
        if unit.garbles.pop(0) == "short":
            return packet[: max(1, len(packet) // 2)]
        return packet[:-1] + bytes([packet[-1] ^ 0xFF])

    def _devices(self) -> list[SimDevice]:
        def device(unit: Unit) -> SimDevice:
            # One SimData holding every value: pymodbus checks a block in count x values steps.
            bits = [SimData(0, values=[False] * BITS, datatype=DataType.BITS)]
            regs = [SimData(0, values=[0] * self.registers, datatype=DataType.REGISTERS)]
            return SimDevice(
                unit.unit_id,
                simdata=(list(bits), list(bits), list(regs), list(regs)),
                action=partial(self._on_access, unit),
            )

        return [device(u) for u in self.units.values()]

    @property
    def url(self) -> str:
        if self._line is not None:
            return f"modbus-rtu-serial://{self._line.client_path}"
        scheme = "modbus-tcp" if self.transport == "tcp" else "modbus-rtu"
        return f"{scheme}://{self.host}:{self.port}"

    async def _serve(self) -> None:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        traces: dict[str, Any] = {"trace_pdu": self._trace_pdu, "trace_packet": self._trace_packet}
        if self._line is not None:
            self._line.start()
            self._server = ModbusSerialServer(
                self._devices(),
                framer=FramerType.RTU,
                port=self._line.server_path,
                baudrate=self._line.baudrate,
                ignore_missing_devices=True,
                **traces,
            )
        else:
            framer = FramerType.SOCKET if self.transport == "tcp" else FramerType.RTU
            self._server = ModbusTcpServer(
                self._devices(),
                framer=framer,
                address=(self.host, self.port),
                ignore_missing_devices=True,
                **traces,
            )
        await self._server.serve_forever(background=True)

    async def _shutdown(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None
        if self._line is not None:
            self._line.stop()

    # The control channel (stdin/stdout JSON lines) ------------------------------------------------

    def command(self, cmd: dict[str, Any]) -> dict[str, Any]:  # noqa: C901, PLR0911 - one branch per op
        op = cmd["op"]
        unit = self.units[int(cmd.get("unit", self.unit))]
        if op == "set_value":
            address, data_type, table_name = int(cmd["address"]), cmd["data_type"], cmd.get("table", "holding")
            if table_name in ("coil", "discrete_input"):
                unit.bits(table_name)[address] = bool(cmd["value"])
                return {"ok": True}
            table = unit.words(table_name)
            if data_type == "bool":
                mask = 1 << int(cmd["bit"])
                table[address] = (table[address] | mask) if cmd["value"] else (table[address] & ~mask)
            else:
                words = value_words(
                    data_type,
                    cmd["value"],
                    byte_order=cmd.get("byte_order", "big"),
                    word_order=cmd.get("word_order", "big"),
                    length=cmd.get("length"),
                )
                table[address : address + len(words)] = words
            return {"ok": True}
        if op == "requests":
            return {"ok": True, "requests": list(self.requests)}
        if op == "reset_requests":
            self.requests.clear()
            return {"ok": True}
        if op == "busy":
            self.fail_next_reads(int(cmd["count"]), ExcCodes(int(cmd.get("code", 6))), unit.unit_id)
            return {"ok": True}
        if op == "garble":
            self.garble_next(int(cmd["count"]), cmd.get("mode", "crc"), unit.unit_id)
            return {"ok": True}
        if op == "delay":
            unit.delay_s = float(cmd["ms"]) / 1000
            return {"ok": True}
        if op == "silence":
            self.silence(cmd["table"], int(cmd["start"]), int(cmd["end"]), unit.unit_id)
            return {"ok": True}
        if op == "step":
            self.step()
            return {"ok": True, "counter": self.counter}
        return {"ok": False, "error": f"unknown op {op!r}"}

    async def serve_control(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            try:
                answer = self.command(json.loads(line))
            except (KeyError, ValueError, TypeError, IndexError) as exc:
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(answer), flush=True)


async def _run(plc: ModbusPlc, control: bool) -> None:
    if not control:
        await plc.run_until_signal()
        return
    controller = asyncio.get_running_loop().create_task(plc.serve_control())
    try:
        await plc.run_until_signal()
    finally:
        controller.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Modbus PLC simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5020)
    parser.add_argument("--tick-ms", type=int, default=100)
    parser.add_argument("--unit", type=int, default=UNIT)
    parser.add_argument("--units", default="", help="comma-separated unit ids that answer (default: --unit)")
    parser.add_argument("--transport", choices=("tcp", "rtu_over_tcp", "rtu"), default="tcp")
    parser.add_argument("--baudrate", type=int, default=115200, help="pace of the simulated serial line (rtu)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="answer every request this late")
    parser.add_argument("--registers", type=int, default=REGISTERS, help="holding/input registers per table")
    parser.add_argument("--control", action="store_true", help="take JSON commands on stdin")
    args = parser.parse_args(argv)
    units = tuple(int(u) for u in args.units.split(",") if u) or (args.unit,)
    plc = ModbusPlc(
        args.host,
        args.port,
        tick_ms=args.tick_ms,
        unit=units[0] if args.units else args.unit,
        registers=args.registers,
        units=units,
        transport=args.transport,
        baudrate=args.baudrate,
    )
    plc.delay_s = args.delay_ms / 1000
    asyncio.run(_run(plc, args.control))
    return 0


if __name__ == "__main__":
    sys.exit(main())
