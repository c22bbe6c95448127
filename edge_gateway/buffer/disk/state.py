"""What the buffer knows about its directory, shared by its parts (writer, readers, retention, ledger, recovery).

Contract:
- ``State.meta`` guards everything in ``State``: the segment list, acks, cursors, numbering, stats, the
  ledger's dirty flag and the quarantines not yet taken. It is held briefly, also on the event loop, and never
  during a segment's file I/O.
- ``ActiveFile.lock`` guards the active segment's descriptor: held during write + fdatasync, and by whoever
  closes or moves that file. Locks are taken in the order ``ActiveFile.lock``, the ledger's lock, ``meta``.
- ``segments`` is in ``first_seq`` order and ``firsts`` holds the same numbers (for bisect); the last segment
  is the active one. A segment's ``size`` and ``last_seq`` describe its committed prefix only.
- The directory holds ``<first_seq:020d>.seg`` segments, ``ledger.json`` (ledger.py) and ``quarantine/``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

from edge_gateway.buffer.base import AckLedger, BufferStats, Quarantined, Record
from edge_gateway.util.files import DIR_OWNER_ONLY, ensure_dir

SUFFIX = ".seg"
QUARANTINE = "quarantine"
FORMAT_1, FORMAT_2 = 1, 2  # record formats (format_v1.py, record.py); only format 2 is written


@dataclass(slots=True)
class Segment:
    first_seq: int
    path: Path
    size: int  # committed bytes
    last_seq: int  # first_seq - 1 while empty
    mtime_s: float
    version: int | None = None  # record format, 1 or 2; None until read (only format 2 is appended to)

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1


@dataclass(slots=True)
class Cursor:
    next_seq: int
    # Where the next record was found last time, so sequential reads never rescan a segment.
    pos_segment: int = 0
    pos_offset: int = 0


# Moves a segment found damaged to quarantine/ and drops it; the second argument says what is wrong, and where.
Quarantine: TypeAlias = Callable[[Segment, str], None]


@dataclass(frozen=True, slots=True)
class Want:
    """One read in progress: what it asks for, where its records go, and how it reads."""

    records: list[Record]
    limit: int
    acks: AckLedger
    end: int  # stop before this seq
    chunk_bytes: int  # bytes read from a segment at a time (a record larger than that is read whole)
    quarantine: Quarantine

    def ended_early(self, seg: Segment, at: int, last: int, why: str) -> bool:
        """The file of ``seg`` ends before record ``at`` (``why`` says where), although it holds records up to
        ``last`` (its ``last_seq`` when the read reached it, with the size read: for a sealed segment the next
        segment's name tells): an SD card after a power cut, a full volume. When a record this read could hand
        out is missing, the segment is damaged: it is quarantined and True returned (the read goes on with the
        next segment). Numbers this destination acked are no loss to it (a former quarantine's gap): False, and
        the read steps past them."""
        if at > last:
            return False
        missing = self.acks.next_unacked(at)
        if missing > last or missing >= self.end:
            return False
        self.quarantine(seg, f"{why}: records {at}..{last} are missing")
        return True


class ActiveFile:
    """The active segment's open descriptor (None while closed) and the lock held while it is written."""

    __slots__ = ("fd", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()  # the active segment's file: held during write + fsync
        self.fd: int | None = None

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


@dataclass(slots=True, eq=False)
class State:
    directory: Path
    meta: threading.Lock = field(default_factory=threading.Lock)
    segments: list[Segment] = field(default_factory=list)
    firsts: list[int] = field(default_factory=list)
    acks: dict[str, AckLedger] = field(default_factory=dict)
    cursors: dict[tuple[str, str], Cursor] = field(default_factory=dict)  # (destination, lane)
    next_seq: int = 1
    stats: BufferStats = field(default_factory=BufferStats)
    ledger_dirty: bool = False  # acks, destinations or segments changed since the ledger was written
    quarantined: list[Quarantined] = field(default_factory=list)  # not yet taken (``DiskBuffer.take_quarantined``)

    def total_bytes(self) -> int:
        return sum(s.size for s in self.segments)


def quarantine_path(directory: Path, path: Path) -> Path:
    """Where ``path`` goes when it is set aside: quarantine/<name>.<timestamp> (the folder is created)."""
    qdir = directory / QUARANTINE
    ensure_dir(qdir, DIR_OWNER_ONLY)
    return qdir / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}"
