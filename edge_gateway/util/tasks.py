"""Stopping tasks reliably on Python 3.11.

On 3.11, ``asyncio.wait_for`` returns the inner result, and drops the cancellation, when ``cancel()``
arrives in the same loop iteration as that result (CPython gh-86296, fixed in 3.12). pymodbus and
asyncua await every request through ``wait_for``, so a reader polling fast can lose a single
``cancel()`` and keep looping. The task still reports the request through ``Task.cancelling()``.

- ``raise_if_cancelling()`` goes at the top of every long-running loop: a request lost that way stops
  the loop at its next turn.
- ``cancel_and_wait()`` repeats the cancel until every task has finished, so a shutdown cannot hang on
  a task that swallowed one.
- ``restarting()`` is how the supervisor runs every long-lived task: a crash is logged and the task
  starts again with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from edge_gateway.util.backoff import Backoff

_log = logging.getLogger(__name__)

_RECANCEL_S = 0.5
_RAN_A_WHILE_S = 60.0


def raise_if_cancelling() -> None:
    """Raise ``CancelledError`` when the current task has a cancellation pending that something swallowed."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and return once all of them have finished, cancelling again every 0.5 s."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _done, pending = await asyncio.wait(pending, timeout=_RECANCEL_S)


async def restarting(name: str, factory: Callable[[], Awaitable[None]]) -> None:
    """Run ``factory()`` for ever: a task that crashes on a bug (or ends) is logged with its traceback and
    started again with backoff; it never takes the process or the other tasks down."""
    backoff = Backoff(1.0, 30.0)
    while True:
        raise_if_cancelling()
        started = time.monotonic()
        try:
            await factory()
        except Exception:  # noqa: BLE001 - a bug in one task must not stop the gateway
            _log.exception("task %s crashed; restarting it", name)
        else:
            _log.error("task %s ended unexpectedly; restarting it", name)
        if time.monotonic() - started > _RAN_A_WHILE_S:  # ran a good while: start over fresh
            backoff.reset()
        await asyncio.sleep(backoff.next_delay())
