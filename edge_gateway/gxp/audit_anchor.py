"""The audit trail checked at start against the last entry the cloud acknowledged (docs/gxp.md, "Anchors").

Contract:
- The anchor is ``{"seq", "hash"}`` of the last entry the cloud acknowledged (PUBACK on the audit topic),
  written durably by the audit publisher after every acknowledgement, to ``anchor_path`` — a file *outside*
  the trail directory (``<data_dir>/audit-anchor.json``), so wiping the trail directory does not wipe it —
  and to the publisher's own ``published.json`` inside the directory (its resume position). At start the
  anchor file is read; when it is missing, ``published.json``.
- ``check(directory, anchor)`` → ``None`` when the entry with the anchor's seq is in the trail with the
  anchor's hash (or nothing was ever acknowledged, or that entry lies before the first file present:
  archived away, which ``verify`` reports as ``starts_midway``). Otherwise the discontinuity:
  ``{"expected": {seq, hash}, "found": {seq, hash} | None, "reason": str}`` — the entry is missing (the
  trail was wiped or truncated), has another hash (rewritten), or cannot be read (damaged).
- What to do with one is the recorder's (gxp/recorder.py): record an ``audit.discontinuity`` entry, report
  it in the status for the rest of the process's life, and move the anchor to the entry before it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from edge_gateway.gxp.audit_format import AuditError, claimed_seq, trail_files
from edge_gateway.gxp.audit_read import read_entries

_log = logging.getLogger(__name__)

DISCONTINUITY = "audit.discontinuity"
ANCHOR_FILE = "audit-anchor.json"


def load_anchor(*paths: Path) -> tuple[int, str] | None:
    """(seq, hash) from the first of ``paths`` that holds one; None if none does."""
    for path in paths:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            seq, digest = int(doc["seq"]), str(doc["hash"])
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _log.warning("audit anchor %s unreadable (%s): not used", path, exc)
            continue
        return seq, digest
    return None


def check(directory: Path, anchor: tuple[int, str] | None, last_seq: int) -> dict[str, Any] | None:
    """The discontinuity between the trail in ``directory`` (ending at ``last_seq``) and ``anchor``, or
    None if it holds. Reads only from the file that holds the anchor's seq on."""
    if anchor is None or anchor[0] < 1:
        return None
    seq, digest = anchor
    expected = {"seq": seq, "hash": digest}
    first = _first_seq(directory)
    if first is not None and first > 1 and seq < first:
        return None  # archived away: the archive holds it
    try:
        entry = _entry(directory, seq)
    except (AuditError, OSError) as exc:
        return {"expected": expected, "found": None, "reason": f"entry seq {seq} cannot be read: {exc}"}
    if entry is None:
        why = f"no entry seq {seq}: the trail ends at seq {last_seq} (wiped or truncated)"
        return {"expected": expected, "found": None, "reason": why}
    found = {"seq": entry[0], "hash": entry[1]}
    if entry[1] != digest:
        return {"expected": expected, "found": found, "reason": f"entry seq {seq} has another hash (rewritten)"}
    return None


def _first_seq(directory: Path) -> int | None:
    files = trail_files(directory)
    if not files:
        return None
    with files[0][1].open("rb") as f:
        return claimed_seq(f.readline())


def _entry(directory: Path, seq: int) -> tuple[int, str] | None:
    for entry in read_entries(directory, after_seq=seq - 1):
        return (entry.seq, entry.hash) if entry.seq == seq else None
    return None
