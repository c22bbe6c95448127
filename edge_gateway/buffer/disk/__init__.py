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
  active segment is deleted for being settled only once a new one, named ``next_seq``, took its place). The
  only gaps are numbers lost to damage: they count as dropped (``corrupt``) and as settled for every
  destination, so acked prefixes move past them.
- A segment holds a contiguous run of sequence numbers starting at the number in its name; the last
  segment is the only one ever appended to (the *active* one), and only while the next number continues
  its run (otherwise a new segment starts). Only a segment's committed prefix (bytes fsync'd before
  ``append`` returned) is read.
- ``append`` returns after write + fdatasync (group commit: appends that arrive while a commit is in
  progress share the next one; ``fsync_interval_ms`` > 0 lingers that long to gather more).
- The ledger is written with write-temp, fsync, rename, fsync-dir, from ``maintain()`` and ``close()``
  (when acks changed or the active segment grew); losing the newest acks to a crash only re-delivers
  (at-least-once), never loses. ``close()`` on a full volume does not raise: it logs one line, and the
  next start writes the ledger (the acks it could not persist are re-sent).
- A sealed segment is deleted when every destination acked all of it, or when ``max_bytes`` /
  ``max_age_s`` remove it; each removed unacked record is counted by reason.
- A full volume (ENOSPC, EDQUOT) frees itself once the backlog is acknowledged: a write that fails for want
  of space deletes every segment all destinations acked, the active one included (a volume little larger
  than ``segment_bytes``, or shared with other files, fills up before the active segment is sealed: a new
  segment takes its place first), then tries once more. Nothing unacknowledged goes for a full volume: until
  it is acked, new readings are refused and counted as ``io_error``.
- Opening scans only the active segment (torn tail truncated; every record checked, the ledger's
  ``active`` prefix with one CRC call); start-up does not grow with the backlog.
  Memory holds one small entry per segment, not per record. A full volume does not stop the opening: the
  ledger write is retried at the next maintenance and acks stay pending until it succeeds.
- A CRC failure inside a committed region moves that segment to ``quarantine/`` with a log line saying
  what to do; the rest keeps flowing. So does a sealed segment whose file ends before its last record (the
  next segment's name tells which that is): emptied or cut short by a power cut or a full volume. Either
  way the records before the damage are handed out first. Damage inside the active segment found at open
  is cut, the cut bytes go to ``quarantine/``, and numbering resumes past every number the cut records
  could have had. Numbers a short file lacks that every destination acked are a former quarantine's gap,
  not damage.
- A quarantine counts as lost (``corrupt``, once per reading, not per destination) every record of it some
  destination had not acknowledged, whether handed out or not: one handed out but not acknowledged may not
  have arrived, and can no longer be re-sent. Records every destination acknowledged are never counted.
  Each quarantine, at open or later, is reported once by ``take_quarantined()`` (segment, reason, readings
  lost, where the bytes are kept): the supervisor writes it to the audit trail.
- A reading the codec cannot store is stored as BAD with the reason; a batch that cannot fit even in an
  empty buffer is rejected without dropping anything stored.

The package, one concern per module (imports only go down this list):

    record.py      format-2 framing and the chained CRC
    state.py       the shared in-memory state (segments, acks, cursors, numbering) and its locks
    format_v1.py   the format-1 reader and scan, kept for upgrades; telling the formats apart
    ledger.py      ledger.json: load, atomic write
    retention.py   what leaves: settled segments, max_bytes, max_age_s, and how drops are counted
    writer.py      append: group commit, write + fdatasync to the active segment
    recovery.py    opening (the active segment's scan, cutting a torn or damaged tail) and quarantine
    reader.py      cursors and the format-2 segment reader
    __init__.py    this design, and ``DiskBuffer``, which ties them together
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from edge_gateway.buffer.base import AckLedger, BufferStats, Quarantined, Record
from edge_gateway.buffer.disk.format_v1 import V1_HEADER, segment_format
from edge_gateway.buffer.disk.ledger import LEDGER, Ledger
from edge_gateway.buffer.disk.reader import has_unread, read_records
from edge_gateway.buffer.disk.record import HEADER, LENGTH, NO_END, chain, frame
from edge_gateway.buffer.disk.recovery import open_directory, quarantine
from edge_gateway.buffer.disk.retention import delete_settled, expire
from edge_gateway.buffer.disk.state import QUARANTINE, SUFFIX, ActiveFile, Cursor, Segment, State
from edge_gateway.buffer.disk.writer import Writer
from edge_gateway.model import Reading

__all__ = [
    "HEADER",
    "LEDGER",
    "LENGTH",
    "QUARANTINE",
    "SUFFIX",
    "V1_HEADER",
    "DiskBuffer",
    "chain",
    "frame",
    "segment_format",
]

_log = logging.getLogger(__name__)

# Bytes read from a segment at a time. Looked up here at every read, so a test can make it small.
_READ_CHUNK = 4 << 20


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
        self._state = State(path)
        self._active = ActiveFile()
        self._ledger = Ledger(self._state)
        self._writer = Writer(self._state, self._active, self._ledger, self)  # reads the settings above live
        open_directory(self._state, list(destinations), self._ledger)

    async def append(self, readings: Sequence[Reading]) -> None:
        await self._writer.append(readings)

    async def read(
        self, dest: str, max_records: int, timeout_s: float, *, lane: str = "", end_seq: int | None = None
    ) -> list[Record]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        end = end_seq if end_seq is not None else NO_END
        while True:
            if has_unread(self._state, dest, lane, end):
                records = await asyncio.to_thread(self._read, dest, lane, max_records, end)
                if records:
                    return records
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            event = self._writer.data_event
            try:
                async with asyncio.timeout(remaining):
                    await event.wait()
            except TimeoutError:
                return []

    def _read(self, dest: str, lane: str, max_records: int, end: int) -> list[Record]:
        return read_records(
            self._state, dest, lane, max_records, end, chunk_bytes=_READ_CHUNK, quarantine=self._quarantine
        )

    def _quarantine(self, seg: Segment, why: str) -> None:
        quarantine(self._state, self._active, self._ledger, seg, why)

    def ack(self, dest: str, first: int, last: int) -> None:
        state = self._state
        with state.meta:
            state.acks[dest].add(first, last)
            state.ledger_dirty = True

    def rewind(self, dest: str) -> None:
        state = self._state
        with state.meta:
            for key in [k for k in state.cursors if k[0] == dest and k[1]]:
                del state.cursors[key]
            state.cursors[dest, ""] = Cursor(state.acks[dest].acked_through + 1)

    def seek(self, dest: str, seq: int, *, lane: str = "") -> None:
        state = self._state
        with state.meta:
            state.cursors[dest, lane] = Cursor(max(seq, state.acks[dest].acked_through + 1))

    def add_destination(self, dest: str) -> None:
        state = self._state
        with state.meta:
            if dest in state.acks:
                return
            state.acks[dest] = AckLedger(state.next_seq - 1)  # the head: what is appended from now on
            state.cursors[dest, ""] = Cursor(state.next_seq)
            state.ledger_dirty = True
        _log.info("buffer: destination %r added; it starts at seq %d", dest, state.next_seq)

    def remove_destination(self, dest: str) -> None:
        state = self._state
        with state.meta:
            if state.acks.pop(dest, None) is None:
                return
            for key in [k for k in state.cursors if k[0] == dest]:
                del state.cursors[key]
            state.ledger_dirty = True
        _log.info("buffer: destination %r removed; what only it still needed will be deleted", dest)

    async def maintain(self) -> None:
        await asyncio.to_thread(self._maintain)

    def _maintain(self) -> None:
        # Deleting settled segments first frees space even when the disk is too full for a ledger write;
        # it is safe before the acks are persisted (a reopened cursor skips to the oldest segment left).
        delete_settled(self._state)
        self._ledger.write()
        expire(self._state, self._active, self.max_age_s)

    def take_quarantined(self) -> list[Quarantined]:
        state = self._state
        with state.meta:
            taken, state.quarantined = state.quarantined, []
        return taken

    def stats(self) -> BufferStats:
        state = self._state
        with state.meta:
            s = state.stats
            last = state.next_seq - 1
            s.bytes = state.total_bytes()
            s.segments = len(state.segments)
            s.unacked = {d: last - a.acked_count_between(1, last) for d, a in state.acks.items()}
            floor = min((a.acked_through for a in state.acks.values()), default=last)
            s.records = last - floor
            return BufferStats(s.records, s.bytes, s.segments, s.appended, s.last_seq, dict(s.unacked), dict(s.dropped))

    async def close(self) -> None:
        await self._writer.wait_committed()
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._active.lock:
            self._active.close()
        try:
            self._ledger.write()
        except OSError as exc:
            # A clean stop must complete (the audit trail, the other stages): the next start writes the ledger.
            _log.warning(
                "buffer: %s could not be written at close (%s %s); the acks since it was last written will be "
                "re-sent after the restart (at-least-once), and it is written at the next start",
                self.path / LEDGER,
                errno.errorcode.get(exc.errno or 0, "?"),
                exc.strerror,
            )

    def _close_fd(self) -> None:
        """Close the active segment's descriptor, as the kernel does for a killed process (the tests use it)."""
        self._active.close()
