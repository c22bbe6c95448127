"""A simulated RS-485 line between two pseudo-terminals, paced at a baud rate (what ``socat`` would do,
plus the timing a pty does not have).

``SerialLine(baudrate, bits_per_char)`` opens two pty pairs: the client (the gateway) opens
``client_path``, the Modbus server opens ``server_path``; bytes written on either side come out on the
other. The line is half duplex and shared: a chunk of ``n`` bytes occupies it for ``n * bits_per_char /
baudrate`` seconds (11 bits per character for 8E1 or 8N2, 10 for 8N1), after any chunk still on the
line, and is delivered when its last bit would have arrived. So throughput measured over this line is
bounded by the real line's, and the benchmark can compare against the theoretical frame limit.

The simulator keeps both slave ends open itself, so the line survives a client closing and reopening
its port (a pty master reads EIO once nobody holds the slave).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty


class SerialLine:
    def __init__(self, baudrate: int = 115200, bits_per_char: int = 11) -> None:
        self.baudrate = baudrate
        self.char_s = bits_per_char / baudrate
        self._fds: list[int] = []
        self._masters: tuple[int, int] = (-1, -1)
        self.client_path = self.server_path = ""
        self._line_free_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        client_master, client_slave = os.openpty()
        server_master, server_slave = os.openpty()
        for fd in (client_slave, server_slave):
            tty.setraw(fd)
        for fd in (client_master, server_master):
            os.set_blocking(fd, False)
        self._fds = [client_master, client_slave, server_master, server_slave]
        self._masters = (client_master, server_master)
        self.client_path, self.server_path = os.ttyname(client_slave), os.ttyname(server_slave)
        self._loop.add_reader(client_master, self._forward, client_master, server_master)
        self._loop.add_reader(server_master, self._forward, server_master, client_master)

    def _forward(self, src: int, dst: int) -> None:
        try:
            data = os.read(src, 4096)
        except (BlockingIOError, OSError):
            return
        if not data or self._loop is None:
            return
        now = self._loop.time()
        self._line_free_at = max(now, self._line_free_at) + len(data) * self.char_s
        self._loop.call_at(self._line_free_at, self._deliver, dst, data)

    def _deliver(self, dst: int, data: bytes) -> None:
        with contextlib.suppress(OSError):  # the far side is gone: the line drops the bytes
            os.write(dst, data)

    def stop(self) -> None:
        if self._loop is not None:
            for fd in self._masters:
                self._loop.remove_reader(fd)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
