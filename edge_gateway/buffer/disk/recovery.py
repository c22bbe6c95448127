"""Opening a buffer directory after whatever stopped the last run, and quarantining damaged segments.

Contract:
- Opening reads the ledger and scans only the active segment (its checkpointed prefix with one CRC call, the
  rest record by record): start-up does not grow with the backlog. Other segments are taken as listed; damage
  in them is found when they are read.
- An incomplete last record is the trace of an append that never returned: it is cut. Any other bad tail is
  damage: cut and kept in quarantine/; the numbers its records could have had are counted as dropped
  (``corrupt``), settle for every destination and are never handed out again.
- ``next_seq`` is in the ledger before any cut, so a crash right after it cannot bring old numbers back.
- A destination the ledger does not know starts at the head when there is a ledger (or nothing is held), and
  at the oldest record held when there is no ledger at all (re-delivery, never loss).
- ``quarantine`` moves a segment found damaged to quarantine/ and drops it (its records some destination has
  not acked counted as ``corrupt``, handed out or not), then writes the ledger: when it was the newest segment
  only the ledger still knows ``next_seq``.
- Each quarantine (a segment, or a damaged tail cut at open) is added to ``State.quarantined``, once, for the
  audit trail (``DiskBuffer.take_quarantined``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import zlib
from dataclasses import dataclass

from edge_gateway.buffer.base import AckLedger, Quarantined, acked_by_all
from edge_gateway.buffer.disk.format_v1 import scan_v1, segment_format
from edge_gateway.buffer.disk.ledger import Ledger, load_ledger
from edge_gateway.buffer.disk.record import HEADER, LENGTH, chain, check_each, walk
from edge_gateway.buffer.disk.retention import delete_settled, drop_segment
from edge_gateway.buffer.disk.state import FORMAT_1, SUFFIX, ActiveFile, Cursor, Segment, State, quarantine_path
from edge_gateway.util.files import DIR_OWNER_ONLY, OWNER_ONLY, ensure_dir, fsync_dir, write_durably

# The package's logger: log lines keep the logger name they had before disk.py became a package.
_log = logging.getLogger(__package__)


@dataclass(frozen=True, slots=True)
class _Tail:
    """What follows the last whole record of the active segment at open."""

    at: int  # byte offset of the cut
    cut: bytes
    next_seq: int  # the lowest sequence number the cut records cannot have had
    damaged: bool  # damage (kept in quarantine/), not just an interrupted write


def open_directory(state: State, destinations: list[str], ledger: Ledger) -> None:
    """Fill the empty ``state`` from its directory (created if missing), repairing what needs it."""
    ensure_dir(state.directory, DIR_OWNER_ONLY)
    saved = load_ledger(state.directory)
    for seg_path in sorted(state.directory.glob("*" + SUFFIX)):
        try:
            first = int(seg_path.stem)
        except ValueError:
            _log.warning("ignoring unexpected file %s in the buffer directory", seg_path)
            continue
        st = seg_path.stat()
        state.segments.append(Segment(first, seg_path, st.st_size, first - 1, st.st_mtime))
    for prev, nxt in zip(state.segments, state.segments[1:], strict=False):
        prev.last_seq = nxt.first_seq - 1
    tail = _scan_tail(state.segments[-1], saved.checkpoint if saved else None) if state.segments else None
    state.firsts = [s.first_seq for s in state.segments]
    last_seq = state.segments[-1].last_seq if state.segments else 0
    ledger_next, known = (saved.next_seq, saved.acks) if saved else (1, {})
    # Numbers that damaged (cut) records may have had are never handed out again.
    state.next_seq = max(ledger_next, last_seq + 1, tail.next_seq if tail else 0)
    _init_cursors(state, destinations, known, had_ledger=saved is not None)
    lost = 0
    if tail is not None and tail.damaged and last_seq + 1 < state.next_seq:
        # The gap the cut leaves counts as dropped and settles for everyone, so acked prefixes pass it.
        gap = (last_seq + 1, state.next_seq - 1)
        lost = gap[1] - gap[0] + 1 - acked_by_all(state.acks.values(), *gap)
        state.stats.dropped["corrupt"] += lost
        for acks in state.acks.values():
            acks.add(*gap)
    state.stats.last_seq = state.next_seq - 1
    state.ledger_dirty = True
    # next_seq is on disk before the cut, so a crash right after it cannot bring old numbers back.
    ledger.try_write("opening")
    if tail is not None:
        _cut_tail(state, state.segments[-1], tail, lost)
    delete_settled(state)


def _init_cursors(state: State, destinations: list[str], known: dict[str, AckLedger], *, had_ledger: bool) -> None:
    oldest = state.segments[0].first_seq - 1 if state.segments else state.next_seq - 1
    for dest in destinations:
        if dest in known:
            acks = known[dest]
        elif had_ledger or not state.segments:
            # A destination added to a buffer that already serves others starts at the head.
            acks = AckLedger(state.next_seq - 1)
        else:
            # Segments but no ledger (lost or set aside): re-deliver everything we still hold.
            acks = AckLedger(oldest)
        acks.advance_to(oldest)
        state.acks[dest] = acks
        state.cursors[dest, ""] = Cursor(acks.acked_through + 1)
    for gone in sorted(set(known) - set(destinations)):
        _log.info("buffer: destination %r is no longer configured; its cursor is dropped", gone)


def _scan_tail(seg: Segment, checkpoint: list[int] | None) -> _Tail | None:
    """Find the last whole record of the active segment; None when the file ends there.

    An incomplete last record is the normal trace of a crash during a write (that append never
    returned): it is cut. Anything else (a complete record that fails its CRC or breaks the sequence)
    is damage: the records behind it may have been handed out already, so the numbering resumes past
    the highest sequence number they could have had (the records that still check out, or that their
    headers name, then one per header-sized chunk of the rest of the cut bytes).

    ``checkpoint`` is the ledger's [first_seq, bytes, last_seq] of the active segment when it was last
    written: when that prefix passes its one-call CRC check, only the records after it are walked.
    """
    with seg.path.open("rb") as f:
        data = f.read()
    seg.version = segment_format(data, seg.first_seq)
    if seg.version == FORMAT_1:
        good, last_seq, next_seq = scan_v1(data, seg.first_seq)
    else:
        known = (checkpoint[1], checkpoint[2]) if checkpoint and checkpoint[0] == seg.first_seq else None
        good, last_seq, next_seq = scan_v2(data, seg.first_seq, known)
    seg.size, seg.last_seq = good, last_seq
    if good == len(data):
        return None
    return _Tail(good, data[good:], next_seq, damaged=next_seq > last_seq + 1)


def _cut_tail(state: State, seg: Segment, tail: _Tail, lost: int) -> None:
    """Cut ``tail`` off the active segment; damaged bytes are kept in quarantine/ first (``lost`` readings)."""
    if tail.damaged:
        aside = quarantine_path(state.directory, seg.path.with_name(seg.path.name + ".tail"))
        write_durably(aside, tail.cut, mode=OWNER_ONLY, dir_mode=DIR_OWNER_ONLY)
        why = f"damaged after record {seg.last_seq} (byte {tail.at}): {len(tail.cut)} byte(s) cut at open"
        state.quarantined.append(Quarantined(seg.path.name, why, lost, aside))
        _log.error(
            "buffer: %s is damaged after seq %d; cut %d byte(s) and kept them in %s for analysis. Readings "
            "in them (up to seq %d) are lost and counted; numbering resumes at %d; the gateway continues",
            seg.path.name,
            seg.last_seq,
            len(tail.cut),
            aside,
            tail.next_seq - 1,
            state.next_seq,
        )
    else:
        _log.warning(
            "buffer: cut %d byte(s) of an interrupted write from %s after seq %d",
            len(tail.cut),
            seg.path.name,
            seg.last_seq,
        )
    with seg.path.open("r+b") as f:
        f.truncate(tail.at)
        os.fsync(f.fileno())


def scan_v2(data: bytes, first_seq: int, known: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """(end of the last good record, its seq, the lowest seq the cut records cannot have had).

    ``known`` is (bytes, last seq) of a prefix the ledger saw committed: it is checked, not walked.
    """
    view = memoryview(data)
    start, last = 0, first_seq - 1
    if (
        known is not None
        and 0 <= known[0] <= len(data)
        and known[1] >= last
        and zlib.crc32(view[: known[0]], chain(last)) == chain(known[1])
    ):
        start, last = known
    # All whole records are checked with one CRC call; only when that fails are they checked one by one.
    good, count = walk(data, start, len(data))
    if count and zlib.crc32(view[start:good], chain(last)) != chain(last + count):
        good, count = check_each(view, start, good, last + 1)
    last += count
    if good + LENGTH.size > len(data) or good + HEADER.size + LENGTH.unpack_from(data, good)[0] >= len(data):
        return good, last, last + 1  # a record cut short, or a bad last one: maybe a half-persisted write
    # Damage: step over the bad record by its length; when every record after it checks out, they count
    # exactly. Otherwise its length may be wrong too: the bytes from it on count as many records as they
    # could hold (at least a header each), unless that is fewer than the ones that did check out.
    pos = good + HEADER.size + LENGTH.unpack_from(data, good)[0]
    pos, seen = check_each(view, pos, walk(data, pos, len(data))[0], last + 2)
    if pos == len(data):
        return good, last, last + 2 + seen
    return (
        good,
        last,
        max(last + 2 + seen + (len(data) - pos) // HEADER.size, last + 1 + (len(data) - good) // HEADER.size),
    )


def quarantine(state: State, active: ActiveFile, ledger: Ledger, seg: Segment, why: str) -> None:
    """Move ``seg``, found damaged (``why``), to quarantine/ and drop it; the rest keeps flowing.

    Lost, and counted once as ``corrupt``: every record of ``seg`` some destination had not acknowledged, handed
    out or not: one handed out but not acknowledged may not have arrived, and can no longer be re-sent.
    """
    with active.lock:
        with state.meta:
            if seg not in state.segments:
                return  # another reader set it aside already
        if seg is (state.segments[-1] if state.segments else None):
            active.close()
        target = quarantine_path(state.directory, seg.path)
        with contextlib.suppress(FileNotFoundError):
            seg.path.replace(target)
            # Both names durable: after a power cut the file is in quarantine/, not back among the segments.
            fsync_dir(target.parent)
            fsync_dir(state.directory)
        lost = drop_segment(state, seg, "corrupt")
        with state.meta:
            state.quarantined.append(Quarantined(seg.path.name, why, lost, target))
    # When it was the newest segment, only the ledger still knows the next sequence number.
    ledger.try_write("quarantining a segment")
    _log.error(
        "buffer: segment %s is corrupt (%s); moved to %s and skipped. Readings after the damage in it are "
        "lost; keep the file for analysis or delete it, the gateway continues with the rest",
        seg.path.name,
        why,
        target,
    )
