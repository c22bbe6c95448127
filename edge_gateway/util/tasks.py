"""Stopping tasks reliably on Python 3.11.

On 3.11, ``asyncio.wait_for`` returns the inner result, and drops the cancellation, when ``cancel()``
arrives in the same loop iteration as that result (CPython gh-86296, fixed in 3.12). pymodbus and
asyncua await every request through ``wait_for``, so a reader polling fast can lose a single
``cancel()`` and keep looping. The task still reports the request through ``Task.cancelling()``.

- ``raise_if_cancelling()`` goes at the top of every long-running loop: a request lost that way stops
  the loop at its next turn.
- ``cancel_and_wait()`` repeats the cancel until every task has finished, so a shutdown cannot hang on
  a task that swallowed one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

_RECANCEL_S = 0.5


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
