"""What both PLC simulators share: a drift-free tick task, start/stop as an async context manager, and
running in the foreground until SIGINT/SIGTERM with a ``READY <url>`` line for whoever started us."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import signal

from simulators.service import AsyncService


class TickingSimulator(AsyncService):
    tick_s: float
    _ticker: asyncio.Task[None] | None = None

    @property
    @abc.abstractmethod
    def url(self) -> str: ...

    @abc.abstractmethod
    async def _serve(self) -> None:
        """Start the protocol server."""

    @abc.abstractmethod
    async def _shutdown(self) -> None:
        """Stop the protocol server."""

    @abc.abstractmethod
    async def tick(self) -> None:
        """Advance the simulated process one tick."""

    async def _run_ticks(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            deadline += self.tick_s  # fixed schedule: a slow tick does not shift the next ones
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            await self.tick()

    async def start(self) -> None:
        await self._serve()
        self._ticker = asyncio.get_running_loop().create_task(self._run_ticks(), name=f"{type(self).__name__}:tick")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        await self._shutdown()

    async def run_until_signal(self, *extra_lines: str) -> None:
        await self.start()
        print(f"READY {self.url}", flush=True)
        for line in extra_lines:
            print(line, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await self.stop()
