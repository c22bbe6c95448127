"""The sink sources write to: the buffer's append, shielded from the source's cancellation.

A reading handed over is stored even when its source is cancelled meanwhile (a configuration change stops
it): the append runs in a task of its own and ``settle`` waits for such appends. Storage trouble is counted
by the buffer (as dropped) and logged once per change of state instead of killing the source.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from edge_gateway.buffer.base import Buffer
from edge_gateway.errors import StorageError
from edge_gateway.model import Reading

_log = logging.getLogger(__name__)


class BufferSink:
    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer
        self._storing = True
        self._appends: set[asyncio.Task[None]] = set()

    async def __call__(self, readings: Sequence[Reading]) -> None:
        task = asyncio.get_running_loop().create_task(self._store(readings), name="buffer:append")
        self._appends.add(task)
        task.add_done_callback(self._appends.discard)
        await asyncio.shield(task)

    async def settle(self) -> None:
        """Wait for appends whose sources were cancelled mid-way."""
        await asyncio.gather(*self._appends, return_exceptions=True)

    async def _store(self, readings: Sequence[Reading]) -> None:
        try:
            await self.buffer.append(readings)
        except StorageError as exc:
            if self._storing:
                self._storing = False
                _log.error("buffer cannot store readings (they are counted as dropped): %s", exc)
            return
        if not self._storing:
            self._storing = True
            _log.info("buffer stores readings again")
