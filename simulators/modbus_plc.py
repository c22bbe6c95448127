"""Modbus TCP PLC simulator (pymodbus server) with realistic, changing registers.

Register map, unit id 1 (PDU addresses, 0-based; 32-bit values span two registers):

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

Holding and input registers exist at 0..99 (``--registers N`` for more: registers 16 and up then hold a
pattern that changes every tick, for load tests); anything beyond answers exception 2 (illegal data
address). A tick updates every value at once, and reads copy from that state in one step (no await in
between), so a client never sees half of a 32-bit value from one tick and half from the next. Writes are
accepted and ignored: the next tick's state is what reads return.

Fault injection for tests (in-process): ``plc.fail_next_reads(n, code)`` makes the next ``n`` register
reads answer Modbus exception ``code`` (default 6, server device busy), like a PLC that is busy for a
while; ``plc.counter`` / ``plc.holding`` / ``plc.input`` are the state reads return; ``plc.step()``
advances one tick by hand (start with a long ``tick_ms`` to drive the process from a test alone).

Run alone: ``python -m simulators.modbus_plc --port 5020 [--host 127.0.0.1] [--tick-ms 100] [--unit 1]``;
prints ``READY modbus-tcp://HOST:PORT`` once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import random
import struct
import sys

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.ticking import TickingSimulator

REGISTERS = 100
UNIT = 1


def u32_words(value: int, *, signed: bool = False) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">i" if signed else ">I", value))
    return [hi, lo]


def f32_words(value: float, *, low_first: bool = False) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [lo, hi] if low_first else [hi, lo]


def i16(value: int) -> int:
    return value & 0xFFFF


class ModbusPlc(TickingSimulator):
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5020,
        *,
        tick_ms: int = 100,
        unit: int = UNIT,
        registers: int = REGISTERS,
    ) -> None:
        self.host, self.port, self.tick_s, self.unit = host, port, tick_ms / 1000, unit
        self.registers = max(registers, REGISTERS)
        self.holding = [0] * self.registers
        self.input = [0] * self.registers
        self.coils = [False] * 16
        self.counter = 0
        self._tick = 0
        self._rng = random.Random(42)
        self._server: ModbusTcpServer | None = None
        self._failures: list[ExcCodes] = []
        self.step()

    def fail_next_reads(self, count: int, code: ExcCodes = ExcCodes.DEVICE_BUSY) -> None:
        """Answer the next ``count`` holding/input register reads with exception ``code``."""
        self._failures += [code] * count

    def step(self) -> None:
        """Advance the process one tick and write every register in one go."""
        self._tick += 1
        self.counter += 1
        t = self._tick * self.tick_s
        rng = self._rng
        temperature = 20 + 25 * math.sin(t / 30) + rng.uniform(-0.2, 0.2)
        running = (self._tick // 200) % 4 != 3
        h = self.holding
        h[0:2] = u32_words(self.counter)
        h[2] = i16(round(temperature * 10))
        h[3:5] = f32_words(6.0 + 0.5 * math.sin(t / 7) + rng.uniform(-0.01, 0.01))
        h[5] = 1450 + rng.randint(-50, 50) if running else 0
        h[6:8] = u32_words(round(5000 * math.sin(t / 11)), signed=True)
        h[8] = (1 if running else 0) | (2 if temperature > 40 else 0)
        i = self.input
        i[0:2] = u32_words(self._tick * 3)
        i[2:4] = f32_words(12.5 + math.sin(t / 5), low_first=True)
        i[4] = i16(round((15 + 5 * math.sin(t / 60)) * 10))
        self.coils[0] = running
        if self.registers > REGISTERS:
            self.holding[16:] = [(self._tick + n) & 0xFFFF for n in range(self.registers - 16)]

    async def _on_access(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        _set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        source = {3: self.holding, 4: self.input}.get(function_code)
        if source is not None and self._failures:
            return self._failures.pop(0)
        if source is not None:
            offset = address - start_address
            registers[offset : offset + count] = source[address : address + count]
        elif function_code in (1, 2):  # bits: one register holds 16 coils, bit 0 first
            registers[0] = sum(1 << n for n, bit in enumerate(self.coils) if bit)
        return None

    def _device(self) -> SimDevice:
        def bits() -> list[SimData]:
            return [SimData(0, count=16, values=False, datatype=DataType.BITS)]

        def regs() -> list[SimData]:
            return [SimData(0, count=self.registers, values=0, datatype=DataType.REGISTERS)]

        return SimDevice(self.unit, simdata=(bits(), bits(), regs(), regs()), action=self._on_access)

    @property
    def url(self) -> str:
        return f"modbus-tcp://{self.host}:{self.port}"

    async def tick(self) -> None:
        self.step()

    async def _serve(self) -> None:
        logging.getLogger("pymodbus").setLevel(logging.ERROR)
        self._server = ModbusTcpServer(self._device(), address=(self.host, self.port))
        await self._server.serve_forever(background=True)

    async def _shutdown(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Modbus TCP PLC simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5020)
    parser.add_argument("--tick-ms", type=int, default=100)
    parser.add_argument("--unit", type=int, default=UNIT)
    parser.add_argument("--registers", type=int, default=REGISTERS, help="holding/input registers per table")
    args = parser.parse_args(argv)
    plc = ModbusPlc(args.host, args.port, tick_ms=args.tick_ms, unit=args.unit, registers=args.registers)
    asyncio.run(plc.run_until_signal())
    return 0


if __name__ == "__main__":
    sys.exit(main())
