"""The whole-document budget: what all sources together may ask of the PLCs and of this gateway.

Each field is bounded, but a document of bounded fields can still add up to harm: 40 sources with 16
connections each polling one PLC every 10 ms, or a million points. ``limits`` (local file only: a shadow
may not raise it) caps the sums; the defaults are generous for a plant gateway and a local setting can
raise them up to the hard maximum of each field.

Contract: ``budget_errors(limits, loads)`` returns ``(path, message)`` for every figure over its limit,
each naming the figure, the limit and ``limits.<field>`` to raise. ``loads`` holds one
``(path, name, SourceLoad)`` per source (``SourceLoad`` in config/common.py; each source type computes
its own). Also: two sources may not share one serial device (they would garble each other's frames).
Pure functions: no I/O.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from pydantic import Field

from edge_gateway.config.common import Model, SourceLoad

SERIAL_PREFIX = "/dev/"  # a Modbus RTU source's host is its serial device


class LimitsSettings(Model):
    """Caps on the sums over all sources (docs/configuration.md, ``limits``)."""

    # Sum over sources of points / their interval (OPC UA: subscribed nodes / sampling interval, or the
    # publishing interval when sampling is 0; polled nodes / poll interval).
    max_points_per_s: int = Field(default=100_000, ge=1, le=10_000_000)
    # Per PLC host: Modbus TCP connections (max_outstanding) plus OPC UA sessions, over all sources.
    max_connections_per_host: int = Field(default=32, ge=1, le=1024)
    # Points of one Modbus source (over its devices) or nodes of one OPC UA source (over its groups).
    max_nodes_per_source: int = Field(default=20_000, ge=1, le=1_000_000)
    max_sources: int = Field(default=100, ge=1, le=1000)


def budget_errors(limits: LimitsSettings, loads: Sequence[tuple[str, str, SourceLoad]]) -> list[tuple[str, str]]:
    """``(path, message)`` for every sum over its limit; empty when the document fits."""
    errors: list[tuple[str, str]] = []
    if len(loads) > limits.max_sources:
        errors.append(("sources", _over(f"{len(loads)} sources", limits.max_sources, "max_sources")))
    for path, name, load in loads:
        if load.points > limits.max_nodes_per_source:
            what = f"source {name!r} reads {load.points} points/nodes"
            errors.append((path, _over(what, limits.max_nodes_per_source, "max_nodes_per_source")))
    total = sum(load.points_per_s for _, _, load in loads)
    if total > limits.max_points_per_s:
        worst = max(loads, key=lambda item: item[2].points_per_s)
        what = f"the sources read up to {total:,.0f} points/s (most: {worst[1]!r} with {worst[2].points_per_s:,.0f})"
        hint = "lengthen poll or sampling intervals, or "
        errors.append(("sources", _over(what, limits.max_points_per_s, "max_points_per_s", hint)))
    by_host: dict[str, list[tuple[str, str, SourceLoad]]] = defaultdict(list)
    for item in loads:
        host = item[2].host
        by_host[host if host.startswith(SERIAL_PREFIX) else host.lower()].append(item)  # DNS names: any case
    for host, items in by_host.items():
        names = _names([name for _, name, _ in items])
        if host.startswith(SERIAL_PREFIX) and len(items) > 1:
            msg = f"serial device {host} is used by sources {names}: one serial line is one source (list its devices)"
            errors.append((items[-1][0], msg))
            continue
        connections = sum(load.connections for _, _, load in items)
        if connections > limits.max_connections_per_host:
            what = f"sources {names} open {connections} connections/sessions to host {host}"
            errors.append((items[-1][0], _over(what, limits.max_connections_per_host, "max_connections_per_host")))
    return errors


def _names(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(repr(name) for name in names[:shown]) + more


def _over(what: str, limit: int, field: str, hint: str = "") -> str:
    return f"{what}, over the limit of {limit:,}: {hint}raise limits.{field} in the local config file if intended"
