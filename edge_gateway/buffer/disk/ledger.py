"""ledger.json: the numbering, the acks and the active segment's checkpoint, across restarts.

    {"format": 1, "next_seq": N,
     "destinations": {name: {"acked_through": N, "acked_ranges": [[a, b], ...]}},
     "active": [first_seq, bytes, last_seq]}

Contract:
- Written whole or not at all: write-temp, fsync, rename, fsync-dir. One writer at a time (the commit thread,
  maintenance, a reader quarantining): they share the temp file, and the snapshot taken last is written last.
- Written only when something in it changed (``State.ledger_dirty``, or the active segment's committed prefix);
  a failed write leaves the state dirty for the next one. Losing the newest acks to a crash only re-delivers
  (at-least-once), never loses.
- ``active`` is written only for a non-empty format-2 active segment. A ledger that cannot be read is moved to
  quarantine/ and the buffer opens without it (everything held is re-sent); a malformed ``active`` entry is
  ignored on its own, never at the cost of the acks next to it.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import NamedTuple

from edge_gateway.buffer.base import AckLedger
from edge_gateway.buffer.disk.state import FORMAT_2, State, quarantine_path
from edge_gateway.util.files import DIR_OWNER_ONLY, OWNER_ONLY, write_durably

# The package's logger: log lines keep the logger name they had before disk.py became a package.
_log = logging.getLogger(__package__)

LEDGER = "ledger.json"


class Saved(NamedTuple):
    next_seq: int
    acks: dict[str, AckLedger]  # per destination
    checkpoint: list[int] | None  # the active segment's [first_seq, bytes, last_seq]


def load_ledger(directory: Path) -> Saved | None:
    """What ``directory``/ledger.json holds; None without one (or when it was unreadable and set aside)."""
    ledger_path = directory / LEDGER
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
        aside = quarantine_path(directory, ledger_path)
        ledger_path.replace(aside)
        _log.error(
            "buffer ledger %s is unreadable (%s); moved to %s; every buffered record will be re-sent",
            ledger_path,
            exc,
            aside,
        )
        return None
    return Saved(next_seq, acks, checkpoint)


def _checkpoint(value: object) -> list[int] | None:
    """The ledger's ``active`` entry, [first_seq, bytes, last_seq]; None when absent or malformed (only a
    shortcut at open: a bad one must not cost the acks next to it)."""
    if isinstance(value, list) and len(value) == 3 and all(type(x) is int for x in value):  # noqa: PLR2004
        return value
    return None


class Ledger:
    """Writes ``state`` to ledger.json."""

    def __init__(self, state: State) -> None:
        self._state = state
        self._lock = threading.Lock()  # ledger.json(.tmp): held during a ledger write
        self._checkpoint: list[int] | None = None  # the active segment's [first_seq, bytes, last_seq] in the ledger

    def write(self) -> None:
        state = self._state
        # One writer at a time (maintenance, the commit thread, a reader quarantining): they share the temp file,
        # and the snapshot taken last is the one written last.
        with self._lock:
            with state.meta:
                active = state.segments[-1] if state.segments else None
                # Lets the next open check the active segment's prefix with one CRC call instead of walking it.
                checkpoint = (
                    [active.first_seq, active.size, active.last_seq]
                    if active is not None and active.version == FORMAT_2 and active.count
                    else None
                )
                if not state.ledger_dirty and checkpoint == self._checkpoint:
                    return
                doc: dict[str, object] = {
                    "format": 1,
                    "next_seq": state.next_seq,
                    "destinations": {d: a.to_json() for d, a in state.acks.items()},
                }
                if checkpoint is not None:
                    doc["active"] = checkpoint
                state.ledger_dirty = False
            data = json.dumps(doc, separators=(",", ":")).encode()
            try:
                write_durably(state.directory / LEDGER, data, mode=OWNER_ONLY, dir_mode=DIR_OWNER_ONLY)
                self._checkpoint = checkpoint
            except OSError:
                with state.meta:
                    state.ledger_dirty = True  # written by the next maintain() or close()
                raise

    def try_write(self, when: str) -> None:
        try:
            self.write()
        except OSError as exc:
            _log.warning("buffer: could not write %s while %s (%s); retried at the next maintenance", LEDGER, when, exc)
