"""Local status: a JSON snapshot of the running gateway, rewritten atomically every ``interval_s``.

``edge-gateway status`` reads it and renders a table (``--watch`` refreshes, ``--json`` prints it raw).
Document, format version 1::

    {"v": 1, "time": <unix s>, "gateway": {"thing", "version", "pid", "uptime_s", "client_id"},
     "mqtt": {"connected", ...transport counters},
     "sources": {<name>: {"state", "readings", "bad_readings", "errors", "errors_by_kind", "reconnects",
                          "last_good_age_s", "last_error", "points_per_s"}},
     "buffer": {"records", "bytes", "segments", "appended", "last_seq", "unacked", "dropped"},
     "destinations": {<name>: {"messages", "points", "payload_bytes", "failures", "rejected_points",
                               "in_flight", "last_error", "points_per_s"}}}

Rates are computed between two snapshots. The MQTT heartbeat (publish/presence.py) sends the newest one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_gateway import __version__

if TYPE_CHECKING:
    from edge_gateway.supervisor import Gateway

_log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class StatusReporter:
    def __init__(self, gateway: Gateway, path: Path, interval_s: float) -> None:
        self.gateway = gateway
        self.path = path
        self.interval_s = interval_s
        self._started = time.monotonic()
        self._last: tuple[float, dict[str, int], dict[str, int]] | None = None
        self.latest: dict[str, Any] | None = None  # the newest snapshot, also what the heartbeat sends

    def snapshot(self) -> dict[str, Any]:
        gw = self.gateway
        now_mono, now_ns = time.monotonic(), time.time_ns()
        src_counts = {s.name: s.status.readings for s in gw.sources}
        pub_counts = {p.name: p.status.points for p in gw.publishers}
        elapsed = now_mono - self._last[0] if self._last else 0.0

        def rate(name: str, counts: dict[str, int], prev_index: int) -> float:
            if not self._last or elapsed <= 0:
                return 0.0
            prev: dict[str, int] = self._last[prev_index]  # type: ignore[assignment]
            return round((counts[name] - prev.get(name, 0)) / elapsed, 1)

        sources = {}
        for s in gw.sources:
            st = dataclasses.asdict(s.status)
            last_good = st.pop("last_good_ns")
            st["last_good_age_s"] = round((now_ns - last_good) / 1e9, 3) if last_good else None
            st["points_per_s"] = rate(s.name, src_counts, 1)
            sources[s.name] = st
        destinations = {}
        for p in gw.publishers:
            st = dataclasses.asdict(p.status)
            st.pop("last_ack_ns")
            st["points_per_s"] = rate(p.name, pub_counts, 2)
            destinations[p.name] = st
        self._last = (now_mono, src_counts, pub_counts)
        return {
            "v": FORMAT_VERSION,
            "time": round(now_ns / 1e9, 3),
            "gateway": {
                "thing": gw.thing,
                "version": __version__,
                "pid": os.getpid(),
                "uptime_s": round(now_mono - self._started, 1),
                "client_id": gw.config.client_id,
            },
            "mqtt": gw.transport.status_dict(),
            "sources": sources,
            "buffer": dataclasses.asdict(gw.buffer.stats()),
            "destinations": destinations,
            "dead_letter": {"path": str(gw.dead_letter.path), **dataclasses.asdict(gw.dead_letter.stats)},
        }

    async def write_once(self) -> None:
        self.latest = self.snapshot()
        doc = json.dumps(self.latest, indent=1).encode()
        try:
            await asyncio.to_thread(_atomic_write, self.path, doc)
        except OSError as exc:
            _log.warning("cannot write status file %s: %s", self.path, exc)

    async def run(self) -> None:
        while True:
            await self.write_once()
            await asyncio.sleep(self.interval_s)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def render(doc: dict[str, Any]) -> str:
    """A plain-text table of a status document, for `edge-gateway status`."""
    gw, buf, mqtt = doc["gateway"], doc["buffer"], doc["mqtt"]
    age = time.time() - doc["time"]
    lines = [
        (
            f"gateway {gw['thing']}  v{gw['version']}  pid {gw['pid']}  up {gw['uptime_s']:.0f} s"
            f"  (status {age:.1f} s old)"
        ),
        f"mqtt    {'connected' if mqtt.get('connected') else 'DISCONNECTED'}  client {gw['client_id']}"
        + (f"  last error: {mqtt['last_error']}" if mqtt.get("last_error") else ""),
        (
            f"buffer  {buf['records']} record(s) held, {buf['bytes'] / 1e6:.2f} MB in {buf['segments']} segment(s),"
            f" last seq {buf['last_seq']}, dropped {_nonzero(buf['dropped'])}"
        ),
        "",
        f"{'SOURCE':<20} {'STATE':<13} {'PTS/S':>9} {'READINGS':>10} {'BAD':>7} {'ERRORS':>7} {'LAST GOOD':>10}",
    ]
    for name, s in doc["sources"].items():
        last = f"{s['last_good_age_s']:.1f}s" if s["last_good_age_s"] is not None else "never"
        lines.append(
            f"{name:<20} {s['state']:<13} {s['points_per_s']:>9.1f} {s['readings']:>10} "
            f"{s['bad_readings']:>7} {s['errors']:>7} {last:>10}"
        )
        if s.get("last_error") and s["state"] != "connected":
            lines.append(f"  last error: {s['last_error']}")
    lines += ["", f"{'DESTINATION':<20} {'PTS/S':>9} {'POINTS':>10} {'MESSAGES':>9} {'UNACKED':>9} {'IN FLIGHT':>9}"]
    for name, d in doc["destinations"].items():
        lines.append(
            f"{name:<20} {d['points_per_s']:>9.1f} {d['points']:>10} {d['messages']:>9} "
            f"{buf['unacked'].get(name, 0):>9} {d['in_flight']:>9}"
        )
        if d.get("last_error"):
            lines.append(f"  last error: {d['last_error']}")
    return "\n".join(lines)


def _nonzero(counts: dict[str, int]) -> str:
    parts = [f"{k}={v}" for k, v in counts.items() if v]
    return ", ".join(parts) if parts else "none"
