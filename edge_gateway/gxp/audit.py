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
place. Rotation: before an append that would
take the current file past ``max_file_bytes``, a new file is started (directory fsync'd); its first entry's
``prev`` is the hash of the previous file's last entry, so the chain runs across files. Old files are kept
(``max_files=None``); with ``max_files=N`` the oldest are deleted beyond N, which is only for devices
without an archive job: normally archiving (copying the files off the device, then deleting them) is the
archive job's, see docs/gxp.md. ``verify`` of a directory whose older files were archived away still
works from the first remaining file and reports that the chain starts mid-way (``starts_midway``, with
the first seq and its ``prev``), which the archive, holding the earlier files, can close.

Torn tail: a crash or power loss during an append can leave the last file ending in bytes with no newline.
``verify`` reports them as ``torn_tail`` (not counted as an entry, not an error: the append they belong
to never returned). Opening the trail (the gateway's start) cuts them off, fsyncs, and appends an
``audit.torn_tail_removed`` entry recording the file, offset, length, SHA-256 and text of what was cut, so
the cut is itself on the chain. A complete line that is not a valid entry is never cut: opening raises
``AuditError`` and ``verify`` names it (that is damage or tampering, for a person to look at).

Events and their fields (``append(event, **fields)``; ``fields`` is any JSON object, these are the names
the gateway uses; ``changed_paths`` builds ``changed``)
------------------------------------------------------------------------------------------------------
- ``config.applied`` / ``config.rejected`` / ``config.rolled_back``: ``source`` ("file" | "shadow"),
  ``shadow_version`` (int | null), ``client_token`` (str | null), ``hash_before`` and ``hash_after`` (the
  ``sha256:…`` config hashes of ``edge_gateway.shadow_config.config_hash``; ``hash_after`` is the
  proposed config for a rejection), ``changed`` (list of dotted paths, ``sources.1.endpoint``),
  ``reasons`` (rejected: list of ``{"path", "message"}``), ``reason`` (rolled back: str).
- ``gateway.started``: ``version``, ``config_hash``, ``pid``; ``gateway.stopped``: ``reason``.
- ``certificate.changed``: ``role`` (device | ca | opcua), ``path``, ``fingerprint_before``,
  ``fingerprint_after`` (``sha256:…`` of the DER), ``subject``, ``not_after``.
- ``trust_list.changed``: ``path``, ``added``, ``removed`` (lists of fingerprints).
- ``buffer.quarantined``: ``segment``, ``reason``, ``quarantine_path``.
- ``audit.torn_tail_removed`` (written by the trail itself): ``file``, ``offset``, ``bytes``, ``sha256``,
  ``text``.

Module split: the stored form (``AuditEntry``, ``entry_hash``, file names) is in
``audit_format``, the checker (``verify``, ``VerifyResult``) in ``audit_verify``; both are re-exported here.

Event names match ``^[a-z][a-z0-9_]*(\\.[a-z][a-z0-9_]*)+$``. ``append`` blocks (write + fsync): from
asyncio, call it through ``asyncio.to_thread``. It is thread-safe; listeners added with
``add_listener`` are called after every append, on the appending thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

from edge_gateway.gxp.audit_format import (
    GENESIS,
    PREFIX,
    SUFFIX,
    AuditEntry,
    AuditError,
    claimed_seq,
    entry_hash,
    file_name,
    trail_files,
)
from edge_gateway.gxp.audit_verify import BrokenEntry, TornTail, VerifyResult, verify
from edge_gateway.util.clock import clock_synchronised
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

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LOCK_FILE = ".writer.lock"
_EVENT = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_MAX_TORN_TEXT = 65536
MIN_FILE_BYTES = 4096

CONFIG_APPLIED = "config.applied"
CONFIG_REJECTED = "config.rejected"
CONFIG_ROLLED_BACK = "config.rolled_back"
GATEWAY_STARTED = "gateway.started"
GATEWAY_STOPPED = "gateway.stopped"
CERTIFICATE_CHANGED = "certificate.changed"
TRUST_LIST_CHANGED = "trust_list.changed"
BUFFER_QUARANTINED = "buffer.quarantined"
TORN_TAIL_REMOVED = "audit.torn_tail_removed"


def changed_paths(before: Any, after: Any, prefix: str = "") -> list[str]:  # noqa: ANN401 - JSON documents
    """Dotted paths (list items by index) where two JSON documents differ: the ``changed`` field."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        out: list[str] = []
        for key in sorted(set(before) | set(after), key=str):
            out += changed_paths(before.get(key), after.get(key), f"{prefix}{key}.")
        return out
    if isinstance(before, list) and isinstance(after, list):
        out = []
        for i in range(max(len(before), len(after))):
            if i >= len(before) or i >= len(after):
                out.append(f"{prefix}{i}")  # an item added or removed at the end
            else:
                out += changed_paths(before[i], after[i], f"{prefix}{i}.")
        return out
    return [] if before == after else [prefix.rstrip(".") or "(document)"]


def clock_state() -> str:
    synced = clock_synchronised()
    return "unknown" if synced is None else ("synchronised" if synced else "unsynchronised")


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        directory.mkdir(parents=True, exist_ok=True)
        # One writer per directory: a second one would fork the chain.
        self._lock_fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._index, self._seq, self._hash, torn = self._recover()
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
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._size = os.fstat(self._fd).st_size
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

    def _recover(self) -> tuple[int, int, str, dict[str, Any] | None]:
        """(file index, last seq, last hash, what was cut) from the newest file; cuts a torn tail."""
        files = trail_files(self.directory)
        if not files:
            return 1, 0, GENESIS, None
        index, path = files[-1]
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        torn: dict[str, Any] | None = None
        if end < len(data):
            cut = data[end:]
            torn = {
                "file": path.name,
                "offset": end,
                "bytes": len(cut),
                "sha256": hashlib.sha256(cut).hexdigest(),
                "text": cut[:_MAX_TORN_TEXT].decode("utf-8", "backslashreplace"),
            }
            with path.open("r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        if end > 0:
            return (index, *self._last_of(path), torn)
        # The newest file is empty (a crash right after a rotation): it is used, and the chain goes on
        # from the last entry of the file before it, if any.
        if len(files) == 1:
            return index, 0, GENESIS, torn
        return (index, *self._last_of(files[-2][1]), torn)

    @staticmethod
    def _last_of(path: Path) -> tuple[int, str]:
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            msg = (
                f"audit trail file {path} has an incomplete last line but is not the newest file: "
                "run `edge-gateway audit verify`"
            )
            raise AuditError(msg)
        start = data.rfind(b"\n", 0, end - 1) + 1
        lineno = data.count(b"\n", 0, start) + 1
        try:
            entry = AuditEntry.parse(data[start : end - 1])
        except ValueError as exc:
            msg = (
                f"the last entry of audit trail file {path} (line {lineno}) is not valid: {exc}. The trail cannot "
                "be extended; run `edge-gateway audit verify`, archive the directory and move it aside to start "
                "a new chain"
            )
            raise AuditError(msg) from exc
        return entry.seq, entry.hash

    def add_listener(self, listener: Callable[[AuditEntry], None]) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[AuditEntry], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def append(self, event: str, **fields: Any) -> AuditEntry:  # noqa: ANN401 - JSON values
        """Write one entry and fsync it; returns it once durable. ``AuditError`` if it cannot be written."""
        if not _EVENT.match(event):
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

    def _rotate(self) -> None:
        os.close(self._fd)
        self._index += 1
        path = self.directory / file_name(self._index)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._size = 0
        _fsync_dir(self.directory)
        if self.max_files is not None:
            files = trail_files(self.directory)
            for _, old in files[: max(0, len(files) - self.max_files)]:
                old.unlink()
                _log.info("audit trail: deleted %s (max_files %d)", old, self.max_files)
            _fsync_dir(self.directory)

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


def read_entries(
    directory: Path, since: datetime | None = None, *, after_seq: int | None = None
) -> Iterator[AuditEntry]:
    since_ns = None if since is None else (since - _EPOCH) // timedelta(microseconds=1) * 1000
    files = trail_files(directory)
    start = 0
    if after_seq is not None:
        # Skip whole files whose successor starts at or before the first wanted seq.
        for i in range(1, len(files)):
            first = _first_seq(files[i][1])
            if first is not None and first <= after_seq + 1:
                start = i
    for _, path in files[start:]:
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.endswith(b"\n"):
                    break
                try:
                    entry = AuditEntry.parse(raw[:-1])
                except ValueError as exc:
                    msg = f"audit trail {path.name} line {lineno}: {exc}; run `edge-gateway audit verify`"
                    raise AuditError(msg) from exc
                if after_seq is not None and entry.seq <= after_seq:
                    continue
                if since_ns is not None and entry.time_ns < since_ns:
                    continue
                yield entry


def _first_seq(path: Path) -> int | None:
    with path.open("rb") as f:
        line = f.readline()
    return claimed_seq(line) if line.endswith(b"\n") else None
