"""Hot-path data: the Reading that flows from sources through the buffer to the publisher.

Contract: a Reading is immutable; a failed read is a Reading with ``Quality.BAD`` (value ``None`` allowed)
and the reason in ``status``, never a silent hole. Timestamps are integer nanoseconds since the Unix
epoch; ``source_ts_ns`` comes from the PLC when it has one, ``gateway_ts_ns`` is when the gateway saw it.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import NamedTuple

Value = bool | int | float | str | None


class Quality(StrEnum):
    GOOD = "GOOD"
    UNCERTAIN = "UNCERTAIN"
    BAD = "BAD"


class Reading(NamedTuple):
    """A NamedTuple, not a dataclass: millions are built per minute on the buffer's read path, and a tuple
    is built in half the time of a frozen dataclass."""

    source: str
    point: str
    value: Value
    quality: Quality
    gateway_ts_ns: int
    source_ts_ns: int | None = None
    # Original protocol status kept for diagnosis: an OPC UA StatusCode, or a short reason text
    # such as "modbus exception 2 (illegal data address)". None when GOOD.
    status: int | str | None = None

    @property
    def ts_ns(self) -> int:
        """The timestamp to publish: the PLC's when it has one, else the gateway's."""
        return self.source_ts_ns if self.source_ts_ns is not None else self.gateway_ts_ns


def now_ns() -> int:
    return time.time_ns()
