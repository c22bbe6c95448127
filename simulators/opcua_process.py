"""The OPC UA simulator as a separate process, for tests and benchmarks that need a real peer they can kill,
restart on the same port, or drive through its control methods (simulators/opcua_plc.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from asyncua import ua
from asyncua.client.client import Client

from simulators.process import stop_process


class OpcUaSimProcess:
    """``python -m simulators.opcua_plc`` with options; ``start()`` returns once it printed READY."""

    def __init__(self, port: int, *args: str, tick_ms: int = 50, start_timeout_s: float = 60) -> None:
        self.port = port
        self.args = list(args)
        self.tick_ms = tick_ms
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[str] | None = None

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "simulators.opcua_plc", "--port", str(self.port), "--tick-ms", str(self.tick_ms)]
        self.proc = subprocess.Popen([*cmd, *self.args], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.stop()
            msg = f"the OPC UA simulator did not start: {line!r}"
            raise RuntimeError(msg)

    def kill(self) -> None:
        """SIGKILL: the PLC loses power."""
        if self.proc is not None:
            stop_process(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


def server_certificate(pki: Path) -> bytes:
    return (pki / "server_cert.der").read_bytes()


async def call_control(endpoint: str, method: str, *args: object) -> object:
    """Call one of the simulator's control methods (``FreezeSubscriptions``, ``SetBulkStatus``) over an
    unsecured anonymous session (so not on a simulator started with ``--user``)."""
    async with Client(endpoint, timeout=5) as client:
        sim = client.get_node("ns=2;s=Sim")
        return await sim.call_method(ua.NodeId.from_string(f"ns=2;s=Sim.{method}"), *args)
