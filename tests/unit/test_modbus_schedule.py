"""The poll scheduler on a simulated clock: staggered starts, the grid kept, overruns counted, devices held
while backing off, and a saturated line served in turn."""

from __future__ import annotations

import pytest

from edge_gateway.sources.modbus.schedule import ScheduledPoll, Scheduler


class Poll(ScheduledPoll):
    def __init__(self, name: str, interval_s: float, hold_until: float = 0.0) -> None:
        super().__init__(interval_s)
        self.name = name
        self.hold = hold_until
        self.held_slots = 0
        self.starts: list[float] = []

    def hold_until(self) -> float:
        return self.hold

    def held(self, slots: int) -> None:
        self.held_slots += slots


class Line:
    """Runs the scheduler on one line (one request in flight) with a simulated clock."""

    def __init__(self, polls: list[Poll], took_s: dict[str, float]) -> None:
        self.overruns: dict[str, int] = {}
        self.scheduler = Scheduler(polls, self._overrun)
        self.took_s = took_s

    def _overrun(self, poll: Poll, missed: int, _why: str) -> None:
        self.overruns[poll.name] = self.overruns.get(poll.name, 0) + missed

    def run(self, until_s: float) -> None:
        now = 0.0
        self.scheduler.start(now)
        while now < until_s:
            due = self.scheduler.pop_due(now)
            if isinstance(due, Poll):
                due.starts.append(now)
                now += self.took_s[due.name]
                self.scheduler.done(due, now)
            else:
                assert due is not None
                now = due


def test_polls_of_one_interval_start_spread_over_it() -> None:
    fast = [Poll(f"f{n}", 0.1) for n in range(4)]
    slow = [Poll(f"s{n}", 60.0) for n in range(2)]
    Scheduler([*fast, *slow], lambda *_: None).start(10.0)
    assert [p.deadline for p in fast] == pytest.approx([10.0, 10.025, 10.05, 10.075])
    assert [p.deadline for p in slow] == pytest.approx([10.0, 10.5])  # spread over 1 s at most


def test_a_poll_delayed_by_others_starts_late_and_keeps_its_grid() -> None:
    a, b = Poll("a", 0.1), Poll("b", 0.1)
    line = Line([a, b], {"a": 0.08, "b": 0.001})  # a holds the line past b's slot (at 0.05)
    line.run(1.0)
    assert b.starts[:3] == pytest.approx([0.08, 0.18, 0.28])  # 30 ms late each time, on its own grid
    assert len(b.starts) == 10
    assert line.overruns == {}
    assert max(line.scheduler.lateness_s) == pytest.approx(0.03)


def test_a_poll_slower_than_its_interval_skips_to_its_next_slot_and_counts_them() -> None:
    slow = Poll("slow", 0.1)
    line = Line([slow], {"slow": 0.25})
    line.run(1.0)
    assert slow.starts == pytest.approx([0.0, 0.3, 0.6, 0.9])  # on the grid, never drifting
    assert line.overruns == {"slow": 2 * 4}


def test_a_held_device_skips_to_its_first_slot_after_the_hold() -> None:
    held, ok = Poll("held", 0.1, hold_until=1.05), Poll("ok", 0.1)
    line = Line([held, ok], {"held": 0.001, "ok": 0.001})
    line.run(1.5)
    assert held.starts[0] == pytest.approx(1.1)
    assert held.held_slots == 11  # slots 0.0 .. 1.0
    assert len(ok.starts) == 15
    assert line.overruns == {}


def test_a_saturated_line_serves_its_polls_in_turn() -> None:
    polls = [Poll(f"d{n}", 0.01) for n in range(4)]  # each wants 100 polls/s, each poll takes 25 ms
    line = Line(polls, dict.fromkeys((p.name for p in polls), 0.025))
    line.run(10.0)
    runs = [len(p.starts) for p in polls]
    assert sum(runs) == pytest.approx(10.0 / 0.025, rel=0.05)  # the line never idles
    assert max(runs) - min(runs) <= 2, runs
