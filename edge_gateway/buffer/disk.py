"""Durable store-and-forward buffer: append-only segment files plus an atomically written ledger.

On-disk format (directory ``path``):

    <first_seq:020d>.seg   segment files; records appended back to back, never rewritten
    ledger.json            {"format": 1, "next_seq": N,
                            "destinations": {name: {"acked_through": N, "acked_ranges": [[a, b], ...]}},
                            "active": [first_seq, bytes, last_seq]}
    quarantine/            segments that failed their CRC check, moved aside for a person to inspect

  ``active`` (absent before format 2, and while the active segment is empty or in format 1) is the
  active segment's committed prefix when the ledger was written: the next open checks that prefix with
  one CRC call instead of walking it record by record, and walks only what follows. A prefix that does
  not check out (damage, a cut, a hand-edited file) is ignored and the whole segment is walked.

Records, format 2 (written by this version):

    record  = <u32 n> payload <u32 crc>                          (n + 8 bytes, little-endian)
    payload = codec.encode_reading() bytes: codec kind 2 (binary), or kind 1 (JSON) for odd readings;
              the first byte tells them apart (see codec.py)
    crc     = CRC-32 of (<u32 n> payload) started from chain(seq - 1), XOR (seq mod 2**32)
    chain(s) = 0x2144DF1C ^ crc32(<u32 s mod 2**32>) ^ crc32(<u32 0>)

  ``chain(s)`` is the CRC-32 state after a valid record numbered ``s``: by the CRC-32 residue property
  (crc32(m + <u32 crc32(m, x)>, x) == 0x2144DF1C for every m and x) it depends on ``s`` alone. So one
  record checks by itself, crc32(record, chain(seq - 1)) == chain(seq), and a run of records k..j
  checks with ONE call over its bytes, crc32(run, chain(k - 1)) == chain(j); damage to any record of the
  run fails the run as surely as it fails that record. The drain decodes a run, then checks it with one
  call (``codec.decode_frames``); only a failing run is checked record by record, to find the damage.
  The seq is not stored: it is the segment's first_seq plus the record's index, and the CRC binds each
  record to it (a record found at another position fails its check).

Records, format 1 (written before format 2; still read, never written):

    record  = header payload
    header  = <u32 payload length> <u32 CRC-32 of (u64 seq little-endian + payload)> <u64 seq>  (16 bytes)
    payload = codec kind 1 (JSON)

  A segment holds one format; its first record tells which: format 2 when that record passes its
  format-2 check, else format 1 when bytes 8..16 hold the segment's first_seq, else 2 (as is an empty
  segment). A buffer written before the upgrade opens, drains and expires as before; its last segment
  is sealed, so the first append after the upgrade starts a format-2 segment.

Invariants:
- Sequence numbers are assigned 1, 2, 3, … and never reused, even after every segment is deleted or
  quarantined (``next_seq`` is kept in the ledger, written before any cut and after any quarantine, and the
  active segment is never deleted for being settled). The only gaps are numbers lost to damage: they count
  as dropped (``corrupt``) and as settled for every destination, so acked prefixes move past them.
- A segment holds a contiguous run of sequence numbers starting at the number in its name; the last
  segment is the only one ever appended to (the *active* one), and only while the next number continues
  its run (otherwise a new segment starts). Only a segment's committed prefix (bytes fsync'd before
  ``append`` returned) is read.
- ``append`` returns after write + fdatasync (group commit: appends that arrive while a commit is in
  progress share the next one; ``fsync_interval_ms`` > 0 lingers that long to gather more).
- The ledger is written with write-temp, fsync, rename, fsync-dir, from ``maintain()`` and ``close()``
  (when acks changed or the active segment grew); losing the newest acks to a crash only re-delivers
  (at-least-once), never loses.
- A sealed segment is deleted when every destination acked all of it, or when ``max_bytes`` /
  ``max_age_s`` remove it; each removed unacked record is counted by reason.
- Opening scans only the active segment (torn tail truncated; every record checked, the ledger's
  ``active`` prefix with one CRC call); start-up does not grow with the backlog.
  Memory holds one small entry per segment, not per record. A full volume does not stop the opening: the
  ledger write is retried at the next maintenance and acks stay pending until it succeeds.
- A CRC failure inside a committed region moves that segment to ``quarantine/`` with a log line saying
  what to do; the rest keeps flowing. Damage inside the active segment found at open is cut, the cut bytes
  go to ``quarantine/``, and numbering resumes past every number the cut records could have had.
- A reading the codec cannot store is stored as BAD with the reason; a batch that cannot fit even in an
  empty buffer is rejected without dropping anything stored.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import errno
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import BinaryIO, Literal

from edge_gateway.buffer.base import AckLedger, BufferStats, Record, acked_by_all
from edge_gateway.buffer.codec import CodecError, decode_frames, decode_readings, encode_reading
from edge_gateway.errors import BufferFullError, BufferIOError
from edge_gateway.model import Quality, Reading

_log = logging.getLogger(__name__)

LENGTH = struct.Struct("<I")  # format 2: before the payload
_CRC = struct.Struct("<I")  # format 2: after the payload
# Format 2 framing seen from a record's start, for code that walks a segment: HEADER.size is the framing
# per record (the length before the payload plus the CRC after it, hence "4x") and
# HEADER.unpack_from(segment, record_start)[0] the payload length.
HEADER = struct.Struct("<I4x")
V1_HEADER = struct.Struct("<IIQ")
_SEQ = struct.Struct("<Q")
_V1_SEQ_AT = 8  # offset of the seq field in a format 1 header; the payload follows it directly
_FORMAT_1, _FORMAT_2 = 1, 2  # record formats (see above); only format 2 is written
_U32_MASK = 0xFFFF_FFFF
# crc32(message + its CRC) is this constant for every message and start value (the CRC-32 residue);
# XORing d into the stored CRC moves the state after it by crc32(d) ^ crc32(0), whatever the message.
_CHAIN_BASE = 0x2144_DF1C ^ zlib.crc32(bytes(4))
SUFFIX = ".seg"
LEDGER = "ledger.json"
QUARANTINE = "quarantine"
_MAX_RECORD = 16 << 20
_READ_CHUNK = 4 << 20
_NO_END = 1 << 63


def chain(seq: int) -> int:
    """The CRC-32 state after a valid format-2 record numbered ``seq``: the start of the next one's CRC."""
    return _CHAIN_BASE ^ zlib.crc32(_CRC.pack(seq & _U32_MASK))


def frame(seq: int, payload: bytes) -> bytes:
    """The format-2 record of ``payload`` numbered ``seq``."""
    body = LENGTH.pack(len(payload)) + payload
    return body + _CRC.pack(zlib.crc32(body, chain(seq - 1)) ^ (seq & _U32_MASK))


def _v1_crc(seq: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(_SEQ.pack(seq)))


def segment_format(head: bytes, first_seq: int) -> int:
    """1 or 2: the record format of a segment whose file starts with ``head`` (its first record, whole)."""
    if len(head) >= LENGTH.size:
        (n,) = LENGTH.unpack_from(head)
        end = HEADER.size + n
        if end <= len(head) and zlib.crc32(memoryview(head)[:end], chain(first_seq - 1)) == chain(first_seq):
            return _FORMAT_2
    if len(head) >= V1_HEADER.size and V1_HEADER.unpack_from(head)[2] == first_seq:
        return _FORMAT_1
    return _FORMAT_2


@dataclass(slots=True)
class _Segment:
    first_seq: int
    path: Path
    size: int  # committed bytes
    last_seq: int  # first_seq - 1 while empty
    mtime_s: float
    version: int | None = None  # record format, 1 or 2; None until read (only format 2 is appended to)

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1


@dataclass(frozen=True, slots=True)
class _Tail:
    """What follows the last whole record of the active segment at open."""

    at: int  # byte offset of the cut
    cut: bytes
    next_seq: int  # the lowest sequence number the cut records cannot have had
    damaged: bool  # damage (kept in quarantine/), not just an interrupted write


@dataclass(frozen=True, slots=True)
class _Want:
    records: list[Record]
    limit: int
    acks: AckLedger
    end: int  # stop before this seq


@dataclass(slots=True)
class _Cursor:
    next_seq: int
    # Where the next record was found last time, so sequential reads never rescan a segment.
    pos_segment: int = 0
    pos_offset: int = 0


class DiskBuffer:
    def __init__(
        self,
        path: Path,
        destinations: Iterable[str],
        *,
        max_bytes: int = 1 << 30,
        max_age_s: float = 7 * 86400,
        when_full: Literal["drop_oldest", "reject_new"] = "drop_oldest",
        segment_bytes: int = 8 << 20,
        fsync_interval_ms: int = 0,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.when_full = when_full
        self.segment_bytes = segment_bytes
        self.fsync_interval_s = fsync_interval_ms / 1000
        self._meta = threading.Lock()  # segment list, ledgers, cursors: held briefly, also on the loop
        self._write_lock = threading.Lock()  # the active segment's file: held during write + fsync
        self._ledger_lock = threading.Lock()  # ledger.json(.tmp): held during a ledger write
        self._segments: list[_Segment] = []
        self._firsts: list[int] = []
        self._acks: dict[str, AckLedger] = {}
        self._cursors: dict[tuple[str, str], _Cursor] = {}  # (destination, lane)
        self._next_seq = 1
        self._fd: int | None = None
        self._ledger_dirty = False
        self._checkpoint: list[int] | None = None  # the active segment's [first_seq, bytes, last_seq] in the ledger
        self._roll = False
        self._stats = BufferStats()
        self._pending: list[tuple[Sequence[Reading], asyncio.Future[None]]] = []
        self._commit_task: asyncio.Task[None] | None = None
        self._data_event = asyncio.Event()
        self._open(list(destinations))

    # ---- opening and recovery -------------------------------------------------------------------

    def _open(self, destinations: list[str]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        ledger = self._load_ledger()
        for seg_path in sorted(self.path.glob("*" + SUFFIX)):
            try:
                first = int(seg_path.stem)
            except ValueError:
                _log.warning("ignoring unexpected file %s in the buffer directory", seg_path)
                continue
            st = seg_path.stat()
            self._segments.append(_Segment(first, seg_path, st.st_size, first - 1, st.st_mtime))
        for prev, nxt in zip(self._segments, self._segments[1:], strict=False):
            prev.last_seq = nxt.first_seq - 1
        tail = self._scan_tail(self._segments[-1], ledger[2] if ledger else None) if self._segments else None
        self._firsts = [s.first_seq for s in self._segments]
        last_seq = self._segments[-1].last_seq if self._segments else 0
        ledger_next, known, _ = ledger or (1, {}, None)
        # Numbers that damaged (cut) records may have had are never handed out again.
        self._next_seq = max(ledger_next, last_seq + 1, tail.next_seq if tail else 0)
        self._init_cursors(destinations, known, had_ledger=ledger is not None)
        if tail is not None and tail.damaged and last_seq + 1 < self._next_seq:
            # The gap the cut leaves counts as dropped and settles for everyone, so acked prefixes pass it.
            gap = (last_seq + 1, self._next_seq - 1)
            self._stats.dropped["corrupt"] += gap[1] - gap[0] + 1 - acked_by_all(self._acks.values(), *gap)
            for acks in self._acks.values():
                acks.add(*gap)
        self._stats.last_seq = self._next_seq - 1
        self._ledger_dirty = True
        # next_seq is on disk before the cut, so a crash right after it cannot bring old numbers back.
        self._try_write_ledger("opening")
        if tail is not None:
            self._cut_tail(self._segments[-1], tail)
        self._delete_settled()

    def _init_cursors(self, destinations: list[str], known: dict[str, AckLedger], *, had_ledger: bool) -> None:
        oldest = self._segments[0].first_seq - 1 if self._segments else self._next_seq - 1
        for dest in destinations:
            if dest in known:
                acks = known[dest]
            elif had_ledger or not self._segments:
                # A destination added to a buffer that already serves others starts at the head.
                acks = AckLedger(self._next_seq - 1)
            else:
                # Segments but no ledger (lost or set aside): re-deliver everything we still hold.
                acks = AckLedger(oldest)
            acks.advance_to(oldest)
            self._acks[dest] = acks
            self._cursors[dest, ""] = _Cursor(acks.acked_through + 1)
        for gone in sorted(set(known) - set(destinations)):
            _log.info("buffer: destination %r is no longer configured; its cursor is dropped", gone)

    def _load_ledger(self) -> tuple[int, dict[str, AckLedger], list[int] | None] | None:
        """(next_seq, acks per destination, active segment checkpoint) from ledger.json; None without one."""
        ledger_path = self.path / LEDGER
        try:
            data = json.loads(ledger_path.read_bytes())
            next_seq = int(data["next_seq"])
            acks = {
                str(name): AckLedger(int(entry["acked_through"]), entry.get("acked_ranges", []))
                for name, entry in data["destinations"].items()
            }
            checkpoint = _checkpoint(data.get("active"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            aside = self._quarantine_path(ledger_path)
            ledger_path.replace(aside)
            _log.error(
                "buffer ledger %s is unreadable (%s); moved to %s; every buffered record will be re-sent",
                ledger_path,
                exc,
                aside,
            )
            return None
        return next_seq, acks, checkpoint

    def _scan_tail(self, seg: _Segment, checkpoint: list[int] | None) -> _Tail | None:
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
        if seg.version == _FORMAT_1:
            good, last_seq, next_seq = _scan_v1(data, seg.first_seq)
        else:
            known = (checkpoint[1], checkpoint[2]) if checkpoint and checkpoint[0] == seg.first_seq else None
            good, last_seq, next_seq = _scan_v2(data, seg.first_seq, known)
        seg.size, seg.last_seq = good, last_seq
        if good == len(data):
            return None
        return _Tail(good, data[good:], next_seq, damaged=next_seq > last_seq + 1)

    def _cut_tail(self, seg: _Segment, tail: _Tail) -> None:
        if tail.damaged:
            aside = self._quarantine_path(seg.path.with_name(seg.path.name + ".tail"))
            aside.write_bytes(tail.cut)
            _log.error(
                "buffer: %s is damaged after seq %d; cut %d byte(s) and kept them in %s for analysis. Readings "
                "in them (up to seq %d) are lost and counted; numbering resumes at %d; the gateway continues",
                seg.path.name,
                seg.last_seq,
                len(tail.cut),
                aside,
                tail.next_seq - 1,
                self._next_seq,
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

    # ---- append (group commit) ----------------------------------------------------------------

    async def append(self, readings: Sequence[Reading]) -> None:
        if not readings:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((readings, done))
        if self._commit_task is None or self._commit_task.done():
            self._commit_task = loop.create_task(self._commit_loop(), name="buffer:commit")
        await done

    async def _commit_loop(self) -> None:
        while self._pending:
            if self.fsync_interval_s:
                await asyncio.sleep(self.fsync_interval_s)
            batch, self._pending = self._pending, []
            readings = [r for rs, _ in batch for r in rs]
            try:
                await asyncio.to_thread(self._write, readings)
            except Exception as exc:  # noqa: BLE001 - every waiting appender must hear of it, never hang
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
                self._data_event.set()
                self._data_event = asyncio.Event()

    def _write(self, readings: list[Reading]) -> None:
        with self._write_lock:
            data = bytearray()
            seq = self._next_seq
            state = chain(seq - 1)
            pack_length, pack_crc, crc32, encode = LENGTH.pack, _CRC.pack, zlib.crc32, encode_reading
            for r in readings:
                try:
                    payload = encode(r)
                except (TypeError, ValueError) as exc:
                    payload = _encode_as_bad(r, exc)
                body = pack_length(len(payload)) + payload
                crc = crc32(body, state)
                trailer = pack_crc(crc ^ (seq & _U32_MASK))
                state = crc32(trailer, crc)  # == chain(seq), without packing seq
                data += body
                data += trailer
                seq += 1
            self._make_room(len(data), len(readings))
            try:
                seg = self._active_segment(len(data))
            except OSError as exc:
                self._stats.dropped["io_error"] += len(readings)
                raise BufferIOError(
                    f"buffer cannot open a segment in {self.path}: {errno.errorcode.get(exc.errno or 0, '?')} "
                    f"{exc.strerror}; {len(readings)} reading(s) counted as dropped; fix the volume - the gateway "
                    "retries with the next readings"
                ) from exc
            assert self._fd is not None
            try:
                written = 0
                view = memoryview(data)
                while written < len(data):
                    written += os.write(self._fd, view[written:])
                os.fdatasync(self._fd)
            except OSError as exc:
                self._stats.dropped["io_error"] += len(readings)
                self._undo_partial_write(seg)
                if exc.errno == errno.EFBIG and seg.size:
                    self._roll = True  # this file can grow no more: the next append starts a new segment
                raise BufferIOError(
                    f"buffer write of {len(readings)} reading(s) to {seg.path} failed: "
                    f"{errno.errorcode.get(exc.errno or 0, '?')} {exc.strerror}; they are counted as dropped; "
                    "free disk space or fix the volume - the gateway retries with the next readings"
                ) from exc
            with self._meta:
                seg.size += len(data)
                seg.last_seq = seq - 1
                seg.mtime_s = time.time()
                self._next_seq = seq
                self._stats.appended += len(readings)
                self._stats.last_seq = seq - 1

    def _undo_partial_write(self, seg: _Segment) -> None:
        try:
            assert self._fd is not None
            os.ftruncate(self._fd, seg.size)
            os.lseek(self._fd, seg.size, os.SEEK_SET)
        except OSError as exc:
            # The partial record stays behind a committed prefix; it is cut at the next open.
            _log.warning("buffer: could not truncate %s after a failed write: %s", seg.path.name, exc)
            self._close_fd()

    def _make_room(self, needed: int, count: int) -> None:
        """Enforce ``max_bytes`` before a write (called with the write lock held)."""
        if self._total_bytes() + needed > self.max_bytes:
            self._delete_settled()
        if self._total_bytes() + needed <= self.max_bytes:
            return
        if self.when_full == "reject_new" or needed > self.max_bytes:
            # Rejected before anything stored is dropped: a batch that cannot fit costs nothing else.
            self._stats.dropped["full"] += count
            raise BufferFullError(
                f"buffer at {self.path} is full ({self._total_bytes()} of {self.max_bytes} bytes) with policy "
                f"{self.when_full}: {count} new reading(s) ({needed} bytes) rejected; restore the cloud "
                "connection or raise max_bytes"
            )
        while self._total_bytes() + needed > self.max_bytes:
            if len(self._segments) == 1:
                self._close_fd()  # the newest data wins: even the active segment goes, a new one starts
            self._drop_segment(self._segments[0], "full")
        if not self._segments:  # only the ledger knows the next sequence number until the write below
            self._try_write_ledger("dropping the last segment")

    def _active_segment(self, needed: int) -> _Segment:
        """The segment the next record goes to: the last one while it continues the numbering and has room."""
        seg = self._segments[-1] if self._segments else None
        if (
            seg is not None
            and seg.last_seq + 1 == self._next_seq  # it continues the numbering
            and (  # a format 1 segment (written before an upgrade) is never appended to
                seg.size == 0
                or (seg.version == _FORMAT_2 and not self._roll and seg.size + needed <= self.segment_bytes)
            )
        ):
            seg.version = _FORMAT_2  # an empty segment takes the format written now
            if self._fd is None:
                self._fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND)
                os.lseek(self._fd, seg.size, os.SEEK_SET)
            return seg
        self._close_fd()
        if seg is not None and seg.size == 0:  # empty, and the numbering has moved past its name
            with self._meta:
                self._segments.pop()
                self._firsts.pop()
            with contextlib.suppress(FileNotFoundError):
                seg.path.unlink()
        self._roll = False
        new = _Segment(
            self._next_seq, self.path / f"{self._next_seq:020d}{SUFFIX}", 0, self._next_seq - 1, time.time(), _FORMAT_2
        )
        self._fd = os.open(new.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        _fsync_dir(self.path)
        with self._meta:
            self._segments.append(new)
            self._firsts.append(new.first_seq)
        return new

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _total_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    # ---- read / ack ------------------------------------------------------------------------------

    async def read(
        self, dest: str, max_records: int, timeout_s: float, *, lane: str = "", end_seq: int | None = None
    ) -> list[Record]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        end = end_seq if end_seq is not None else _NO_END
        while True:
            if self._has_unread(dest, lane, end):
                records = await asyncio.to_thread(self._read, dest, lane, max_records, end)
                if records:
                    return records
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            event = self._data_event
            try:
                async with asyncio.timeout(remaining):
                    await event.wait()
            except TimeoutError:
                return []

    def _cursor(self, dest: str, lane: str) -> _Cursor:
        """Called with ``_meta`` held. A lane not sought yet starts at the destination's acked prefix."""
        cursor = self._cursors.get((dest, lane))
        if cursor is None:
            cursor = self._cursors[dest, lane] = _Cursor(self._acks[dest].acked_through + 1)
        return cursor

    def _has_unread(self, dest: str, lane: str, end: int) -> bool:
        with self._meta:
            return self._acks[dest].next_unacked(self._cursor(dest, lane).next_seq) < min(self._next_seq, end)

    def _read(self, dest: str, lane: str, max_records: int, end: int) -> list[Record]:
        with self._meta:
            cursor = self._cursor(dest, lane)
            # A private copy: the loop thread may add acks while this thread scans.
            acks = AckLedger(self._acks[dest].acked_through, self._acks[dest].ranges)
            seq = acks.next_unacked(cursor.next_seq)
        want = _Want([], max_records, acks, end)
        while len(want.records) < max_records:
            with self._meta:
                seq = acks.next_unacked(seq)
                if seq >= min(self._next_seq, end) or not self._segments:
                    break
                idx = bisect.bisect_right(self._firsts, seq) - 1
                if idx < 0:  # dropped by a limit before we got to it
                    seq = self._segments[0].first_seq
                    continue
                seg = self._segments[idx]
                if seq > seg.last_seq:
                    seq = self._segments[idx + 1].first_seq if idx + 1 < len(self._segments) else self._next_seq
                    continue
                size = seg.size
                offset = cursor.pos_offset if (cursor.pos_segment == seg.first_seq and cursor.next_seq == seq) else 0
            seq, offset = self._read_segment(seg, size, (seq, offset), want)
            with self._meta:
                cursor.next_seq, cursor.pos_segment, cursor.pos_offset = seq, seg.first_seq, offset
        with self._meta:
            cursor.next_seq = seq
        return want.records

    def _read_segment(self, seg: _Segment, size: int, start: tuple[int, int], want: _Want) -> tuple[int, int]:
        """Append records >= seq from one segment to ``want.records``; return (next seq, its byte offset).

        ``start`` is (seq, offset): offset 0 scans from the segment's first record, otherwise it is the
        offset of record ``seq`` itself (the cursor's cached position).
        """
        try:
            f = seg.path.open("rb")
        except FileNotFoundError:  # dropped by a limit while we were reading
            return start[0], 0
        with f:
            if seg.version is None:
                seg.version = segment_format(_first_record(f), seg.first_seq)
            if seg.version == _FORMAT_1:
                return self._read_v1(seg, f, size, start, want)
            return self._read_v2(seg, f, size, start, want)

    def _read_v2(self, seg: _Segment, f: BinaryIO, size: int, start: tuple[int, int], want: _Want) -> tuple[int, int]:
        """``_read_segment`` for format 2: runs of wanted records decoded in one call, checked in another."""
        seq, offset = start
        at = seg.first_seq if offset == 0 else seq  # the seq of the record at offset
        records, acks, stop_at, limit = want.records, want.acks, want.end, want.limit
        sparse = bool(acks.ranges)
        new, crc32 = tuple.__new__, zlib.crc32
        need = 0  # bytes the next read must hold: a record larger than a chunk is read whole
        while offset < size and len(records) < limit and at < stop_at:
            f.seek(offset)
            chunk = f.read(max(need, min(_READ_CHUNK, size - offset)))
            view = memoryview(chunk)
            pos, n = 0, len(chunk)
            while pos < n and len(records) < limit and at < stop_at:
                # seq is never inside the acked prefix; only acked ranges beyond it need a look-up.
                first = acks.next_unacked(max(at, seq)) if sparse else max(at, seq)
                if first > at:  # records handed out or acked already: stepped over, not decoded
                    pos, skipped = _walk(chunk, pos, n, min(first, stop_at) - at)
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
                    return self._bad_run(
                        seg, want, view=view, span=(offset, pos, end), at=at, got=got, why=f"cannot be decoded ({exc})"
                    )
                # One CRC call checks the whole run: its state after the last record names that record's seq.
                if got and crc32(view[pos:end], chain(at - 1)) != chain(at + len(got) - 1):
                    return self._bad_run(
                        seg, want, view=view, span=(offset, pos, end), at=at, got=got, why="fails its CRC"
                    )
                records.extend(map(new, repeat(Record), zip(range(at, at + len(got)), got, strict=True)))
                pos, at = end, at + len(got)
                if len(got) < count:
                    break  # the next record does not end in this chunk
            if pos == 0 and len(records) < limit and at < stop_at:
                # Not even one record ends in the chunk: one larger than a chunk, or a damaged length.
                length = LENGTH.unpack_from(chunk)[0] if n >= LENGTH.size else _NO_END
                if length > _MAX_RECORD or offset + HEADER.size + length > size or need:
                    self._quarantine(seg, f"record {at} has a bad length at byte {offset}")
                    return seg.last_seq + 1, 0
                need = HEADER.size + length
                continue
            need = 0
            offset += pos
        return max(seq, at), offset if at >= seq else 0

    def _bad_run(
        self,
        seg: _Segment,
        want: _Want,
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
        bad_at, good = _check_each(view, pos, end, at)
        kept = min(good, len(got))
        want.records.extend(map(tuple.__new__, repeat(Record), zip(range(at, at + kept), got[:kept], strict=True)))
        problem = why if good > len(got) else "fails its CRC"
        self._quarantine(seg, f"record {at + kept} {problem} at byte {offset + bad_at}")
        return seg.last_seq + 1, 0

    def _read_v1(self, seg: _Segment, f: BinaryIO, size: int, start: tuple[int, int], want: _Want) -> tuple[int, int]:
        """The format 1 reader: payloads are gathered, then decoded in one go."""
        found: list[tuple[int, bytes]] = []
        result = self._scan_v1_records(seg, f, size, start, (want, found))
        readings = decode_readings([payload for _, payload in found])
        want.records.extend(map(tuple.__new__, repeat(Record), zip([s for s, _ in found], readings, strict=True)))
        return result

    def _scan_v1_records(
        self, seg: _Segment, f: BinaryIO, size: int, start: tuple[int, int], into: tuple[_Want, list[tuple[int, bytes]]]
    ) -> tuple[int, int]:
        seq, offset = start
        want, found = into
        scan_seq = seg.first_seq if offset == 0 else seq
        sparse = bool(want.acks.ranges)
        limit, stop_at = want.limit - len(want.records), want.end
        unpack, crc32, hsize = V1_HEADER.unpack_from, zlib.crc32, V1_HEADER.size
        while offset + hsize <= size and len(found) < limit:
            f.seek(offset)
            chunk = f.read(min(_READ_CHUNK, size - offset))
            view = memoryview(chunk)
            pos, n, room = 0, len(chunk), limit - len(found)
            while pos + hsize <= n and room:
                length, crc, rec_seq = unpack(chunk, pos)
                end = pos + hsize + length
                if rec_seq != scan_seq or length > _MAX_RECORD or offset + end > size:
                    self._quarantine(seg, f"record {scan_seq} has a bad header at byte {offset + pos}")
                    return seg.last_seq + 1, 0
                if rec_seq >= stop_at:
                    return rec_seq, offset + pos  # the lane ends here; the cursor points at it
                if end > n:
                    if pos == 0:  # a single record larger than the chunk
                        view.release()
                        chunk += f.read(end - n)
                        view, n = memoryview(chunk), len(chunk)
                    else:
                        break
                # seq is never inside the acked prefix; only acked ranges beyond it need a look-up.
                if rec_seq >= seq and (not sparse or want.acks.next_unacked(rec_seq) == rec_seq):
                    # The header ends with the seq, so seq + payload are contiguous: one CRC call.
                    if crc32(view[pos + _V1_SEQ_AT : end]) != crc:
                        self._quarantine(seg, f"record {rec_seq} fails its CRC at byte {offset + pos}")
                        return seg.last_seq + 1, 0
                    found.append((rec_seq, chunk[pos + hsize : end]))
                    room -= 1
                pos = end
                scan_seq += 1
            offset += pos
        return max(seq, scan_seq), offset

    def ack(self, dest: str, first: int, last: int) -> None:
        with self._meta:
            self._acks[dest].add(first, last)
            self._ledger_dirty = True

    def rewind(self, dest: str) -> None:
        with self._meta:
            for key in [k for k in self._cursors if k[0] == dest and k[1]]:
                del self._cursors[key]
            self._cursors[dest, ""] = _Cursor(self._acks[dest].acked_through + 1)

    def seek(self, dest: str, seq: int, *, lane: str = "") -> None:
        with self._meta:
            self._cursors[dest, lane] = _Cursor(max(seq, self._acks[dest].acked_through + 1))

    def add_destination(self, dest: str) -> None:
        with self._meta:
            if dest in self._acks:
                return
            self._acks[dest] = AckLedger(self._next_seq - 1)  # the head: what is appended from now on
            self._cursors[dest, ""] = _Cursor(self._next_seq)
            self._ledger_dirty = True
        _log.info("buffer: destination %r added; it starts at seq %d", dest, self._next_seq)

    def remove_destination(self, dest: str) -> None:
        with self._meta:
            if self._acks.pop(dest, None) is None:
                return
            for key in [k for k in self._cursors if k[0] == dest]:
                del self._cursors[key]
            self._ledger_dirty = True
        _log.info("buffer: destination %r removed; what only it still needed will be deleted", dest)

    # ---- limits, corruption, maintenance -------------------------------------------------------

    def _drop_segment(self, seg: _Segment, reason: str) -> None:
        with self._meta:
            if seg not in self._segments:
                return
            lost = self._unsettled(seg)
            oldest = seg is self._segments[0]
            self._segments.remove(seg)
            self._firsts = [s.first_seq for s in self._segments]
            for acks in self._acks.values():
                if oldest:  # nothing older is left either
                    acks.advance_to(seg.last_seq)
                elif seg.count:  # a segment in the middle (quarantined): only its own records settle
                    acks.add(seg.first_seq, seg.last_seq)
            self._stats.dropped[reason] += lost
            self._ledger_dirty = True
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

    def _unsettled(self, seg: _Segment) -> int:
        """Records of ``seg`` some destination has not acked (counted once, not per destination)."""
        return max(0, seg.count - acked_by_all(self._acks.values(), seg.first_seq, seg.last_seq))

    def _quarantine(self, seg: _Segment, why: str) -> None:
        with self._write_lock:
            if seg is (self._segments[-1] if self._segments else None):
                self._close_fd()
            target = self._quarantine_path(seg.path)
            with contextlib.suppress(FileNotFoundError):
                seg.path.replace(target)
            self._drop_segment(seg, "corrupt")
        # When it was the newest segment, only the ledger still knows the next sequence number.
        self._try_write_ledger("quarantining a segment")
        _log.error(
            "buffer: segment %s is corrupt (%s); moved to %s and skipped. Readings after the damage in it are "
            "lost; keep the file for analysis or delete it, the gateway continues with the rest",
            seg.path.name,
            why,
            target,
        )

    def _quarantine_path(self, path: Path) -> Path:
        qdir = self.path / QUARANTINE
        qdir.mkdir(exist_ok=True)
        return qdir / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}"

    async def maintain(self) -> None:
        await asyncio.to_thread(self._maintain)

    def _maintain(self) -> None:
        # Deleting settled segments first frees space even when the disk is too full for a ledger write;
        # it is safe before the acks are persisted (a reopened cursor skips to the oldest segment left).
        self._delete_settled()
        self._write_ledger()
        horizon = time.time() - self.max_age_s
        with self._write_lock:
            for seg in list(self._segments):
                if seg.mtime_s >= horizon or seg.count == 0:
                    continue
                if seg is self._segments[-1]:
                    self._close_fd()  # seal it: the next append starts a new segment
                    if len(self._segments) == 1:
                        # Keep the file so next_seq survives; everything in it is expired.
                        with self._meta:
                            self._stats.dropped["expired"] += self._unsettled(seg)
                            for acks in self._acks.values():
                                acks.advance_to(seg.last_seq)
                            self._ledger_dirty = True
                        continue
                self._drop_segment(seg, "expired")

    def _delete_settled(self) -> None:
        with self._meta:
            floor = min((a.acked_through for a in self._acks.values()), default=self._next_seq - 1)
            settled = [s for s in self._segments[:-1] if s.last_seq <= floor]
        for seg in settled:
            self._drop_segment(seg, "full")  # nothing unacked in it, so nothing is counted

    def _write_ledger(self) -> None:
        # One writer at a time (maintenance, the commit thread, a reader quarantining): they share the temp file,
        # and the snapshot taken last is the one written last.
        with self._ledger_lock:
            with self._meta:
                active = self._segments[-1] if self._segments else None
                # Lets the next open check the active segment's prefix with one CRC call instead of walking it.
                checkpoint = (
                    [active.first_seq, active.size, active.last_seq]
                    if active is not None and active.version == _FORMAT_2 and active.count
                    else None
                )
                if not self._ledger_dirty and checkpoint == self._checkpoint:
                    return
                doc: dict[str, object] = {
                    "format": 1,
                    "next_seq": self._next_seq,
                    "destinations": {d: a.to_json() for d, a in self._acks.items()},
                }
                if checkpoint is not None:
                    doc["active"] = checkpoint
                self._ledger_dirty = False
            tmp = self.path / (LEDGER + ".tmp")
            try:
                with tmp.open("wb") as f:
                    f.write(json.dumps(doc, separators=(",", ":")).encode())
                    f.flush()
                    os.fsync(f.fileno())
                tmp.replace(self.path / LEDGER)
                _fsync_dir(self.path)
                self._checkpoint = checkpoint
            except OSError:
                with self._meta:
                    self._ledger_dirty = True  # written by the next maintain() or close()
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise

    def _try_write_ledger(self, when: str) -> None:
        try:
            self._write_ledger()
        except OSError as exc:
            _log.warning("buffer: could not write %s while %s (%s); retried at the next maintenance", LEDGER, when, exc)

    def stats(self) -> BufferStats:
        with self._meta:
            s = self._stats
            last = self._next_seq - 1
            s.bytes = self._total_bytes()
            s.segments = len(self._segments)
            s.unacked = {d: last - a.acked_count_between(1, last) for d, a in self._acks.items()}
            floor = min((a.acked_through for a in self._acks.values()), default=last)
            s.records = last - floor
            return BufferStats(s.records, s.bytes, s.segments, s.appended, s.last_seq, dict(s.unacked), dict(s.dropped))

    async def close(self) -> None:
        if self._commit_task is not None:
            await asyncio.shield(self._commit_task)
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._write_lock:
            self._close_fd()
        self._write_ledger()


def _encode_as_bad(r: Reading, exc: Exception) -> bytes:
    """A reading the codec cannot store (a value of the wrong type, say) is stored as BAD, never dropped."""
    _log.warning("buffer: %s/%s value cannot be stored (%s); stored as BAD", r.source, r.point, exc)
    return encode_reading(r._replace(value=None, quality=Quality.BAD, status=f"unstorable value: {exc}"))


def _scan_v2(data: bytes, first_seq: int, known: tuple[int, int] | None = None) -> tuple[int, int, int]:
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
    good, count = _walk(data, start, len(data))
    if count and zlib.crc32(view[start:good], chain(last)) != chain(last + count):
        good, count = _check_each(view, start, good, last + 1)
    last += count
    if good + LENGTH.size > len(data) or good + HEADER.size + LENGTH.unpack_from(data, good)[0] >= len(data):
        return good, last, last + 1  # a record cut short, or a bad last one: maybe a half-persisted write
    # Damage: step over the bad record by its length; when every record after it checks out, they count
    # exactly. Otherwise its length may be wrong too: the bytes from it on count as many records as they
    # could hold (at least a header each), unless that is fewer than the ones that did check out.
    pos = good + HEADER.size + LENGTH.unpack_from(data, good)[0]
    pos, seen = _check_each(view, pos, _walk(data, pos, len(data))[0], last + 2)
    if pos == len(data):
        return good, last, last + 2 + seen
    return (
        good,
        last,
        max(last + 2 + seen + (len(data) - pos) // HEADER.size, last + 1 + (len(data) - good) // HEADER.size),
    )


def _checkpoint(value: object) -> list[int] | None:
    """The ledger's ``active`` entry, [first_seq, bytes, last_seq]; None when absent or malformed (only a
    shortcut at open: a bad one must not cost the acks next to it)."""
    if isinstance(value, list) and len(value) == 3 and all(type(x) is int for x in value):  # noqa: PLR2004
        return value
    return None


def _first_record(f: BinaryIO) -> bytes:
    """The first record of a segment file, whole when its length is plausible (for ``segment_format``)."""
    head = f.read(V1_HEADER.size)
    if len(head) >= LENGTH.size and (n := LENGTH.unpack_from(head)[0]) <= _MAX_RECORD:
        head += f.read(max(0, HEADER.size + n - len(head)))
    return head


def _next_acked(acks: AckLedger, seq: int) -> int:
    """The first acked seq after ``seq``; _NO_END when none is."""
    return next((first for first, _ in acks.ranges if first > seq), _NO_END)


def _walk(data: bytes, pos: int, stop: int, limit: int = _NO_END) -> tuple[int, int]:
    """Step over up to ``limit`` whole format-2 records from ``pos``: (where it stopped, how many)."""
    unpack, hsize = LENGTH.unpack_from, HEADER.size
    count = 0
    while count < limit and pos + LENGTH.size <= stop:
        end = pos + hsize + unpack(data, pos)[0]
        if end > stop:
            break
        pos = end
        count += 1
    return pos, count


def _check_each(view: memoryview, pos: int, stop: int, seq: int) -> tuple[int, int]:
    """Check format-2 records from ``pos`` (numbered from ``seq``) one by one: (end of the good ones, count)."""
    count = 0
    while pos + LENGTH.size <= stop:
        end = pos + HEADER.size + LENGTH.unpack_from(view, pos)[0]
        if end > stop or zlib.crc32(view[pos:end], chain(seq + count - 1)) != chain(seq + count):
            break
        pos = end
        count += 1
    return pos, count


def _scan_v1(data: bytes, first_seq: int) -> tuple[int, int, int]:
    """``_scan_v2`` for a format 1 segment (seq in every header)."""
    good, last_seq = 0, first_seq - 1
    hsize = V1_HEADER.size
    torn = True
    while good + hsize <= len(data):
        length, crc, seq = V1_HEADER.unpack_from(data, good)
        end = good + hsize + length
        if end > len(data) and seq == last_seq + 1 and length <= _MAX_RECORD:
            break  # incomplete last record: an interrupted write
        if seq != last_seq + 1 or length > _MAX_RECORD or _v1_crc(seq, data[good + hsize : end]) != crc:
            torn = end >= len(data)  # a bad last record may be a half-persisted write too
            break
        good, last_seq = end, seq
    if torn or good == len(data):
        return good, last_seq, last_seq + 1
    pos, seen = good, last_seq
    while pos + hsize <= len(data):
        length, _, seq = V1_HEADER.unpack_from(data, pos)
        if seq != seen + 1 or length > _MAX_RECORD:
            break
        pos, seen = pos + hsize + length, seq
    # A damaged record whose header still names the next seq must count as damage, not as torn.
    return good, last_seq, max(seen + 1 + max(0, len(data) - pos) // hsize, last_seq + 2)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
