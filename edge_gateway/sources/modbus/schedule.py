"""Deadline scheduling of the polls on one Modbus connection or serial line (no I/O: the reader drives it).

Contract, with ``now`` the event loop's clock in seconds:
- ``start(now)`` puts every poll on its grid. Polls of one interval start spread over it (over at most
  1 s), so devices polled at the same interval do not all queue at the same instant.
- ``pop_due(now)`` returns the poll to send now, or the time to wait until, or ``None`` when every poll is
  in flight. Earliest deadline first; between equal deadlines the poll that *started* longest ago, so a
  saturated line serves its polls in turn rather than favouring the one that just finished.
  - A poll whose device is held (``hold_until() > now``, a device backing off) moves to its first grid slot
    at or after that time; the slots in between are reported to ``held(n)``.
  - Otherwise it starts now. If the line was busy for a whole interval or more past its deadline, the
    slots it missed go to ``on_overrun`` and it takes the latest slot before now, so it starts less than
    an interval late (kept in ``lateness_s``) and a busy line never idles while a poll is due.
- ``done(poll, now)`` sets the next deadline: previous deadline + interval (no drift). A poll that took
  longer than that skips to its next slot in the future, the skipped slots going to ``on_overrun``.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

_STAGGER_MAX_S = 1.0


class ScheduledPoll:
    """What the scheduler needs of a poll; the reader's polls extend it."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.deadline = 0.0
        self.order = 0  # when it last started, in start order (0: never)
        self.started = 0.0  # when it last started
        self.overrunning = False  # for logging an overrun once per episode

    def hold_until(self) -> float:
        """Do not start before this time (0: no hold)."""
        return 0.0

    def held(self, slots: int) -> None:
        """``slots`` slots were skipped while held."""


P = TypeVar("P", bound=ScheduledPoll)


class Scheduler(Generic[P]):
    def __init__(self, polls: Sequence[P], on_overrun: Callable[[P, int, str], None]) -> None:
        self.polls = list(polls)
        self.on_overrun = on_overrun
        # Start lateness of recent polls in seconds (benchmarks and diagnosis).
        self.lateness_s: collections.deque[float] = collections.deque(maxlen=100_000)
        self._heap: list[tuple[float, int, int, P]] = []
        self._seq = itertools.count()
        self._starts = itertools.count(1)

    def start(self, now: float) -> None:
        self._heap.clear()
        by_interval: dict[float, list[P]] = {}
        for poll in self.polls:
            by_interval.setdefault(poll.interval_s, []).append(poll)
        for interval, polls in by_interval.items():
            for k, poll in enumerate(polls):
                poll.deadline = now + min(interval, _STAGGER_MAX_S) * k / len(polls)
                self._push(poll)

    def pop_due(self, now: float) -> P | float | None:
        heap = self._heap
        while heap:
            due = heap[0][0]
            if due > now:
                return due
            poll = heapq.heappop(heap)[3]
            interval = poll.interval_s
            if (hold := poll.hold_until()) > now:
                skipped = math.ceil((hold - due) / interval)
                poll.held(skipped)
                poll.deadline = due + skipped * interval
            else:
                late = now - due
                if late >= interval:  # the line was busy: those slots are gone, this one starts now
                    skipped = int(late // interval)
                    self.on_overrun(poll, skipped, f"could only start {late * 1000:.0f} ms after its deadline")
                    due += skipped * interval
                    late -= skipped * interval
                else:
                    poll.overrunning = False
                poll.deadline = due
                poll.order = next(self._starts)
                poll.started = now
                self.lateness_s.append(late)
                return poll
            self._push(poll)
        return None

    def done(self, poll: P, now: float) -> None:
        poll.deadline += poll.interval_s
        if poll.deadline <= now:
            missed = int((now - poll.deadline) // poll.interval_s) + 1
            poll.deadline += missed * poll.interval_s
            self.on_overrun(poll, missed, f"took {(now - poll.started) * 1000:.0f} ms to read and hand over")
        self._push(poll)

    def _push(self, poll: P) -> None:
        heapq.heappush(self._heap, (poll.deadline, poll.order, next(self._seq), poll))
