"""The source contract.

A source MUST:
- run as one task (``await source.run(sink)``) until cancelled, and never raise for PLC trouble: it
  reconnects with ``Backoff`` (jittered, capped) and keeps ``status`` current;
- hand every reading to ``sink`` (the buffer's ``append``) and treat a returned ``await sink(...)`` as
  "collected"; a reading the PLC could not deliver becomes a ``Quality.BAD`` reading with the reason;
- never block the event loop and never talk to the cloud side.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from edge_gateway.model import Reading

Sink = Callable[[Sequence[Reading]], Awaitable[None]]


class SourceState(StrEnum):
    STARTING = "starting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    STOPPED = "stopped"


@dataclass(slots=True)
class SourceStatus:
    """Live, mutable state of one source, read by the status reporter (same event loop, no locks)."""

    name: str
    state: SourceState = SourceState.STARTING
    readings: int = 0
    bad_readings: int = 0
    errors: int = 0
    reconnects: int = 0
    last_good_ns: int | None = None
    last_error: str | None = None
    errors_by_kind: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str, message: str) -> None:
        self.errors += 1
        self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1
        self.last_error = message


class Source(Protocol):
    name: str
    status: SourceStatus

    async def run(self, sink: Sink) -> None:
        """Read the PLC until cancelled; see the module docstring for the rules."""
