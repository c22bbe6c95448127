"""A Modbus TCP server that serves the realistic benchmark dataset (``bench.dataset``) as holding registers.

Unit ``--unit`` (default 1) holds ``--tags N`` tags of the dataset (``--only float32`` for float32 tags
alone) laid out by ``bench.dataset.holding_registers``: contiguous from address 0, float32/int32/uint32 in
two registers high word first, big-endian bytes. Every ``--tick-ms`` (default 100) the next poll's values
replace the whole image at once, so a read never mixes two ticks inside one answer; with ``--frames N``
the first N polls are computed at start and served in a cycle (for load tests: a tick then costs no CPU).
Reads past the image answer exception 2 (illegal data address); writes are accepted and ignored; any other
unit never answers.

Thousands of noisy float32 registers is what ``simulators.modbus_plc`` does not serve (its load-test
registers are a counting pattern); this module is separate so that simulator stays as the tests know it.

Run alone: ``python -m bench.modbus_dataset --port 5020 --tags 2000 --only float32``; prints
``READY modbus-tcp://HOST:PORT`` once it serves, then ``REGISTERS <n>``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from functools import partial
from typing import cast

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from bench import dataset
from simulators.ticking import TickingSimulator


class DatasetPlc(TickingSimulator):
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5020,
        *,
        tags: int = 2000,
        only: dataset.Kind | None = None,
        tick_ms: int = dataset.DEFAULT_INTERVAL_MS,
        unit: int = 1,
        seed: int = dataset.SEED,
        frames: int = 0,
    ) -> None:
        self.host, self.port, self.unit, self.seed = host, port, unit, seed
        self.tick_ms = tick_ms
        self.tick_s = tick_ms / 1000
        self.tags = dataset.plant_tags(tags, seed=seed, only=only)
        self.points = dataset.holding_registers(self.tags)
        self.size = dataset.register_count(self.points)
        self.poll = 0
        # frames > 0: that many polls computed up front and served in a cycle (a tick then costs nothing,
        # which keeps a load test's simulator off the critical path); 0: every tick computes its poll.
        self._frames = [self._image(poll) for poll in range(frames)]
        self.holding = self._frames[0] if self._frames else self._image(0)
        self._server: ModbusTcpServer | None = None

    @property
    def url(self) -> str:
        return f"modbus-tcp://{self.host}:{self.port}"

    def _image(self, poll: int) -> list[int]:
        vals = dataset.values(self.tags, poll, self.tick_ms, seed=self.seed)
        return dataset.register_image(self.points, vals, self.size)

    async def tick(self) -> None:
        self.poll += 1
        # One swap of the whole image: a read never sees values of two polls.
        self.holding = self._frames[self.poll % len(self._frames)] if self._frames else self._image(self.poll)

    async def _on_access(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        _set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if function_code != 3:  # a write (accepted, ignored) or a table this server leaves at zero
            return None
        if address + count > self.size:
            return ExcCodes.ILLEGAL_ADDRESS
        offset = address - start_address
        registers[offset : offset + count] = self.holding[address : address + count]
        return None

    async def _serve(self) -> None:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        regs = [SimData(0, values=[0] * max(self.size, 1), datatype=DataType.REGISTERS)]
        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        device = SimDevice(self.unit, simdata=(bits, bits, regs, list(regs)), action=partial(self._on_access))
        self._server = ModbusTcpServer(
            [device], framer=FramerType.SOCKET, address=(self.host, self.port), ignore_missing_devices=True
        )
        await self._server.serve_forever(background=True)

    async def _shutdown(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Modbus TCP server of the realistic benchmark dataset")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5020)
    parser.add_argument("--tags", type=int, default=2000)
    parser.add_argument("--only", choices=("float32", "int32", "bool", "string", "counter"), default=None)
    parser.add_argument("--tick-ms", type=int, default=dataset.DEFAULT_INTERVAL_MS)
    parser.add_argument("--unit", type=int, default=1)
    parser.add_argument("--seed", type=int, default=dataset.SEED)
    parser.add_argument("--frames", type=int, default=0, help="precompute this many polls and cycle through them")
    args = parser.parse_args(argv)
    only = cast("dataset.Kind | None", args.only)
    plc = DatasetPlc(
        args.host,
        args.port,
        tags=args.tags,
        only=only,
        tick_ms=args.tick_ms,
        unit=args.unit,
        seed=args.seed,
        frames=args.frames,
    )
    asyncio.run(plc.run_until_signal(f"REGISTERS {plc.size}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
