"""Data provenance: which configuration produced which readings, and what each alias is at the PLC.

- **Epochs**: every configuration the gateway runs gets the sequence numbers from the first one appended
  after it took effect: ``[(first_seq, config_hash), ...]``, kept in ``<data_dir>/provenance-epochs.json``
  (atomic writes) so a backlog from before a change keeps its own hash across restarts. The publisher cuts
  batches at epoch boundaries and every IoT Core message carries ``"cfg"``: the hash of the configuration
  that collected its readings (docs/message-format.md). Epochs wholly older than the buffer's oldest record
  are pruned.
- **Declarations**: when an epoch starts, the gateway records a ``provenance.declared`` audit entry per
  source (split into parts of at most ``POINTS_PER_PART`` points, so each stays far below the 128 KB MQTT
  limit): ``{"config_hash", "from_seq", "source", "type", "endpoint", "points": {alias: identity},
  "part", "parts"}``. The identity is the point's own configuration without its alias (OPC UA: the node
  id; Modbus: unit, table, address, data type, orders, scale…). The audit trail publishes it, at least
  once, to the audit topic: the per-alias dictionary is sent when it changes, not in every message, and a
  record in the cloud resolves to a PLC address through (gateway, cfg) → declaration → alias.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_gateway.buffer.base import Record
from edge_gateway.config.model import GatewayConfig, SourceConfig
from edge_gateway.util.files import OWNER_GROUP, write_json_durably

_log = logging.getLogger(__name__)

POINTS_PER_PART = 500
_ENDPOINT_KEYS = ("endpoint", "host", "port", "serial", "device", "unit_id", "transport")


def _points(source: dict[str, Any]) -> dict[str, Any]:
    """alias -> identity for every point of a source document (any source type; a group's or device's
    own unit id, host or port is part of its points' identity)."""
    out: dict[str, Any] = {}

    def walk(value: Any, inherited: dict[str, Any]) -> None:  # noqa: ANN401 - a JSON document
        if isinstance(value, list):
            for item in value:
                walk(item, inherited)
        elif isinstance(value, dict):
            if "alias" in value:
                out[str(value["alias"])] = inherited | {k: v for k, v in value.items() if k != "alias"}
                return
            scope = inherited | {k: v for k, v in value.items() if k in _ENDPOINT_KEYS}
            for child in value.values():
                walk(child, scope)

    for child in source.values():
        walk(child, {})
    return out


def declarations(config: GatewayConfig, config_hash: str, from_seq: int) -> list[dict[str, Any]]:
    """The ``provenance.declared`` audit fields for ``config``, one or more per source."""
    out: list[dict[str, Any]] = []
    for source in config.sources:
        doc = _source_doc(source)
        points = sorted(_points(doc).items())
        endpoint = {k: doc[k] for k in _ENDPOINT_KEYS if k in doc}
        parts = [points[i : i + POINTS_PER_PART] for i in range(0, len(points), POINTS_PER_PART)] or [[]]
        for i, part in enumerate(parts, start=1):
            out.append(
                {
                    "config_hash": config_hash,
                    "from_seq": from_seq,
                    "source": source.name,
                    "type": source.type,
                    "endpoint": endpoint,
                    "points": dict(part),
                    "part": i,
                    "parts": len(parts),
                }
            )
    return out


def _source_doc(source: SourceConfig) -> dict[str, Any]:
    doc: dict[str, Any] = source.model_dump(mode="json", exclude_none=True)
    # Secrets never leave the device, not even by name of field.
    for key in list(doc):
        if "password" in key or "secret" in key:
            doc.pop(key)
    return doc


class Epochs:
    """``[(first_seq, config_hash)]`` in seq order, persisted at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._firsts: list[int] = []
        self._hashes: list[str] = []
        try:
            for first, digest in json.loads(path.read_text(encoding="utf-8")):
                self._firsts.append(int(first))
                self._hashes.append(str(digest))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError) as exc:
            _log.warning("provenance epochs %s unreadable (%s): starting anew; older backlog has no cfg", path, exc)
            self._firsts, self._hashes = [], []

    @property
    def current(self) -> str | None:
        return self._hashes[-1] if self._hashes else None

    def start(self, first_seq: int, config_hash: str) -> bool:
        """Readings from ``first_seq`` on come from ``config_hash``; False if that is already the current one."""
        if self.current == config_hash:
            return False
        if self._firsts and first_seq <= self._firsts[-1]:  # nothing appended under the previous one
            self._firsts.pop()
            self._hashes.pop()
            if self.current == config_hash:
                self._save()
                return False
        self._firsts.append(first_seq)
        self._hashes.append(config_hash)
        self._save()
        return True

    def hash_for(self, seq: int) -> str | None:
        i = bisect.bisect_right(self._firsts, seq) - 1
        return self._hashes[i] if i >= 0 else None

    def split(self, records: Sequence[Record]) -> list[tuple[str | None, Sequence[Record]]]:
        """``records`` (in seq order) cut where the epoch changes, each part with its hash."""
        if not records:
            return []
        parts: list[tuple[str | None, Sequence[Record]]] = []
        start = 0
        current = self.hash_for(records[0].seq)
        i = bisect.bisect_right(self._firsts, records[0].seq)
        while i < len(self._firsts) and self._firsts[i] <= records[-1].seq:
            cut = start + _first_at_or_after(records[start:], self._firsts[i])
            if cut > start:
                parts.append((current, records[start:cut]))
            start, current = cut, self._hashes[i]
            i += 1
        parts.append((current, records[start:]))
        return parts

    def prune(self, oldest_seq: int) -> None:
        """Forget epochs that ended before ``oldest_seq`` (no record of theirs is left)."""
        keep = max(0, bisect.bisect_right(self._firsts, oldest_seq) - 1)
        if keep:
            del self._firsts[:keep]
            del self._hashes[:keep]
            self._save()

    def _save(self) -> None:
        epochs = [[a, b] for a, b in zip(self._firsts, self._hashes, strict=True)]
        write_json_durably(self.path, epochs, mode=OWNER_GROUP)  # a GxP record auditors read


def _first_at_or_after(records: Sequence[Record], seq: int) -> int:
    lo, hi = 0, len(records)
    while lo < hi:
        mid = (lo + hi) // 2
        if records[mid].seq < seq:
            lo = mid + 1
        else:
            hi = mid
    return lo
