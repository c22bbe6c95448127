"""Retention: which segments leave the buffer, when, and how each removal is counted.

Contract:
- Segments are deleted whole, never rewritten. A sealed segment goes once every destination acked all of it
  (``delete_settled``); the active segment never goes for that reason, so ``next_seq`` survives on disk (the
  writer, on a full volume, seals a settled active segment by starting a new one, then calls ``delete_settled``).
- ``max_bytes`` is enforced before each write (``make_room``, called with ``ActiveFile.lock`` held): settled
  segments go first; then ``reject_new``, or a batch larger than ``max_bytes``, rejects the batch before
  anything stored is dropped (``BufferFullError``); ``drop_oldest`` drops the oldest segments, the active one
  included (the newest data wins).
- ``max_age_s`` (``expire``): a segment last written longer ago goes; the active one's descriptor is closed
  first, and when it is the only segment its file is kept (for ``next_seq``) and only its records settle.
- Every unacked record removed is counted once, not per destination, in ``stats.dropped`` by reason; removing a
  segment settles its numbers for every destination and marks the ledger dirty.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Literal, Protocol

from edge_gateway.buffer.base import acked_by_all
from edge_gateway.buffer.disk.ledger import Ledger
from edge_gateway.buffer.disk.state import ActiveFile, Segment, State
from edge_gateway.errors import BufferFullError

# The package's logger: log lines keep the logger name they had before disk.py became a package.
_log = logging.getLogger(__package__)


class Limits(Protocol):
    """The bounds retention enforces: ``DiskBuffer``'s public settings, read at each use."""

    max_bytes: int
    max_age_s: float
    when_full: Literal["drop_oldest", "reject_new"]


def unsettled(state: State, seg: Segment) -> int:
    """Records of ``seg`` some destination has not acked (counted once, not per destination)."""
    return max(0, seg.count - acked_by_all(state.acks.values(), seg.first_seq, seg.last_seq))


def drop_segment(state: State, seg: Segment, reason: str) -> int:
    """Remove ``seg`` and its file; return how many of its records were unsettled (counted under ``reason``)."""
    with state.meta:
        if seg not in state.segments:
            return 0
        lost = unsettled(state, seg)
        oldest = seg is state.segments[0]
        state.segments.remove(seg)
        state.firsts = [s.first_seq for s in state.segments]
        for acks in state.acks.values():
            if oldest:  # nothing older is left either
                acks.advance_to(seg.last_seq)
            elif seg.count:  # a segment in the middle (quarantined): only its own records settle
                acks.add(seg.first_seq, seg.last_seq)
        state.stats.dropped[reason] += lost
        state.ledger_dirty = True
    with contextlib.suppress(FileNotFoundError):
        seg.path.unlink()
    if lost:
        _log.warning(
            "buffer: dropped %d unsent reading(s) (seqs %d..%d), reason %s",
            lost,
            seg.first_seq,
            seg.last_seq,
            reason,
        )
    return lost


def delete_settled(state: State) -> None:
    with state.meta:
        floor = min((a.acked_through for a in state.acks.values()), default=state.next_seq - 1)
        settled = [s for s in state.segments[:-1] if s.last_seq <= floor]
    for seg in settled:
        drop_segment(state, seg, "full")  # nothing unacked in it, so nothing is counted


def make_room(state: State, limits: Limits, active: ActiveFile, ledger: Ledger, *, needed: int, count: int) -> None:
    """Enforce ``max_bytes`` before a write (called with the write lock held)."""
    if state.total_bytes() + needed > limits.max_bytes:
        delete_settled(state)
    if state.total_bytes() + needed <= limits.max_bytes:
        return
    if limits.when_full == "reject_new" or needed > limits.max_bytes:
        # Rejected before anything stored is dropped: a batch that cannot fit costs nothing else.
        state.stats.dropped["full"] += count
        raise BufferFullError(
            f"buffer at {state.directory} is full ({state.total_bytes()} of {limits.max_bytes} bytes) with policy "
            f"{limits.when_full}: {count} new reading(s) ({needed} bytes) rejected; restore the cloud "
            "connection or raise max_bytes"
        )
    while state.total_bytes() + needed > limits.max_bytes:
        if len(state.segments) == 1:
            # The newest data wins: even the active segment goes, a new one starts. Its name is what keeps
            # next_seq on disk, so the ledger must hold next_seq durably before it goes: a power cut after the
            # unlink would otherwise hand out its sequence numbers again. No ledger, no drop.
            with state.meta:
                state.ledger_dirty = True
            try:
                ledger.write()
            except OSError as exc:
                state.stats.dropped["full"] += count
                raise BufferFullError(
                    f"buffer at {state.directory} is full and its ledger cannot be written ({exc}): {count} new "
                    "reading(s) rejected rather than the last segment dropped; free disk space"
                ) from exc
            active.close()
        drop_segment(state, state.segments[0], "full")
    if not state.segments:  # the acks moved past the dropped records: the ledger says so too
        ledger.try_write("dropping the last segment")


def expire(state: State, active: ActiveFile, max_age_s: float) -> None:
    horizon = time.time() - max_age_s
    with active.lock:
        for seg in list(state.segments):
            if seg.mtime_s >= horizon or seg.count == 0:
                continue
            if seg is state.segments[-1]:
                active.close()  # seal it: the next append starts a new segment
                if len(state.segments) == 1:
                    # Keep the file so next_seq survives; everything in it is expired.
                    with state.meta:
                        state.stats.dropped["expired"] += unsettled(state, seg)
                        for acks in state.acks.values():
                            acks.advance_to(seg.last_seq)
                        state.ledger_dirty = True
                    continue
            drop_segment(state, seg, "expired")
