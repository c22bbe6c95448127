"""Dead-letter file: what the cloud can never take, kept locally instead of retried forever or dropped.

Contract:
- ``write(entries)`` appends one JSON object per line to ``<path>`` (``dead-letter.jsonl``) and fdatasyncs
  before it returns (and fsyncs the directory when it created or rotated the file): a dead-lettered record
  is acked in the buffer only once it is on disk here, power cut included.
- Bounded: when the file would pass ``max_file_bytes`` it is rotated (``.1`` is the newest old file, up to
  ``max_files`` old files; the oldest is deleted). Total disk use is at most
  ``(max_files + 1) * max_file_bytes`` plus one batch.
- Every entry and every byte is counted; an entry that cannot be written (disk full, I/O error) is counted
  in ``failed`` and logged once per episode. It never raises: a broken dead-letter volume must not stop the
  drain of data the cloud does take.
- Each line carries ``at`` (ISO 8601 UTC, when it was written), ``dest``, ``reason`` and the data: either one
  reading (``kind`` "reading") or one refused message (``kind`` "message", with its topic and payload).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from edge_gateway.buffer.base import Record
from edge_gateway.publish.encode.iotcore import Message
from edge_gateway.util.files import DIR_OWNER_GROUP, OWNER_GROUP, ensure_dir, fsync_dir, open_append

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class DeadLetterStats:
    entries: int = 0  # written since start
    bytes: int = 0
    rotations: int = 0
    discarded: int = 0  # entries deleted with the oldest file by a rotation
    failed: int = 0  # could not be written (counted, logged)


def reading_entry(dest: str, record: Record, reason: str) -> dict[str, object]:
    r = record.reading
    return {
        "kind": "reading",
        "dest": dest,
        "reason": reason,
        "seq": record.seq,
        "source": r.source,
        "point": r.point,
        "value": r.value,
        "quality": r.quality.value,
        "status": r.status,
        "ts_ns": r.ts_ns,
    }


def message_entry(dest: str, msg: Message, reason: str) -> dict[str, object]:
    return {
        "kind": "message",
        "dest": dest,
        "reason": reason,
        "topic": msg.topic,
        "first_seq": msg.first_seq,
        "last_seq": msg.last_seq,
        "points": msg.points,
        "payload": msg.payload.decode("ascii", errors="backslashreplace"),
    }


class DeadLetterFile:
    def __init__(self, path: Path, *, max_file_bytes: int = 16 << 20, max_files: int = 4) -> None:
        self.path = path
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.stats = DeadLetterStats()
        self._lock = threading.Lock()
        self._failing = False
        self._tail_checked = False  # the first write of this process checks for a torn last line

    def write(self, entries: Iterable[Mapping[str, object]]) -> None:
        at = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        lines = [json.dumps({"at": at, **e}, separators=(",", ":"), allow_nan=True) + "\n" for e in entries]
        if not lines:
            return
        data = "".join(lines).encode("utf-8", "backslashreplace")
        with self._lock:
            try:
                self._write(data)
            except OSError as exc:
                self.stats.failed += len(lines)
                if not self._failing:
                    self._failing = True
                    _log.error(
                        "dead-letter file %s cannot be written (%s): %d entr(ies) lost; free space or fix the volume",
                        self.path,
                        exc,
                        len(lines),
                    )
                return
        self.stats.entries += len(lines)
        self.stats.bytes += len(data)
        if self._failing:
            self._failing = False
            _log.info("dead-letter file %s is writable again", self.path)

    def _write(self, data: bytes) -> None:
        ensure_dir(self.path.parent, DIR_OWNER_GROUP)
        created = False
        try:
            size = self.path.stat().st_size
            if size and size + len(data) > self.max_file_bytes:
                self._rotate()
                created = True
        except FileNotFoundError:
            created = True
        if not created and not self._tail_checked:
            data = self._after_torn_line(data)
        self._tail_checked = True
        fd = open_append(self.path, OWNER_GROUP)
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fdatasync(fd)
        finally:
            os.close(fd)
        if created:
            # A new file's name (and a rotation's renames) survive a power cut only once the directory is
            # synced: until then the entries just written could vanish with the file.
            fsync_dir(self.path.parent)

    def _after_torn_line(self, data: bytes) -> bytes:
        """``data``, after a newline if the file ends in an incomplete line (a power cut during a write):
        the next entry must start a line of its own, or it would be lost in the torn one."""
        with self.path.open("rb") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return data
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return data
        _log.warning("dead-letter file %s ended in an incomplete line (a write cut short); it is closed", self.path)
        return b"\n" + data

    def _rotate(self) -> None:
        old = [self.path.with_name(f"{self.path.name}.{i}") for i in range(1, self.max_files + 1)]
        if self.max_files == 0:
            self.stats.discarded += self.path.read_bytes().count(b"\n")
            self.path.unlink()
        else:
            with contextlib.suppress(FileNotFoundError):
                self.stats.discarded += old[-1].read_bytes().count(b"\n")
                old[-1].unlink()
            for newer, older in zip(reversed(old[:-1]), reversed(old[1:]), strict=True):
                with contextlib.suppress(FileNotFoundError):
                    newer.replace(older)
            self.path.replace(old[0])
        self.stats.rotations += 1
        _log.warning(
            "dead-letter file %s rotated (%d byte limit, %d old file(s) kept)",
            self.path,
            self.max_file_bytes,
            self.max_files,
        )
