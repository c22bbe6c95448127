"""Reading: the cursors of each (destination, lane), and the format-2 segment reader.

Contract:
- A read hands out records in sequence order from its lane's cursor, skipping acked ones, below ``end``; it
  reads a segment only up to the committed size it had when the read reached it. A lane not read yet starts at
  its destination's acked prefix.
- ``State.meta`` is held only briefly, between segments: file I/O and decoding run without it, against a
  private copy of the acks (the loop thread may add acks meanwhile).
- A cursor remembers where its next record is (segment and byte offset): sequential reads never rescan.
- Format 2: a run of wanted records is decoded with one call and checked with one CRC call; only a failing
  run is checked record by record, its good records handed out, and the segment quarantined
  (``Want.quarantine``); the read goes on with the next segment. A segment dropped meanwhile is skipped.
- A file that ends before the segment's last record (emptied, cut at or inside a record) hands out what it
  holds, then is quarantined when a record the read wants is missing (``Want.ended_early``); numbers the
  destination acked are stepped over. Every read makes progress: none spins on a short file.
"""

from __future__ import annotations

import bisect
import os
import zlib
from itertools import repeat
from typing import BinaryIO

from edge_gateway.buffer.base import AckLedger, Record
from edge_gateway.buffer.codec import CodecError, decode_frames
from edge_gateway.buffer.disk.format_v1 import first_record, read_v1, segment_format
from edge_gateway.buffer.disk.record import HEADER, LENGTH, MAX_RECORD, NO_END, chain, check_each, walk
from edge_gateway.buffer.disk.state import FORMAT_1, Cursor, Quarantine, Segment, State, Want
from edge_gateway.model import Reading


def _cursor(state: State, dest: str, lane: str) -> Cursor:
    """Called with ``meta`` held. A lane not sought yet starts at the destination's acked prefix."""
    cursor = state.cursors.get((dest, lane))
    if cursor is None:
        cursor = state.cursors[dest, lane] = Cursor(state.acks[dest].acked_through + 1)
    return cursor


def has_unread(state: State, dest: str, lane: str, end: int) -> bool:
    with state.meta:
        return state.acks[dest].next_unacked(_cursor(state, dest, lane).next_seq) < min(state.next_seq, end)


def read_records(
    state: State, dest: str, lane: str, max_records: int, end: int, *, chunk_bytes: int, quarantine: Quarantine
) -> list[Record]:
    with state.meta:
        cursor = _cursor(state, dest, lane)
        # A private copy: the loop thread may add acks while this thread scans.
        acks = AckLedger(state.acks[dest].acked_through, state.acks[dest].ranges)
        seq = acks.next_unacked(cursor.next_seq)
    want = Want([], max_records, acks, end, chunk_bytes, quarantine)
    while len(want.records) < max_records:
        with state.meta:
            seq = acks.next_unacked(seq)
            if seq >= min(state.next_seq, end) or not state.segments:
                break
            idx = bisect.bisect_right(state.firsts, seq) - 1
            if idx < 0:  # dropped by a limit before we got to it
                seq = state.segments[0].first_seq
                continue
            seg = state.segments[idx]
            if seq > seg.last_seq:
                seq = state.segments[idx + 1].first_seq if idx + 1 < len(state.segments) else state.next_seq
                continue
            committed = (seg.size, seg.last_seq)  # taken together: the writer may append to it meanwhile
            offset = cursor.pos_offset if (cursor.pos_segment == seg.first_seq and cursor.next_seq == seq) else 0
        seq, offset = _read_segment(seg, committed, (seq, offset), want)
        with state.meta:
            cursor.next_seq, cursor.pos_segment, cursor.pos_offset = seq, seg.first_seq, offset
    with state.meta:
        cursor.next_seq = seq
    return want.records


def _read_segment(seg: Segment, committed: tuple[int, int], start: tuple[int, int], want: Want) -> tuple[int, int]:
    """Append records >= seq from one segment to ``want.records``; return (next seq, its byte offset).

    ``committed`` is (size, last_seq) of the segment when the read reached it. ``start`` is (seq, offset):
    offset 0 scans from the segment's first record, otherwise it is the offset of record ``seq`` itself (the
    cursor's cached position).
    """
    size, last = committed
    try:
        f = seg.path.open("rb")
    except FileNotFoundError:  # dropped by a limit while we were reading
        return start[0], 0
    with f:
        size = min(size, os.fstat(f.fileno()).st_size)  # a file cut short since it was listed
        if seg.version is None:
            seg.version = segment_format(first_record(f), seg.first_seq)
        if seg.version == FORMAT_1:
            return read_v1(seg, f, size, start, want)
        return _read_v2(seg, f, (size, last), start, want)


def _read_v2(
    seg: Segment, f: BinaryIO, committed: tuple[int, int], start: tuple[int, int], want: Want
) -> tuple[int, int]:
    """``_read_segment`` for format 2: runs of wanted records decoded in one call, checked in another."""
    (size, last), (seq, offset) = committed, start
    at = seg.first_seq if offset == 0 else seq  # the seq of the record at offset
    records, acks, stop_at, limit = want.records, want.acks, want.end, want.limit
    sparse = bool(acks.ranges)
    new, crc32 = tuple.__new__, zlib.crc32
    need = 0  # bytes the next read must hold: a record larger than a chunk is read whole
    while offset < size and len(records) < limit and at < stop_at:
        f.seek(offset)
        chunk = f.read(max(need, min(want.chunk_bytes, size - offset)))
        view = memoryview(chunk)
        pos, n = 0, len(chunk)
        while pos < n and len(records) < limit and at < stop_at:
            # seq is never inside the acked prefix; only acked ranges beyond it need a look-up.
            first = acks.next_unacked(max(at, seq)) if sparse else max(at, seq)
            if first > at:  # records handed out or acked already: stepped over, not decoded
                pos, skipped = walk(chunk, pos, n, min(first, stop_at) - at)
                at += skipped
                if at < min(first, stop_at):
                    break  # the next record does not end in this chunk
                continue
            count = min(limit - len(records), (min(stop_at, _next_acked(acks, at)) if sparse else stop_at) - at)
            got: list[Reading] = []
            try:
                end = decode_frames(chunk, pos, n, count, got)
            except CodecError as exc:
                bad = exc.args[1]
                end = min(n, bad + HEADER.size + LENGTH.unpack_from(chunk, bad)[0])
                return _bad_run(
                    seg, want, view=view, span=(offset, pos, end), at=at, got=got, why=f"cannot be decoded ({exc})"
                )
            # One CRC call checks the whole run: its state after the last record names that record's seq.
            if got and crc32(view[pos:end], chain(at - 1)) != chain(at + len(got) - 1):
                return _bad_run(seg, want, view=view, span=(offset, pos, end), at=at, got=got, why="fails its CRC")
            records.extend(map(new, repeat(Record), zip(range(at, at + len(got)), got, strict=True)))
            pos, at = end, at + len(got)
            if len(got) < count:
                break  # the next record does not end in this chunk
        if pos == 0 and len(records) < limit and at < stop_at:
            need = _whole_record(seg, want, chunk, span=(offset, size, last), at=at, need=need)
            if need > 0:
                continue
            return (seg.last_seq + 1, 0) if need < 0 else (max(seq, at), offset if at >= seq else 0)
        need = 0
        offset += pos
    return _at_the_end(seg, want, (size, last), at=at, seq=seq, offset=offset)


def _at_the_end(
    seg: Segment, want: Want, committed: tuple[int, int], *, at: int, seq: int, offset: int
) -> tuple[int, int]:
    """``_read_v2``'s answer once it stopped at ``offset`` with record ``at`` next: when that is the end of the
    file although records this read wants should follow, the segment is quarantined (``Want.ended_early``)."""
    size, last = committed
    if (
        offset >= size
        and len(want.records) < want.limit
        and want.ended_early(seg, at, last, f"the file ends at byte {size}")
    ):
        return seg.last_seq + 1, 0
    return max(seq, at), offset if at >= seq else 0


def _whole_record(seg: Segment, want: Want, chunk: bytes, *, span: tuple[int, int, int], at: int, need: int) -> int:
    """Not even one record ends in ``chunk``: one larger than a chunk, a damaged length, or a file cut inside a
    record. The bytes to read to hold record ``at`` whole; -1 when the segment was quarantined; 0 when the
    records the file lacks are acked (the read steps past them).

    ``span`` is (the chunk's offset in the file, the file's size, the segment's last seq when the read reached it);
    ``need`` is what this chunk was read to hold (0: one chunk).
    """
    offset, size, last = span
    if len(chunk) < LENGTH.size:
        why = f"the file ends at byte {size}, inside record {at}"
    else:
        length: int = LENGTH.unpack_from(chunk)[0]
        if length > MAX_RECORD:
            want.quarantine(seg, f"record {at} has a bad length at byte {offset}")
            return -1
        if offset + HEADER.size + length <= size and not need:
            return HEADER.size + length
        why = f"record {at} has a bad length at byte {offset}, or the file (of {size} bytes) was cut in it"
    return -1 if want.ended_early(seg, at, last, why) else 0


def _bad_run(
    seg: Segment,
    want: Want,
    *,
    view: memoryview,
    span: tuple[int, int, int],
    at: int,
    got: list[Reading],
    why: str,
) -> tuple[int, int]:
    """Hand out the run's records before its first bad one, then quarantine the segment.

    ``span`` is (the chunk's offset in the file, the run's start and end in the chunk), the bad record
    inside it; ``at`` is the run's first seq and ``got`` what was decoded of it.
    """
    offset, pos, end = span
    bad_at, good = check_each(view, pos, end, at)
    kept = min(good, len(got))
    want.records.extend(map(tuple.__new__, repeat(Record), zip(range(at, at + kept), got[:kept], strict=True)))
    problem = why if good > len(got) else "fails its CRC"
    want.quarantine(seg, f"record {at + kept} {problem} at byte {offset + bad_at}")
    return seg.last_seq + 1, 0


def _next_acked(acks: AckLedger, seq: int) -> int:
    """The first acked seq after ``seq``; NO_END when none is."""
    return next((first for first, _ in acks.ranges if first > seq), NO_END)
