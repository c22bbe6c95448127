"""Where an audit trail writer starts: the newest file, its last entry, and a torn tail cut off.

Torn tail: a crash or power loss during an append can leave the last file ending in bytes with no newline.
``verify`` reports them as ``torn_tail`` (not counted as an entry, not an error: the append they belong
to never returned). Opening the trail (the gateway's start) cuts them off, fsyncs, and appends an
``audit.torn_tail_removed`` entry recording the file, offset, length, SHA-256 and text of what was cut, so
the cut is itself on the chain. A complete line that is not a valid entry is never cut: opening raises
``AuditError`` and ``verify`` names it (that is damage or tampering, for a person to look at).

``recover`` does the cut (only ever of the newest file, only of bytes after its last newline) and returns
what to record; appending the entry is the writer's (``AuditTrail``), which must hold the directory's
lock before calling it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from edge_gateway.gxp.audit_format import GENESIS, AuditEntry, AuditError, trail_files

_MAX_TORN_TEXT = 65536


def recover(directory: Path) -> tuple[int, int, str, dict[str, Any] | None]:
    """(file index, last seq, last hash, what was cut) from the newest file; cuts a torn tail."""
    files = trail_files(directory)
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
        return (index, *_last_of(path), torn)
    # The newest file is empty (a crash right after a rotation): it is used, and the chain goes on
    # from the last entry of the file before it, if any.
    if len(files) == 1:
        return index, 0, GENESIS, torn
    return (index, *_last_of(files[-2][1]), torn)


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
