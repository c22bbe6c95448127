"""Local status: a JSON snapshot of the running gateway, rewritten atomically every ``interval_s``.

``edge-gateway status`` reads it and renders a table (``--watch`` refreshes, ``--json`` prints it raw,
``--last-heartbeat`` shows the last heartbeat the broker acknowledged). The heartbeat (publish/presence.py)
sends a snapshot taken at that moment, and the Prometheus endpoint (metrics.py) serves the newest one.
Document, format version 2 (docs/message-format.md has it field by field)::

    {"v": 2, "time": <unix s>,
     "gateway": {"thing", "version", "pid", "uptime_s", "client_id",
                 "config": {"hash", "source": "local"|"shadow", "shadow_version"}},
     "host": {"cpu_percent" (this process, of one core, since the last snapshot), "rss_mb",
              "disk_free_mb" (on the buffer's volume), "load_1m", "temperature_c" (None when the board
              has no thermal sensor)},
     "clock": {"synchronised", "offset_ms", "max_error_ms", "jumps", "last_jump": {"at", "by_s"} | None},
     "mqtt": {"connected", ...transport counters},
     "sources": {<name>: {"state": "starting"|"connected"|"failing"|"reconnecting"|"stopped", "readings",
                          "bad_readings", "errors", "errors_by_kind", "reconnects", "last_good_age_s",
                          "last_error", "points_per_s"}},
     "buffer": {"records", "bytes", "segments", "appended", "last_seq", "unacked", "dropped",
                "oldest_unsent_age_s": {<destination>: s | None}},
     "destinations": {<name>: {"messages", "points" (acknowledged), "payload_bytes", "failures",
                               "retries", "rejected_points", "unsendable_points", "dead_lettered",
                               "in_flight", "backlog", "oldest_unsent_age_s", "points_per_s",
                               "drain_eta_s", "last_error", ...}},
     "dead_letter": {...}, "shadow": <config_status> | None,
     "audit": {"enabled", "error", "dir", "last_seq", "head": {"seq", "hash"} (the chain head: an anchor
               the cloud keeps with every heartbeat), "acked_seq", "acked_hash", "pending", "published",
               "unpublishable", "write_failures", "write_error", "discontinuity", "last_error"}}

``failing``: connected, but every reading since the previous snapshot was BAD. Rates are computed between
two snapshots and smoothed. ``drain_eta_s``: 0 when caught up (the backlog is what the latency bound
holds), else backlog / (delivery rate - collection rate), None while the backlog is not shrinking.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from edge_gateway import __version__
from edge_gateway.buffer.base import Buffer
from edge_gateway.config.model import GatewayConfig
from edge_gateway.publish.deadletter import DeadLetterFile
from edge_gateway.publish.publisher import Publisher
from edge_gateway.publish.transport.base import Transport
from edge_gateway.sources.base import Source
from edge_gateway.util.clock import ClockWatch, clock_synchronised
from edge_gateway.util.files import atomic_write

__all__ = ["FORMAT_VERSION", "StatusReporter", "atomic_write", "clock_synchronised", "render"]

_log = logging.getLogger(__name__)

FORMAT_VERSION = 2
_SMOOTHING = 0.5  # weight of the newest interval in the smoothed rates
_CAUGHT_UP_S = 2.0  # a backlog of at most this many seconds of collection (plus the latency bound) is none


class _Rates:
    """Counters turned into smoothed per-second rates between snapshots."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self.per_s: dict[str, float] = {}

    def update(self, counts: dict[str, int], elapsed_s: float) -> None:
        for key, value in counts.items():
            if key in self._last and elapsed_s > 0:
                now = max(0, value - self._last[key]) / elapsed_s  # a restarted source counts anew
                before = self.per_s.get(key)
                self.per_s[key] = now if before is None else _SMOOTHING * now + (1 - _SMOOTHING) * before
        self._last = dict(counts)

    def get(self, key: str) -> float:
        return round(self.per_s.get(key, 0.0), 1)


class ShadowState(Protocol):
    """What the status shows of the shadow agent (control/shadow.py)."""

    @property
    def last_status(self) -> dict[str, Any] | None: ...
    @property
    def applied_version(self) -> int | None: ...


class Observed(Protocol):
    """What the status reads of the running gateway (runtime/supervisor.py); it changes nothing there."""

    @property
    def thing(self) -> str: ...
    @property
    def config(self) -> GatewayConfig: ...
    @property
    def config_hash(self) -> str: ...
    @property
    def buffer(self) -> Buffer: ...
    @property
    def sources(self) -> Sequence[Source]: ...
    @property
    def publishers(self) -> Sequence[Publisher]: ...
    @property
    def transport(self) -> Transport: ...
    @property
    def dead_letter(self) -> DeadLetterFile: ...
    @property
    def shadow(self) -> ShadowState | None: ...
    def audit_status(self) -> dict[str, Any]: ...


class StatusReporter:
    def __init__(self, gateway: Observed, path: Path, interval_s: float) -> None:
        self.gateway = gateway
        self.path = path
        self.interval_s = interval_s
        self._started = time.monotonic()
        self._last_mono: float | None = None
        self._rates = _Rates()
        self._bad_seen: dict[str, tuple[int, int]] = {}  # source -> (readings, bad_readings) last time
        self.clock = ClockWatch()
        self.latest: dict[str, Any] | None = None  # the newest snapshot
        self._cpu_last: tuple[float, float] | None = None  # (monotonic, process CPU seconds)

    def snapshot(self) -> dict[str, Any]:
        gw = self.gateway
        now_mono, now_ns = time.monotonic(), time.time_ns()
        elapsed = now_mono - self._last_mono if self._last_mono is not None else 0.0
        self._last_mono = now_mono
        buf = gw.buffer.stats()
        counts = {f"src:{s.name}": s.status.readings for s in gw.sources}
        counts |= {f"dst:{p.name}": p.status.points for p in gw.publishers}
        counts["appended"] = buf.last_seq
        self._rates.update(counts, elapsed)

        def age_s(ns: int | None) -> float | None:
            return round(max(0, now_ns - ns) / 1e9, 3) if ns else None

        sources = {}
        for s in gw.sources:
            st = dataclasses.asdict(s.status)
            st["last_good_age_s"] = age_s(st.pop("last_good_ns"))
            st["state"] = self._source_state(s.name, st)
            st["points_per_s"] = self._rates.get(f"src:{s.name}")
            devices = getattr(s, "devices", None)  # Modbus: counters per device (unit id)
            if devices:
                st["devices"] = {
                    name: {k: v for k, v in dataclasses.asdict(d).items() if k != "last_good_ns"}
                    | {"last_good_age_s": age_s(d.last_good_ns)}
                    for name, d in devices.items()
                }
            sources[s.name] = st
        destinations = {}
        for p in gw.publishers:
            st = dataclasses.asdict(p.status)
            st.pop("last_ack_ns")
            backlog = buf.unacked.get(p.name, 0)
            st["retries"] = st["failures"]
            st["dead_lettered"] = st["rejected_points"] + st["unsendable_points"]
            st["backlog"] = backlog
            st["oldest_unsent_age_s"] = age_s(p.oldest_unacked_ns) if backlog else None
            st["points_per_s"] = self._rates.get(f"dst:{p.name}")
            st["drain_eta_s"] = self._drain_eta(backlog, st["points_per_s"], p.dest.max_latency_ms / 1000)
            destinations[p.name] = st
        stats = dataclasses.asdict(buf)
        stats["oldest_unsent_age_s"] = {name: d["oldest_unsent_age_s"] for name, d in destinations.items()}
        return {
            "v": FORMAT_VERSION,
            "time": round(now_ns / 1e9, 3),
            "gateway": {
                "thing": gw.thing,
                "version": __version__,
                "pid": os.getpid(),
                "uptime_s": round(now_mono - self._started, 1),
                "client_id": gw.config.client_id,
                "config": self._config(),
            },
            "host": self._host(now_mono),
            "clock": self.clock.state(),
            "mqtt": gw.transport.status_dict(),
            "sources": sources,
            "buffer": stats,
            "destinations": destinations,
            "dead_letter": {"path": str(gw.dead_letter.path), **dataclasses.asdict(gw.dead_letter.stats)},
            "shadow": gw.shadow.last_status if gw.shadow is not None else None,
            "audit": gw.audit_status(),
        }

    def _source_state(self, name: str, st: dict[str, Any]) -> str:
        readings, bad = st["readings"], st["bad_readings"]
        before = self._bad_seen.get(name, (0, 0))
        self._bad_seen[name] = (readings, bad)
        new, new_bad = readings - before[0], bad - before[1]
        if st["state"] == "connected" and new > 0 and new_bad >= new:
            return "failing"
        return str(st["state"])

    def _drain_eta(self, backlog: int, delivered_per_s: float, latency_s: float) -> float | None:
        collected_per_s = self._rates.get("appended")
        if backlog <= collected_per_s * (latency_s + _CAUGHT_UP_S) + 1:
            return 0.0
        shrinking = delivered_per_s - collected_per_s
        return round(backlog / shrinking, 1) if shrinking > 0 else None

    def _config(self) -> dict[str, Any]:
        gw = self.gateway
        version = gw.shadow.applied_version if gw.shadow is not None else None
        return {
            "hash": gw.config_hash,
            "source": "local" if version is None else "shadow",
            "shadow_version": version,
        }

    def _host(self, now_mono: float) -> dict[str, Any]:
        cpu = time.process_time()
        percent = None
        if self._cpu_last is not None and now_mono > self._cpu_last[0]:
            percent = round(100 * (cpu - self._cpu_last[1]) / (now_mono - self._cpu_last[0]), 1)
        self._cpu_last = (now_mono, cpu)
        data_dir = self.gateway.config.buffer_path
        while not data_dir.exists() and data_dir != data_dir.parent:
            data_dir = data_dir.parent
        return {
            "cpu_percent": percent,
            "rss_mb": _rss_mb(),
            "disk_free_mb": round(shutil.disk_usage(data_dir).free / 1e6, 1),
            "load_1m": round(os.getloadavg()[0], 2),
            "temperature_c": _temperature_c(),
        }

    async def fresh(self) -> dict[str, Any]:
        """A snapshot taken now, also written to the status file (what a heartbeat sends)."""
        self.latest = self.snapshot()
        doc = json.dumps(self.latest, indent=1).encode()
        try:
            await asyncio.to_thread(atomic_write, self.path, doc)
        except OSError as exc:
            _log.warning("cannot write status file %s: %s", self.path, exc)
        return self.latest

    async def run(self) -> None:
        while True:
            await self.fresh()
            await asyncio.sleep(self.interval_s)


def _rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _temperature_c() -> float | None:
    """The SoC/board temperature where the kernel exposes one (Raspberry Pi, most industrial PCs)."""
    try:
        return round(int(Path("/sys/class/thermal/thermal_zone0/temp").read_text()) / 1000, 1)
    except (OSError, ValueError):
        return None


def render(doc: dict[str, Any]) -> str:
    """A plain-text table of a status document, for `edge-gateway status`."""
    gw, buf, mqtt = doc["gateway"], doc["buffer"], doc["mqtt"]
    age = time.time() - doc["time"]
    host, clock = doc.get("host", {}), doc.get("clock", {})
    cfg = gw.get("config") or {}
    jump = clock.get("last_jump")
    lines = [
        (
            f"gateway {gw['thing']}  v{gw['version']}  pid {gw['pid']}  up {gw['uptime_s']:.0f} s"
            f"  (status {age:.1f} s old)"
        ),
        f"config  {cfg.get('source', '-')}"
        + (f" (shadow version {cfg['shadow_version']})" if cfg.get("shadow_version") is not None else "")
        + f"  {cfg.get('hash', '-')}",
        (
            f"host    cpu {_or_dash(host.get('cpu_percent'), '%')}  rss {_or_dash(host.get('rss_mb'), ' MB')}  "
            f"disk free {_or_dash(host.get('disk_free_mb'), ' MB')}  load {_or_dash(host.get('load_1m'))}  "
            f"temp {_or_dash(host.get('temperature_c'), ' C')}"
        ),
        (
            "clock   "
            + {True: "synchronised", False: "CLOCK NOT SYNCHRONISED", None: "unknown"}[clock.get("synchronised")]
            + f"  offset {_or_dash(clock.get('offset_ms'), ' ms')}"
            + f"  max error {_or_dash(clock.get('max_error_ms'), ' ms')}"
            + (f"  JUMPS {clock['jumps']} (last {jump['by_s']:+.3f} s)" if jump else "")
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
    lines += [
        "",
        (
            f"{'DESTINATION':<20} {'PTS/S':>9} {'ACKED':>10} {'BACKLOG':>9} {'OLDEST':>9} {'ETA':>8} "
            f"{'RETRIES':>8} {'DEAD':>6} {'IN FLIGHT':>9}"
        ),
    ]
    for name, d in doc["destinations"].items():
        oldest, eta = d.get("oldest_unsent_age_s"), d.get("drain_eta_s", 0.0)
        lines.append(
            f"{name:<20} {d['points_per_s']:>9.1f} {d['points']:>10} {d.get('backlog', 0):>9} "
            f"{_duration(oldest):>9} {'stalled' if eta is None else _duration(eta):>8} {d.get('retries', 0):>8} "
            f"{d.get('dead_lettered', 0):>6} {d['in_flight']:>9}"
        )
        if d.get("last_error"):
            lines.append(f"  last error: {d['last_error']}")
    return "\n".join(lines)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:  # noqa: PLR2004
        return f"{seconds:.1f}s"
    if seconds < 7200:  # noqa: PLR2004
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _or_dash(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value}{unit}"


def _nonzero(counts: dict[str, int]) -> str:
    parts = [f"{k}={v}" for k, v in counts.items() if v]
    return ", ".join(parts) if parts else "none"
