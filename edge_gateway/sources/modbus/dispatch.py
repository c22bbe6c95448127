"""Dispatch of due polls onto the free connections of one Modbus source, until a connection is lost.

Contract:
- ``serve`` asks the scheduler (``schedule.Scheduler``) for the next due poll whenever a connection is
  free, and runs it on that connection as a task named ``source:modbus:<source>:<device>`` in one
  TaskGroup: each connection carries one poll at a time, so at most ``len(conns)`` requests are in flight.
- A connection is free again as soon as its poll's reads are done, while the sink still works on the
  readings; the scheduler is told the poll is ``done`` once the sink returned (or raised).
- When a poll reports ``ConnectionLostError`` no further poll is started; once the polls under way have
  finished, ``serve`` raises ``ConnectionLostError`` with the first loss's message. Any other exception
  (the sink's) ends the TaskGroup and propagates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from edge_gateway.model import Reading
from edge_gateway.sources.base import Sink
from edge_gateway.sources.modbus.client import Connection, ConnectionLostError
from edge_gateway.sources.modbus.poll import Poll
from edge_gateway.sources.modbus.schedule import Scheduler
from edge_gateway.util.tasks import raise_if_cancelling

PollOnce = Callable[[Connection, Poll], Awaitable[list[Reading]]]


async def serve(
    source: str, schedule: Scheduler[Poll], conns: list[Connection], poll_once: PollOnce, sink: Sink
) -> None:
    """Dispatch due polls onto free connections until one is lost (then raise ``ConnectionLostError``)."""
    loop = asyncio.get_running_loop()
    schedule.start(loop.time())
    free: asyncio.Queue[Connection] = asyncio.Queue()
    for conn in conns:
        free.put_nowait(conn)
    wake = asyncio.Event()
    lost: list[str] = []

    async def run_poll(conn: Connection, poll: Poll) -> None:
        readings: list[Reading] | None = None
        try:
            readings = await poll_once(conn, poll)
        except ConnectionLostError as exc:
            lost.append(str(exc))
        finally:
            free.put_nowait(conn)  # the line is free while the sink works
        try:
            if readings is not None:
                await sink(readings)
        finally:
            schedule.done(poll, loop.time())
            wake.set()

    async with asyncio.TaskGroup() as tg:
        while not lost:
            raise_if_cancelling()
            conn = await free.get()
            poll = await _next_due(schedule, wake, lost)
            if poll is None:
                break
            tg.create_task(run_poll(conn, poll), name=f"source:modbus:{source}:{poll.device.config.name}")
    raise ConnectionLostError(lost[0])


async def _next_due(schedule: Scheduler[Poll], wake: asyncio.Event, lost: list[str]) -> Poll | None:
    """The next poll to send, once due (None once the connection is lost)."""
    loop = asyncio.get_running_loop()
    while not lost:
        raise_if_cancelling()
        due = schedule.pop_due(loop.time())
        if isinstance(due, Poll):
            return due
        wake.clear()  # a poll finishing (or the connection lost) sets it
        try:
            async with asyncio.timeout(None if due is None else due - loop.time()):
                await wake.wait()
        except TimeoutError:
            pass
    return None
