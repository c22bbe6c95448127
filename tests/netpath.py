"""A TCP relay on loopback that tests control, to put network faults between a client and its server.

``NetPath(host, port)`` listens on ``127.0.0.1:<free port>`` (see ``port``) and relays each accepted
connection to the target, which MUST be a loopback address. The relay runs its own asyncio loop in a
daemon thread, so it does not depend on (or block) the test's event loop; it is idle when nothing flows.

Controls are safe from any thread except the relay's own, and are in effect when they return:

- ``cut()``: every relayed connection is reset on both sides (SO_LINGER 0, so the peers see RST, not
  FIN); until ``restore()`` new connections are accepted and reset at once (the client's connect()
  succeeds, its first read fails with ECONNRESET).
- ``stall()``: connections stay open but no byte, FIN or reset crosses in either direction (a half-open
  path: each peer sees silence). New connections are accepted, connected upstream, and silent too.
  Bytes sent meanwhile wait in kernel and relay buffers, which fill up, then the sender blocks.
- ``restore()``: normal forwarding. Bytes held during a stall are delivered, in order, like a path that
  recovers. Connections cut earlier stay closed.

Bytes already handed to the kernel before ``stall()`` still arrive. Counters (``connections_accepted``
counts every accepted connection, reset ones included; ``bytes_up`` client->target, ``bytes_down``
target->client, counted as they are forwarded; ``open_connections``, relayed now) are read without a lock.
The controls block the calling thread (an async test's loop too) only for one hop onto the relay's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

_T = TypeVar("_T")
_CHUNK = 64 * 1024
_CONTROL_TIMEOUT_S = 10.0
_LINGER_RESET = struct.pack("ii", 1, 0)


class _Link:
    """One relayed connection: the client side, then the upstream side once it is connected."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.closed = False

    def reset(self) -> None:
        self.closed = True
        for writer in (self.client, self.upstream):
            if writer is not None:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                writer.transport.abort()

    def close(self) -> None:
        self.closed = True
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.close()


class NetPath:
    def __init__(self, host: str, port: int) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            msg = f"NetPath relays to loopback only, not to {host!r}: pass an address like 127.0.0.1"
            raise ValueError(msg)
        self.target = (host, port)
        self.connections_accepted = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._links: set[_Link] = set()
        self._cut = False
        self._stalled = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"netpath->{port}", daemon=True)
        self._thread.start()
        # Bound to the relay's loop on first use there (asyncio primitives bind lazily since 3.10).
        self._changed = asyncio.Condition()
        self._server: asyncio.Server = self._run(asyncio.start_server(self._relay, "127.0.0.1", 0))
        self._port = int(self._server.sockets[0].getsockname()[1])

    @property
    def port(self) -> int:
        return self._port

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def cut(self) -> None:
        self._run(self._set(cut=True))

    def stall(self) -> None:
        self._run(self._set(stalled=True))

    def restore(self) -> None:
        self._run(self._set(cut=False, stalled=False))

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._run(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_CONTROL_TIMEOUT_S)
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- on the relay's loop -------------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if threading.current_thread() is self._thread:
            coro.close()
            msg = "NetPath controls cannot be called from the relay's own thread"
            raise RuntimeError(msg)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_CONTROL_TIMEOUT_S)

    async def _set(self, *, cut: bool | None = None, stalled: bool | None = None) -> None:
        async with self._changed:
            if cut is not None:
                self._cut = cut
            if stalled is not None:
                self._stalled = stalled
            if self._cut:
                for link in self._links:
                    link.reset()
                self._links.clear()
            self._changed.notify_all()
        # abort() closes the sockets in a callback queued on this loop: let it run before returning.
        await asyncio.sleep(0)

    async def _shutdown(self) -> None:
        self._server.close()
        await self._set(cut=True)
        # Reset links end their tasks on their own (each then closes its sockets); cancel only stragglers.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_CONTROL_TIMEOUT_S / 2)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._server.wait_closed()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        link = _Link(client_writer)
        if self._cut:
            link.reset()
            return
        self._links.add(link)
        try:
            upstream_reader, link.upstream = await asyncio.open_connection(*self.target)
        except OSError:
            link.reset()
            self._links.discard(link)
            return
        if link.closed:  # cut while connecting upstream
            link.reset()
            return
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pipe(link, client_reader, link.upstream, up=True), name="netpath:up")
                tg.create_task(self._pipe(link, upstream_reader, client_writer, up=False), name="netpath:down")
        finally:
            self._links.discard(link)
            if not link.closed:
                link.close()

    async def _pipe(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool) -> None:
        while True:
            try:
                data = await reader.read(_CHUNK)
            except OSError:  # the peer reset: pass the reset on, unless the path is stalled
                await self._passable(link)
                link.reset()
                return
            await self._passable(link)
            # No await between the check above and the write: a stall() cannot slip in between.
            if link.closed:
                return
            if not data:
                try:
                    writer.write_eof()
                except OSError:
                    link.reset()
                return
            if up:
                self.bytes_up += len(data)
            else:
                self.bytes_down += len(data)
            writer.write(data)
            try:
                await writer.drain()
            except OSError:
                link.reset()
                return

    async def _passable(self, link: _Link) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: link.closed or not self._stalled)
