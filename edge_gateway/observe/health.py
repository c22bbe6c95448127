"""A small health summary in the device shadow's ``reported.health``, so fleet indexing can query gateways.

The heartbeat carries the whole status every minute; the shadow gets only what a fleet query needs, and only
when it materially changes (at most every ``heartbeat.shadow_min_interval_s``, so the shadow stays far
below its size limit of 8 KB and the service's update rate limits)::

    {"state": "ok"|"degraded", "problems": ["source press reconnecting", ...],
     "sources": {<name>: <state>}, "backlog": "none"|"minutes"|"hours"|"days",
     "dropped": <readings dropped since start, all reasons>, "dead_lettered": <count>,
     "clock_synchronised": true|false|null, "version": <gateway version>, "config_hash": "sha256:...",
     "at": <epoch s of the status it summarises>}

Material: anything above but ``at`` and the counts' exact values (a count going from zero to non-zero is
material, every further increment is not). A source removed by a configuration change is reported as
``null`` (the service merges updates).

No sources (a configuration that waits for the shadow to give it sources): the problem ``"no sources
configured"``, so the state is ``degraded``: the gateway works (it connects and heartbeats) but collects
nothing, and a fleet query for degraded gateways finds the ones no shadow has configured yet.

Audit problems (from the status's ``audit`` section): ``"audit trail not writable"`` while the trail could
not be opened or its last write failed (shadow changes are refused meanwhile), and ``"audit trail
discontinuity"`` when, at start, it did not hold the last entry the cloud acknowledged (gxp/audit_anchor.py;
for the rest of the process's life).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from edge_gateway.util.jsondoc import removed_as_null

_MINUTE, _HOUR, _DAY = 60.0, 3600.0, 86_400.0
NO_SOURCES = "no sources configured"


def _backlog_class(age_s: float | None) -> str:
    if age_s is None or age_s < _MINUTE:
        return "none"
    if age_s < _HOUR:
        return "minutes"
    return "hours" if age_s < _DAY else "days"


def summary(status: dict[str, Any]) -> dict[str, Any]:
    """The health summary of one status document (status.py, format 2)."""
    sources = {name: s["state"] for name, s in status["sources"].items()}
    ages = [a for a in status["buffer"].get("oldest_unsent_age_s", {}).values() if a is not None]
    backlog = _backlog_class(max(ages, default=None))
    dropped = sum(status["buffer"]["dropped"].values())
    dead = sum(d.get("dead_lettered", 0) for d in status["destinations"].values())
    synchronised = status.get("clock", {}).get("synchronised")
    problems = [f"source {n} {state}" for n, state in sources.items() if state in ("reconnecting", "failing")]
    if not sources:
        problems.append(NO_SOURCES)
    if not status["mqtt"].get("connected", True):
        problems.append("cloud connection down")
    if backlog != "none":
        problems.append(f"backlog {backlog} old")
    if dropped:
        problems.append("readings dropped")
    if dead:
        problems.append("messages dead-lettered")
    if synchronised is False:
        problems.append("clock not synchronised")
    problems += _audit_problems(status.get("audit") or {})
    return {
        "state": "degraded" if problems else "ok",
        "problems": problems,
        "sources": sources,
        "backlog": backlog,
        "dropped": dropped,
        "dead_lettered": dead,
        "clock_synchronised": synchronised,
        "version": status["gateway"]["version"],
        "config_hash": status["gateway"].get("config", {}).get("hash"),
        "at": status["time"],
    }


def _audit_problems(audit: dict[str, Any]) -> list[str]:
    """The audit trail's problems: it cannot be written (shadow changes are refused meanwhile), or it did
    not hold what the cloud acknowledged at start (reported for the process's life, docs/gxp.md)."""
    out = []
    if audit.get("error") or audit.get("write_error"):
        out.append("audit trail not writable")
    if audit.get("discontinuity"):
        out.append("audit trail discontinuity")
    return out


def _material(health: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in health.items() if k not in ("at", "dropped", "dead_lettered")}
    out["dropped"] = bool(health["dropped"])
    out["dead_lettered"] = bool(health["dead_lettered"])
    return out


class HealthReporter:
    """Decides, at every delivered heartbeat, whether the shadow's health summary needs an update."""

    def __init__(
        self,
        report: Callable[[dict[str, Any]], Awaitable[bool]],
        *,
        min_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.report = report
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._sent: dict[str, Any] | None = None
        self._sent_at: float | None = None
        self.reports = 0

    def due(self, health: dict[str, Any]) -> bool:
        if self._sent is not None and _material(self._sent) == _material(health):
            return False
        return self._sent_at is None or self._clock() - self._sent_at >= self.min_interval_s

    async def consider(self, status: dict[str, Any]) -> bool:
        """Report the summary of ``status`` if it changed materially and the rate allows; True if sent."""
        health = summary(status)
        if not self.due(health):
            return False
        body = removed_as_null(self._sent, health) if self._sent is not None else health
        if not await self.report(body):
            return False
        self._sent, self._sent_at = health, self._clock()
        self.reports += 1
        return True
