"""The confirm window of a shadow change: is the new configuration working, or must it be rolled back?

Contract (``probation``; the shadow agent, control/shadow.py, calls it after every non-empty change):
- Confirmed (returns None) once the cloud connection is up, every added or changed source has connected, and
  every watched destination is confirmed. Watched: every added or changed destination; every destination
  when the MQTT connection changed (they all restarted on it). A watched destination is confirmed by a
  successful PUBACK for a message it sent since the change (``PublisherStatus.messages`` grew).
- A watched destination with nothing acknowledged when ``window_s`` is over is confirmed only if it had
  nothing to send: no failure, no reading set aside as unsendable and nothing in flight since the change,
  and the connection is up (while it is down, the connection rule below decides).
- Rolled back (returns why, naming the source, destination or endpoint and the last error): at once when
  the broker refuses one of a watched destination's messages for good (``rejected_points`` grew: e.g. 135,
  not authorized by the IoT policy, in ``dead_letter_codes``); the connection down for a whole window; a
  source not connected or a destination unconfirmed when the window is over.
- "Since the change" compares with ``snapshot`` taken before ``apply``: a publisher that ``apply`` replaced
  (an added or changed destination, or all of them after an MQTT change) starts from zero.
Nothing is waited on but the gateway's own counters, every ``_PROBE_S``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from edge_gateway.config.diff import ConfigDiff
from edge_gateway.publish.publisher import Publisher, PublisherStatus
from edge_gateway.publish.transport.base import Transport
from edge_gateway.sources.base import Source, SourceState

_PROBE_S = 0.25


class Watched(Protocol):
    """What the confirm window reads of the running gateway (runtime/supervisor.py ``Gateway``)."""

    @property
    def transport(self) -> Transport: ...
    @property
    def sources(self) -> Sequence[Source]: ...
    @property
    def publishers(self) -> Sequence[Publisher]: ...


class Counts(NamedTuple):
    """A destination's delivery counters (PublisherStatus), to tell what happened since the change."""

    messages: int = 0
    rejected: int = 0
    failures: int = 0
    unsendable: int = 0

    @classmethod
    def of(cls, s: PublisherStatus) -> Counts:
        return cls(s.messages, s.rejected_points, s.failures, s.unsendable_points)

    def minus(self, other: Counts) -> Counts:
        return Counts(*(a - b for a, b in zip(self, other, strict=True)))


Snapshot = dict[str, tuple[Publisher, Counts]]


def snapshot(publishers: Sequence[Publisher]) -> Snapshot:
    """Every publisher and its counters, before a change is applied."""
    return {p.name: (p, Counts.of(p.status)) for p in publishers}


async def probation(gw: Watched, change: ConfigDiff, before: Snapshot, window_s: float) -> str | None:
    """None once the change is confirmed; else why it must be rolled back (module docstring)."""
    transport = gw.transport
    loop = asyncio.get_running_loop()
    started = loop.time()
    down_since: float | None = None
    waiting = set(change.sources_added + change.sources_changed)
    unconfirmed = {p.name for p in gw.publishers} if change.mqtt_changed else set()
    unconfirmed |= set(change.destinations_added + change.destinations_changed)
    while True:
        now = loop.time()
        sources = {s.name: s.status for s in gw.sources}
        waiting = {n for n in waiting if n in sources and sources[n].state is not SourceState.CONNECTED}
        refused, unconfirmed = deliveries(gw.publishers, unconfirmed, before, window_s, final=False)
        if refused:
            return refused
        if transport.connected:
            if not waiting and not unconfirmed:
                return None
            down_since = None
        elif down_since is None:
            down_since = now
        if down_since is not None and now - down_since >= window_s:
            st = transport.status
            return (
                f"no cloud connection to {st.endpoint}:{st.port} for {window_s:.0f} s after the change"
                f" (last error: {st.last_error or 'none'})"
            )
        if waiting and now - started >= window_s:
            return "; ".join(
                f"source {n} did not connect within {window_s:.0f} s (last error: {sources[n].last_error or 'none'})"
                for n in sorted(waiting)
            )
        if unconfirmed and now - started >= window_s and transport.connected:
            failed, unconfirmed = deliveries(gw.publishers, unconfirmed, before, window_s, final=True)
            if failed:
                return failed
        await asyncio.sleep(_PROBE_S)


def deliveries(
    publishers: Sequence[Publisher], names: set[str], before: Snapshot, window_s: float, *, final: bool
) -> tuple[str | None, set[str]]:
    """(why the change fails on a destination, or None; the destinations still unconfirmed). A refusal
    for good fails at once; ``final`` (the window is over, the connection up): a destination with nothing
    acknowledged fails if it had a failure, an unsendable reading or something in flight, else it had
    nothing to send and is confirmed."""
    running = {p.name: p for p in publishers}
    left = set()
    for name in sorted(names):
        p = running.get(name)
        if p is None:  # gone (a later change): nothing to confirm
            continue
        old, base = before.get(name, (None, Counts()))
        since = Counts.of(p.status).minus(base if old is p else Counts())
        error = p.status.last_error or "none"
        if since.rejected:
            return f"destination {name}: the broker refused its messages for good (last error: {error})", set()
        if since.messages:
            continue
        if final and (since.failures or since.unsendable or p.status.in_flight):
            why = (
                f"destination {name}: no message acknowledged within {window_s:.0f} s after the change "
                f"({since.failures} failure(s), {since.unsendable} unsendable, {p.status.in_flight} in flight, "
                f"last error: {error})"
            )
            return why, set()
        if not final:
            left.add(name)
    return None, left
