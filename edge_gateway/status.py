"""Local status: a JSON snapshot of the running gateway, rewritten atomically every ``interval_s``.

``edge-gateway status`` reads it and renders a table (``--watch`` refreshes, ``--json`` prints it raw).
Document, format version 1::

    {"v": 1, "time": <unix s>, "gateway": {"thing", "version", "pid", "uptime_s", "client_id"},
     "host": {"cpu_percent" (this process, of one core, since the last snapshot), "rss_mb",
              "disk_free_mb" (on the buffer's volume), "load_1m", "temperature_c" (None when the board
              has no thermal sensor), "clock_synchronised" (the kernel's NTP state; None if unknown)},
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
import ctypes
import ctypes.util
import dataclasses
import functools
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_gateway import __version__

if TYPE_CHECKING:
    from edge_gateway.supervisor import Gateway

_log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_TIME_ERROR = 5  # adjtimex(2): the clock is not synchronised
_TIMEX_BYTES = 1024  # larger than struct timex on every Linux ABI


class StatusReporter:
    def __init__(self, gateway: Gateway, path: Path, interval_s: float) -> None:
        self.gateway = gateway
        self.path = path
        self.interval_s = interval_s
        self._started = time.monotonic()
        self._last: tuple[float, dict[str, int], dict[str, int]] | None = None
        self.latest: dict[str, Any] | None = None  # the newest snapshot, also what the heartbeat sends
        self._cpu_last: tuple[float, float] | None = None  # (monotonic, process CPU seconds)

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
            return round(max(0, counts[name] - prev.get(name, 0)) / elapsed, 1)  # a restarted source counts anew

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
            "host": self._host(now_mono),
            "mqtt": gw.transport.status_dict(),
            "sources": sources,
            "buffer": dataclasses.asdict(gw.buffer.stats()),
            "destinations": destinations,
            "dead_letter": {"path": str(gw.dead_letter.path), **dataclasses.asdict(gw.dead_letter.stats)},
            "shadow": gw.shadow.last_status if gw.shadow is not None else None,
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
            "clock_synchronised": clock_synchronised(),
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


def clock_synchronised() -> bool | None:
    """Whether the kernel says the system clock is synchronised (adjtimex, read-only); None off Linux.

    TLS needs a valid clock and readings carry the gateway's timestamps: an unsynchronised clock is worth
    telling the operator about.
    """
    try:
        timex = ctypes.create_string_buffer(_TIMEX_BYTES)  # modes = 0: only read the state
        state = int(_libc().adjtimex(timex))
    except (OSError, AttributeError):
        return None
    return None if state < 0 else state != _TIME_ERROR


@functools.cache
def _libc() -> ctypes.CDLL:
    """Loaded once: find_library runs ldconfig, too slow for every status snapshot."""
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


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


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def render(doc: dict[str, Any]) -> str:
    """A plain-text table of a status document, for `edge-gateway status`."""
    gw, buf, mqtt = doc["gateway"], doc["buffer"], doc["mqtt"]
    age = time.time() - doc["time"]
    host = doc.get("host", {})
    lines = [
        (
            f"gateway {gw['thing']}  v{gw['version']}  pid {gw['pid']}  up {gw['uptime_s']:.0f} s"
            f"  (status {age:.1f} s old)"
        ),
        (
            f"host    cpu {_or_dash(host.get('cpu_percent'), '%')}  rss {_or_dash(host.get('rss_mb'), ' MB')}  "
            f"disk free {_or_dash(host.get('disk_free_mb'), ' MB')}  load {_or_dash(host.get('load_1m'))}  "
            f"temp {_or_dash(host.get('temperature_c'), ' C')}"
            + ("  CLOCK NOT SYNCHRONISED" if host.get("clock_synchronised") is False else "")
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


def _or_dash(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value}{unit}"


def _nonzero(counts: dict[str, int]) -> str:
    parts = [f"{k}={v}" for k, v in counts.items() if v]
    return ", ".join(parts) if parts else "none"
