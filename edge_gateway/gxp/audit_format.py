"""The audit trail's stored form: one entry per line, canonical JSON, SHA-256 chained (docs in ``audit``).

Shared by the writer (``audit``) and the checker (``audit_verify``); nothing here touches a file but
``trail_files``, which lists them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_gateway.errors import StorageError
from edge_gateway.util.jsondoc import canonical

GENESIS = "0" * 64
PREFIX = "audit-"
SUFFIX = ".jsonl"
_FILE = re.compile(r"^audit-(\d{8})\.jsonl$")
_KEYS = frozenset({"seq", "time", "time_ns", "clock", "event", "fields", "prev", "hash"})


class AuditError(StorageError):
    """The trail cannot be opened or written; the message says which file and what to do."""

    retryable = False


def entry_hash(doc: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in doc.items() if k != "hash"})).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    time: str
    time_ns: int
    clock: str
    event: str
    fields: dict[str, Any]
    prev: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "time_ns": self.time_ns,
            "clock": self.clock,
            "event": self.event,
            "fields": self.fields,
            "prev": self.prev,
            "hash": self.hash,
        }

    def to_json(self) -> bytes:
        """The entry exactly as stored (without the newline): also the audit topic's message payload."""
        return canonical(self.as_dict())

    @classmethod
    def parse(cls, line: bytes) -> AuditEntry:
        """The entry on a stored line; ``ValueError`` saying why it is not a valid, untouched entry."""
        try:
            doc = json.loads(line)
        except ValueError as exc:
            msg = f"not valid JSON ({exc})"
            raise ValueError(msg) from exc
        if not isinstance(doc, dict) or set(doc) != _KEYS:
            msg = f"not an audit entry (keys must be {sorted(_KEYS)})"
            raise ValueError(msg)
        if not (
            isinstance(doc["seq"], int)
            and isinstance(doc["time_ns"], int)
            and isinstance(doc["fields"], dict)
            and all(isinstance(doc[k], str) for k in ("time", "clock", "event", "prev", "hash"))
        ):
            msg = "an audit entry key has the wrong type"
            raise ValueError(msg)
        if entry_hash(doc) != doc["hash"]:
            msg = "its hash does not match its content (the entry was changed after it was written)"
            raise ValueError(msg)
        if canonical(doc) != line:
            msg = "its bytes are not the canonical form of its content (the line was edited)"
            raise ValueError(msg)
        return cls(
            doc["seq"], doc["time"], doc["time_ns"], doc["clock"], doc["event"], doc["fields"], doc["prev"], doc["hash"]
        )


def file_name(index: int) -> str:
    return f"{PREFIX}{index:08d}{SUFFIX}"


def trail_files(directory: Path) -> list[tuple[int, Path]]:
    """The trail's files, oldest first."""
    try:
        paths = list(directory.iterdir())
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), p) for p in paths if (m := _FILE.match(p.name))]
    return sorted(found)


def claimed_seq(line: bytes) -> int | None:
    m = re.search(rb"\"seq\"\s*:\s*(\d+)", line)
    return int(m.group(1)) if m else None
