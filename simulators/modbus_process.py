"""The Modbus simulator as a separate process, driven over its control channel (tests and benchmarks).

``ModbusSimProcess(transport=..., units=(1, 2))`` starts ``python -m simulators.modbus_plc --control`` on a
free loopback port (or on its own paced pseudo-terminal line for ``rtu``), waits for its ``READY`` line and
then sends JSON commands on its stdin, one answer line each: ``set_value``, ``requests`` (every request the
simulator received, as (unit, function code, address, count)), ``busy``, ``garble``, ``delay``,
``silence``, ``step``. ``kill()`` and ``start()`` again restart it on the same port.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from types import TracebackType
from typing import Any, Self

from simulators.ports import free_port
from simulators.process import stop_process


class ModbusSimProcess:
    def __init__(
        self,
        *,
        transport: str = "tcp",
        units: tuple[int, ...] = (1,),
        tick_ms: int = 3_600_000,
        baudrate: int = 115200,
        registers: int = 100,
        port: int | None = None,
    ) -> None:
        self.transport = transport
        self.units = units
        self.tick_ms = tick_ms
        self.baudrate = baudrate
        self.registers = registers
        self.port = port or free_port()
        self.serial_port = ""  # rtu: the pseudo-terminal the client opens
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        args = [
            sys.executable,
            "-m",
            "simulators.modbus_plc",
            "--control",
            "--port",
            str(self.port),
            "--tick-ms",
            str(self.tick_ms),
            "--transport",
            self.transport,
            "--units",
            ",".join(str(u) for u in self.units),
            "--baudrate",
            str(self.baudrate),
            "--registers",
            str(self.registers),
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.stop()
            msg = f"modbus simulator did not start: {line!r}"
            raise RuntimeError(msg)
        if self.transport == "rtu":
            self.serial_port = line.split("://", 1)[1].strip()

    def command(self, op: str, **fields: Any) -> dict[str, Any]:  # noqa: ANN401 - JSON fields
        assert self.proc is not None
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op} | fields) + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        if not answer.get("ok"):
            msg = f"simulator refused {op}: {answer.get('error')}"
            raise RuntimeError(msg)
        return answer

    def requests(self, unit: int | None = None) -> list[tuple[int, int, int, int]]:
        got = [(u, fc, a, c) for u, fc, a, c in self.command("requests")["requests"]]
        return [r for r in got if unit is None or r[0] == unit]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, sig)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
