"""Append-only, tamper-evident audit trail (GxP / 21 CFR Part 11 style): JSON lines, hash-chained.

On disk
-------
A directory of files ``audit-00000001.jsonl``, ``audit-00000002.jsonl``, … (8-digit index, oldest first).
Each line is one entry, UTF-8 JSON in canonical form (keys sorted, no spaces, ``allow_nan=False``)::

    {"clock":"synchronised","event":"config.applied","fields":{...},"hash":"<hex>","prev":"<hex>",
     "seq":42,"time":"2026-11-29T19:23:21.123456Z","time_ns":1795987401123456789}

- ``seq`` counts from 1 across all files, with no gap.
- ``time`` (UTC, ISO 8601, microseconds) and ``time_ns`` (ns since the epoch) are the gateway's clock when
  the entry was written; ``clock`` is its state then: ``synchronised``, ``unsynchronised`` (the kernel says
  NTP/PTP is not in sync: the time may be wrong) or ``unknown`` (not Linux).
- ``prev`` is the ``hash`` of the entry before; the very first entry has 64 zeros (``GENESIS``).
- ``hash`` = SHA-256 (hex) of the canonical JSON of the entry *without* its ``hash`` key. Anyone can
  recompute it: ``sha256(json.dumps({k: v for k, v in e.items() if k != "hash"}, sort_keys=True,
  separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode())``.

Invariants: one writer per directory (``.writer.lock``, an ``flock`` released when the process dies; a
second ``AuditTrail`` on the directory raises ``AuditError``); an entry is written with one ``write`` of
the whole line followed by ``fsync`` before ``append`` returns (durable); nothing is ever rewritten in
place; an append whose file was deleted, moved or replaced while the writer ran fails (``AuditError``)
rather than write into a file no one will read. Rotation: before an append that would
take the current file past ``max_file_bytes``, a new file is started (directory fsync'd); its first entry's
``prev`` is the hash of the previous file's last entry, so the chain runs across files. Old files are kept
(``max_files=None``); with ``max_files=N`` the oldest are deleted beyond N, which is only for devices
without an archive job: normally archiving (copying the files off the device, then deleting them) is the
archive job's, see docs/gxp.md. ``verify`` of a directory whose older files were archived away still
works from the first remaining file and reports that the chain starts mid-way (``starts_midway``, with
the first seq and its ``prev``), which the archive, holding the earlier files, can close.

Torn tail: a crash during an append can leave the last file ending in an incomplete line; opening the
trail cuts it off and records the cut on the chain (``TORN_TAIL_REMOVED``): see ``audit_recover``.

Module split: the stored form (``AuditEntry``, ``entry_hash``, file names) is in ``audit_format``, the
checker (``verify``, ``VerifyResult``) in ``audit_verify``, the event names and their fields
(``changed_paths``, ``clock_state``) in ``audit_events``, the reader (``read_entries``) in ``audit_read``,
where a writer starts and the torn-tail cut in ``audit_recover``; all are re-exported here. This module
is the writer: appends, rotation, the writability check.

Event names match ``^[a-z][a-z0-9_]*(\\.[a-z][a-z0-9_]*)+$``. ``append`` blocks (write + fsync): from
asyncio, call it through ``asyncio.to_thread``. It is thread-safe; listeners added with
``add_listener`` are called after every append, on the appending thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from edge_gateway.gxp.audit_events import (
    BUFFER_QUARANTINED,
    CERTIFICATE_CHANGED,
    CONFIG_APPLIED,
    CONFIG_REJECTED,
    CONFIG_ROLLED_BACK,
    EVENT,
    GATEWAY_STARTED,
    GATEWAY_STOPPED,
    TORN_TAIL_REMOVED,
    TRUST_LIST_CHANGED,
    changed_paths,
    clock_state,
)
from edge_gateway.gxp.audit_format import (
    GENESIS,
    PREFIX,
    SUFFIX,
    AuditEntry,
    AuditError,
    entry_hash,
    file_name,
    trail_files,
)
from edge_gateway.gxp.audit_read import read_entries
from edge_gateway.gxp.audit_recover import recover
from edge_gateway.gxp.audit_verify import BrokenEntry, TornTail, VerifyResult, verify
from edge_gateway.util.files import DIR_OWNER_GROUP, OWNER_GROUP, ensure_dir, fsync_dir, open_append
from edge_gateway.util.jsondoc import canonical

__all__ = [
    "BUFFER_QUARANTINED",
    "CERTIFICATE_CHANGED",
    "CONFIG_APPLIED",
    "CONFIG_REJECTED",
    "CONFIG_ROLLED_BACK",
    "GATEWAY_STARTED",
    "GATEWAY_STOPPED",
    "GENESIS",
    "PREFIX",
    "SUFFIX",
    "TORN_TAIL_REMOVED",
    "TRUST_LIST_CHANGED",
    "AuditEntry",
    "AuditError",
    "AuditTrail",
    "BrokenEntry",
    "TornTail",
    "VerifyResult",
    "changed_paths",
    "clock_state",
    "entry_hash",
    "file_name",
    "read_entries",
    "trail_files",
    "verify",
]

_log = logging.getLogger(__name__)

LOCK_FILE = ".writer.lock"
MIN_FILE_BYTES = 4096


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AuditTrail:
    """The writer (one per directory and process) and reader of an audit trail directory."""

    def __init__(self, directory: Path, *, max_file_bytes: int = 16 << 20, max_files: int | None = None) -> None:
        if max_file_bytes < MIN_FILE_BYTES:
            msg = f"max_file_bytes must be at least {MIN_FILE_BYTES}, got {max_file_bytes}"
            raise ValueError(msg)
        if max_files is not None and max_files < 1:
            msg = f"max_files must be None (keep all) or >= 1, got {max_files}"
            raise ValueError(msg)
        self.directory = directory
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self._lock = threading.Lock()
        self._listeners: list[Callable[[AuditEntry], None]] = []
        ensure_dir(directory, DIR_OWNER_GROUP)
        # One writer per directory: a second one would fork the chain.
        self._lock_fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, OWNER_GROUP)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._index, self._seq, self._hash, torn = recover(directory)
        except BlockingIOError as exc:
            os.close(self._lock_fd)
            msg = f"audit trail {directory} is open for writing by another process (pid in {LOCK_FILE})"
            raise AuditError(msg) from exc
        except BaseException:
            os.close(self._lock_fd)
            raise
        os.ftruncate(self._lock_fd, 0)
        os.write(self._lock_fd, f"{os.getpid()}\n".encode())
        path = self.directory / file_name(self._index)
        self._fd = open_append(path, OWNER_GROUP)
        self._size = os.fstat(self._fd).st_size
        if self._size == 0:
            fsync_dir(self.directory)  # a file just created: its name must survive a power cut with its entries
        if torn is not None:
            _log.warning(
                "audit trail %s: cut an incomplete last line (%d bytes at offset %d): an append was interrupted",
                path,
                torn["bytes"],
                torn["offset"],
            )
            self.append(TORN_TAIL_REMOVED, **torn)

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def last_hash(self) -> str:
        return self._hash

    def add_listener(self, listener: Callable[[AuditEntry], None]) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[AuditEntry], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def append(self, event: str, **fields: Any) -> AuditEntry:  # noqa: ANN401 - JSON values
        """Write one entry and fsync it; returns it once durable. ``AuditError`` if it cannot be written."""
        if not EVENT.match(event):
            msg = f"audit event name {event!r} must look like 'area.what' (lower case, dots)"
            raise ValueError(msg)
        # Through JSON and back: what is hashed is exactly what a reader will parse (Path -> str etc.).
        clean = json.loads(json.dumps(fields, default=str, allow_nan=False))
        with self._lock:
            now = time.time_ns()
            doc: dict[str, Any] = {
                "seq": self._seq + 1,
                "time": _iso(now),
                "time_ns": now,
                "clock": clock_state(),
                "event": event,
                "fields": clean,
                "prev": self._hash,
            }
            doc["hash"] = entry_hash(doc)
            line = canonical(doc) + b"\n"
            if self._size > 0 and self._size + len(line) > self.max_file_bytes:
                self._rotate()
            self._still_in_place()
            try:
                view = memoryview(line)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                os.fsync(self._fd)
            except OSError as exc:
                # A partial line may be on disk: it is cut (and noted) when the trail is next opened.
                msg = f"cannot write the audit trail in {self.directory}: {exc}"
                raise AuditError(msg) from exc
            self._size += len(line)
            self._seq += 1
            self._hash = doc["hash"]
            entry = AuditEntry(doc["seq"], doc["time"], now, doc["clock"], event, clean, doc["prev"], doc["hash"])
        for listener in list(self._listeners):
            listener(entry)
        return entry

    def _still_in_place(self) -> None:
        """``AuditError`` if the file this writer appends to is no longer the one at its path (deleted,
        moved or replaced while the gateway ran): what would be written there would be lost."""
        path = self.directory / file_name(self._index)
        try:
            here, open_ = path.stat(), os.fstat(self._fd)
        except OSError as exc:
            msg = f"cannot write the audit trail in {self.directory}: {path.name} is gone ({exc})"
            raise AuditError(msg) from exc
        if (here.st_dev, here.st_ino) != (open_.st_dev, open_.st_ino):
            msg = f"cannot write the audit trail in {self.directory}: {path.name} was replaced while the gateway ran"
            raise AuditError(msg)

    def check_writable(self) -> None:
        """``AuditError`` saying why unless the next append can be expected to succeed: the trail is open,
        its file is still in place, and the directory takes a 4 KiB write with fsync (disk full, read-only
        or failing storage). It writes no entry."""
        with self._lock:
            if self._fd < 0:
                msg = f"the audit trail in {self.directory} is closed"
                raise AuditError(msg)
            self._still_in_place()
            probe = self.directory / ".probe"
            try:
                fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                try:
                    os.write(fd, bytes(4096))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                    probe.unlink(missing_ok=True)
            except OSError as exc:
                msg = f"cannot write the audit trail in {self.directory}: {exc}"
                raise AuditError(msg) from exc

    def _rotate(self) -> None:
        os.close(self._fd)
        self._index += 1
        path = self.directory / file_name(self._index)
        self._fd = open_append(path, OWNER_GROUP)
        self._size = 0
        fsync_dir(self.directory)
        if self.max_files is not None:
            files = trail_files(self.directory)
            for _, old in files[: max(0, len(files) - self.max_files)]:
                old.unlink()
                _log.info("audit trail: deleted %s (max_files %d)", old, self.max_files)
            fsync_dir(self.directory)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                os.close(self._lock_fd)  # releases the writer's lock
                self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def entries(self, since: datetime | None = None, *, after_seq: int | None = None) -> Iterator[AuditEntry]:
        """Stored entries, oldest first: those written at or after ``since`` and with seq > ``after_seq``.

        Reads lazily, file by file (files wholly before ``after_seq`` are skipped). An incomplete last
        line is not an entry and is skipped; a line that is not a valid entry raises ``AuditError``
        (run ``verify`` for the whole story). Hash links are not checked here: that is ``verify``'s job.
        """
        return read_entries(self.directory, since, after_seq=after_seq)
