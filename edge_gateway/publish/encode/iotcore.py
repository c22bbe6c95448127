"""IoT Core batch encoding, format version 1 (documented in docs/message-format.md).

One message per source per batch, on the destination's topic template (``{thing}``, ``{source}``)::

    {"v":1,"gw":"<thing>","cfg":"sha256:<hex>","src":"<source>","seq":[first,last],"n":<points>,
     "t0":<ms since epoch>,"p":{"<alias>":[[<dt ms>,<value>], [<dt ms>,<value>,"<quality>",<status>], ...], ...}}

- ``cfg`` (provenance, optional in format 1: absent for readings older than the gateway's epoch record) is
  the hash of the configuration that collected these readings; the audit trail's ``provenance.declared``
  entries map it, per alias, to the PLC address (provenance.py).
- ``seq`` is the lowest and highest buffer sequence number of the points in the message and ``n`` their
  count: with ``gw`` they let the cloud side de-duplicate replays (delivery is at-least-once).
- Each point is ``[t - t0, value]``; quality and status appear only when the quality is not GOOD.
  ``t`` is the PLC's timestamp when it has one, else the gateway's, in milliseconds.
- Non-finite floats are sent as the strings "NaN", "Infinity", "-Infinity" (JSON has no such numbers).
- Every payload is at most ``max_bytes`` (IoT Core rejects over 128 KB); a single value too large to
  fit is sent as ``null`` with quality BAD and the reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from edge_gateway.buffer.base import Record
from edge_gateway.model import Quality, Reading, Value

FORMAT_VERSION = 1
_HEADER_RESERVE = 160  # bytes kept for the envelope around the points (ids and numbers are short)
# ASCII-only JSON: the length of the text is its size in bytes, and a string that was not UTF-8 at the PLC
# (lone surrogates) becomes \udcXX escapes instead of failing the batch.
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    first_seq: int
    last_seq: int
    points: int


def _json_value(value: Value) -> Value:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _entry(dt_ms: int, r: Reading) -> str:
    """One point as JSON text; the common case (a GOOD int or finite float) without the JSON encoder."""
    v = r.value
    if r.quality is Quality.GOOD:
        kind = type(v)
        if kind is int:
            return f"[{dt_ms},{v}]"
        if kind is float and math.isfinite(v):  # type: ignore[arg-type]
            return f"[{dt_ms},{v!r}]"  # repr of a finite float is valid JSON
        return _dumps([dt_ms, _json_value(v)])
    return _dumps([dt_ms, _json_value(v), r.quality.value, r.status])


class _Builder:
    """Accumulates one source's points, grouped by alias, tracking the exact encoded size."""

    def __init__(self, thing: str, source: str, t0_ms: int, cfg: str | None) -> None:
        self.thing, self.source, self.t0_ms = thing, source, t0_ms
        self.cfg = "" if cfg is None else f'"cfg":{_dumps(cfg)},'
        self.points: dict[str, list[str]] = {}
        self.size = _HEADER_RESERVE + len(_dumps(thing)) + len(_dumps(source)) + len(self.cfg)
        self.first_seq = 0
        self.last_seq = 0
        self.count = 0

    def cost(self, alias: str, entry: str) -> int:
        if alias in self.points:
            return len(entry) + 1
        return len(_dumps(alias)) + 4 + len(entry)  # "alias":[entry] plus a comma

    def add(self, seq: int, alias: str, entry: str, cost: int) -> None:
        self.points.setdefault(alias, []).append(entry)
        self.size += cost
        self.first_seq = seq if self.count == 0 else min(self.first_seq, seq)
        self.last_seq = max(self.last_seq, seq)
        self.count += 1

    def payload(self) -> bytes:
        body = ",".join(f"{_dumps(alias)}:[{','.join(entries)}]" for alias, entries in self.points.items())
        return (
            f'{{"v":{FORMAT_VERSION},"gw":{_dumps(self.thing)},{self.cfg}"src":{_dumps(self.source)},'
            f'"seq":[{self.first_seq},{self.last_seq}],"n":{self.count},"t0":{self.t0_ms},"p":{{{body}}}}}'
        ).encode()


def encode_batch(
    records: Sequence[Record], *, thing: str, topic_template: str, max_bytes: int, cfg: str | None = None
) -> list[Message]:
    """Encode records into IoT Core messages, each at most ``max_bytes``, in record order per source;
    ``cfg``: the hash of the configuration that collected them (provenance)."""
    open_builders: dict[str, _Builder] = {}
    done: list[_Builder] = []
    for rec in records:
        r = rec.reading
        ts_ms = r.ts_ns // 1_000_000
        builder = open_builders.get(r.source)
        if builder is None:
            builder = open_builders[r.source] = _Builder(thing, r.source, ts_ms, cfg)
        entry = _entry(ts_ms - builder.t0_ms, r)
        cost = builder.cost(r.point, entry)
        if builder.count and builder.size + cost > max_bytes:
            done.append(builder)
            builder = open_builders[r.source] = _Builder(thing, r.source, ts_ms, cfg)
            entry = _entry(0, r)
            cost = builder.cost(r.point, entry)
        if builder.size + cost > max_bytes:
            # A single oversized value (a huge string) is sent as BAD with the reason, never dropped.
            reason = f"value too large for one message ({len(entry)} bytes)"
            entry = _dumps([ts_ms - builder.t0_ms, None, Quality.BAD.value, reason])
            cost = builder.cost(r.point, entry)
        builder.add(rec.seq, r.point, entry, cost)
    done.extend(open_builders.values())
    return [
        Message(topic_template.format(thing=b.thing, source=b.source), b.payload(), b.first_seq, b.last_seq, b.count)
        for b in done
    ]
