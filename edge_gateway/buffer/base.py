"""The buffer contract shared by every implementation (disk for production, memory for tests).

A buffer MUST:
- ``append(readings)``: return only when the readings are durable (disk: written and fsync'd; group
  commit: concurrent appends share one fsync). Each reading gets the next sequence number (1, 2, 3, …,
  never reused). On ``reject_new`` with no room it raises ``BufferFullError``; on a write error it
  raises ``BufferIOError``; either way the readings are counted in ``stats().dropped`` by reason.
- keep one cursor per destination: ``read(dest, max_records, timeout_s)`` hands out the next records
  that destination has not been given yet (waiting up to ``timeout_s`` for at least one), in sequence
  order, skipping what was already acked;
- ``ack(dest, first, last)`` releases a range; acks may arrive out of order. A record is deleted only when
  every destination acked it or a stated limit (``max_bytes``, ``max_age_s``, corruption) removed it,
  and every such removal is counted by reason;
- after a crash, reopening re-delivers every record not acked (at-least-once), nothing that ``append``
  returned for is lost, and a destination resumes after its acked prefix;
- ``rewind(dest)`` makes every unacked record of ``dest`` deliverable again (after a publish failure the
  publisher could not retry itself) and forgets its lanes;
- ``take_quarantined()``: every quarantine since the last call (at open too), each once, for the audit
  trail; a buffer that never quarantines returns [];
- lanes: a destination may read with more than one cursor (``lane``, "" is the main one), e.g. a live
  lane at the head while the main lane drains a backlog. ``seek(dest, seq, lane=)`` sets where a lane's
  next read starts (never inside the acked prefix); ``read(..., end_seq=N)`` hands out only records
  below N. Acks are per destination, shared by its lanes; lanes are not persisted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

from edge_gateway.model import Reading

DROP_REASONS = ("full", "expired", "corrupt", "io_error")


class Record(NamedTuple):
    seq: int
    reading: Reading


@dataclass(frozen=True, slots=True)
class Quarantined:
    """One quarantine: damaged bytes moved to quarantine/ and the readings lost with them."""

    segment: str  # the segment's file name
    reason: str  # what is wrong, and where
    records: int  # readings lost (counted in ``stats().dropped["corrupt"]``)
    path: Path  # where the damaged bytes are kept


@dataclass(slots=True)
class BufferStats:
    records: int = 0  # appended and not yet acked by every destination (upper bound after drops)
    bytes: int = 0  # on disk (or in memory), including framing
    segments: int = 0
    appended: int = 0  # since open
    last_seq: int = 0
    unacked: dict[str, int] = field(default_factory=dict)  # per destination
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))


class Buffer(Protocol):
    async def append(self, readings: Sequence[Reading]) -> None: ...

    async def read(
        self, dest: str, max_records: int, timeout_s: float, *, lane: str = "", end_seq: int | None = None
    ) -> list[Record]: ...

    def ack(self, dest: str, first: int, last: int) -> None: ...

    def rewind(self, dest: str) -> None: ...

    def seek(self, dest: str, seq: int, *, lane: str = "") -> None: ...

    def add_destination(self, dest: str) -> None:
        """A destination added at run time starts at the head: it gets what is appended from now on.
        Adding one that exists changes nothing."""

    def remove_destination(self, dest: str) -> None:
        """Forget ``dest`` and its cursor (persisted at the next ``maintain``): records only it still needed
        can be deleted. Removing an unknown destination changes nothing."""

    def stats(self) -> BufferStats: ...

    def take_quarantined(self) -> list[Quarantined]:
        """Quarantines since the last call, oldest first; each is returned once."""

    async def maintain(self) -> None:
        """Persist cursors and apply age/ack-based deletion; called periodically by the supervisor."""

    async def close(self) -> None: ...


class AckLedger:
    """Per-destination acknowledgement state: the contiguous acked prefix plus sorted ranges beyond it."""

    __slots__ = ("acked_through", "ranges")

    def __init__(self, acked_through: int = 0, ranges: list[list[int]] | None = None) -> None:
        self.acked_through = acked_through
        self.ranges: list[list[int]] = [list(r) for r in ranges or []]
        self._compact()

    def add(self, first: int, last: int) -> None:
        if last < first:
            msg = f"ack range {first}..{last} is empty"
            raise ValueError(msg)
        if last <= self.acked_through:
            return
        self.ranges.append([max(first, self.acked_through + 1), last])
        self._compact()

    def _compact(self) -> None:
        self.ranges.sort()
        merged: list[list[int]] = []
        for first, last in self.ranges:
            if last <= self.acked_through:
                continue
            if merged and first <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], last)
            else:
                merged.append([first, last])
        while merged and merged[0][0] <= self.acked_through + 1:
            self.acked_through = max(self.acked_through, merged.pop(0)[1])
        self.ranges = merged

    def advance_to(self, seq: int) -> None:
        """Records up to ``seq`` are gone (dropped by a limit): treat them as settled."""
        if seq > self.acked_through:
            self.acked_through = seq
            self._compact()

    def next_unacked(self, seq: int) -> int:
        """The first sequence number >= ``seq`` that is not acked."""
        seq = max(seq, self.acked_through + 1)
        for first, last in self.ranges:
            if first <= seq <= last:
                return last + 1
            if first > seq:
                break
        return seq

    def acked_count_between(self, first: int, last: int) -> int:
        return sum(b - a + 1 for a, b in self.acked_spans(first, last))

    def acked_spans(self, first: int, last: int) -> list[tuple[int, int]]:
        """The acked seqs within ``first..last`` as sorted, disjoint, inclusive spans."""
        spans = [(first, min(last, self.acked_through))] if self.acked_through >= first else []
        spans += [(max(a, first), min(b, last)) for a, b in self.ranges if a <= last and b >= first]
        return [(a, b) for a, b in spans if a <= b]

    def to_json(self) -> dict[str, object]:
        return {"acked_through": self.acked_through, "acked_ranges": self.ranges}


def acked_by_all(ledgers: Iterable[AckLedger], first: int, last: int) -> int:
    """How many seqs within ``first..last`` every ledger has acked (the intersection, not the minimum)."""
    common: list[tuple[int, int]] | None = None
    for ledger in ledgers:
        spans = ledger.acked_spans(first, last)
        if common is None:
            common = spans
            continue
        both: list[tuple[int, int]] = []
        i = j = 0
        while i < len(common) and j < len(spans):
            lo, hi = max(common[i][0], spans[j][0]), min(common[i][1], spans[j][1])
            if lo <= hi:
                both.append((lo, hi))
            if common[i][1] < spans[j][1]:
                i += 1
            else:
                j += 1
        common = both
    return sum(b - a + 1 for a, b in common or [])
