"""Stopping tasks whose cancel was swallowed by Python 3.11's ``asyncio.wait_for`` (gh-86296)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from edge_gateway.util.tasks import cancel_and_wait, raise_if_cancelling


async def _poll_forever(requests: list[asyncio.Future[int]], answers: list[int], *, guard: bool) -> None:
    """A reader loop in the shape of ours: one ``wait_for`` per request, as pymodbus and asyncua do."""
    loop = asyncio.get_running_loop()
    while True:
        if guard:
            raise_if_cancelling()
        request: asyncio.Future[int] = loop.create_future()
        requests.append(request)
        answers.append(await asyncio.wait_for(request, 10))


async def _cancel_as_the_answer_arrives(requests: list[asyncio.Future[int]], task: asyncio.Task[None]) -> None:
    await asyncio.sleep(0)  # the task now waits in wait_for on requests[0]
    requests[0].set_result(7)  # the answer and the cancel land in the same loop iteration
    task.cancel()
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_loop_that_checks_stops_even_when_wait_for_swallowed_the_cancel() -> None:
    requests: list[asyncio.Future[int]] = []
    answers: list[int] = []
    task = asyncio.create_task(_poll_forever(requests, answers, guard=True))
    await _cancel_as_the_answer_arrives(requests, task)
    assert task.done()
    assert task.cancelled()
    assert answers == ([7] if sys.version_info < (3, 12) else [])  # 3.11 handed the answer back instead


async def test_cancel_and_wait_stops_a_task_that_swallowed_one_cancel() -> None:
    requests: list[asyncio.Future[int]] = []
    answers: list[int] = []
    task = asyncio.create_task(_poll_forever(requests, answers, guard=False))
    await _cancel_as_the_answer_arrives(requests, task)
    if sys.version_info < (3, 12):
        assert not task.done()  # the bug this module exists for: one cancel() was not enough
        assert len(requests) == 2  # and the loop went on to its next request
    async with asyncio.timeout(3):
        await cancel_and_wait([task])
    assert task.cancelled()


async def test_cancel_and_wait_returns_at_once_for_finished_tasks_and_nothing() -> None:
    async def quick() -> None:
        return None

    done = asyncio.create_task(quick())
    await done
    async with asyncio.timeout(0.2):
        await cancel_and_wait([done])
        await cancel_and_wait([])
    assert not done.cancelled()


async def test_a_cancel_a_library_caught_is_raised_again_at_the_check() -> None:
    async def swallows_then_checks(reached: list[str]) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            reached.append("swallowed")  # as a careless library might
        raise_if_cancelling()
        reached.append("went on")

    reached: list[str] = []
    task = asyncio.create_task(swallows_then_checks(reached))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reached == ["swallowed"]
