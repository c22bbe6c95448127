"""The recovery policy of one Modbus source: what a failure changes for later requests, what an answer resets.

Contract (the state lives as long as the reader; no I/O here, the poller and the reader act on it):
- Connection: ``reconnect_delay()`` grows with jitter from ``reconnect_min_s`` to ``reconnect_max_s`` and
  restarts from its minimum only after a device answered (``answered``), so a peer that accepts and drops
  connections is not hammered.
- Device isolation: a device that gave no valid answer in a poll is backed off (``back_off``): its polls
  are held until a jittered, growing delay (``device_backoff_min_s``..``max_s``) has passed; any valid
  answer resets it. The change of ``DeviceStatus.state`` is logged once, not once per retry.
- Exception 2 (illegal data address) to a read of several points: ``split_refused`` halves it (logged once
  per read); other exception responses are logged once per read and code (``exception_once``).
- A read that gets no answer while its device answers its other reads in the same poll earns a strike
  (``ignored``); at two strikes it is split in halves (each starting with one strike), and a single point
  is quarantined for ``QUARANTINE_S``: BAD with ``quarantine_reason``, then probed again. An answer to the
  read (``recovered``) clears its strikes and its quarantine.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from edge_gateway.sources.modbus.client import ILLEGAL_DATA_ADDRESS, RequestError, location
from edge_gateway.sources.modbus.codec import ReadRequest, split_request
from edge_gateway.sources.modbus.config import ModbusDevice, ModbusSource
from edge_gateway.util.backoff import Backoff

_log = logging.getLogger(__name__)

QUARANTINE_S = 60.0
NO_ANSWER = frozenset({"timeout", "frame"})  # RequestError kinds that mean the device gave no valid answer


@dataclass(slots=True)
class DeviceStatus:
    """Live counters of one device (unit id) on the source's connection, for the heartbeat and tests."""

    name: str
    unit_id: int
    state: str = "ok"  # ok | backing_off
    requests: int = 0
    answers: int = 0  # valid answers, exception responses included
    readings: int = 0
    bad_readings: int = 0
    skipped_polls: int = 0  # polls not sent while backing off
    last_good_ns: int | None = None
    last_error: str | None = None
    errors_by_kind: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str, message: str) -> None:
        self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1
        self.last_error = message


class Device:
    """One device (unit id) on the connection, and its backoff."""

    def __init__(self, config: ModbusDevice, source: ModbusSource) -> None:
        self.config = config
        self.unit = config.unit_id
        self.status = DeviceStatus(config.name, config.unit_id)
        self.backoff = Backoff(source.device_backoff_min_s, source.device_backoff_max_s)
        self.retry_at = 0.0


class PlannedRead:
    """One planned read and what the reader learnt about it."""

    __slots__ = ("quarantined_until", "req", "strikes")

    def __init__(self, req: ReadRequest, strikes: int = 0) -> None:
        self.req = req
        self.strikes = strikes  # timeouts in a row while the device answered other reads
        self.quarantined_until = 0.0


class Recovery:
    def __init__(self, config: ModbusSource) -> None:
        self._name = config.name
        self._endpoint = config.endpoint
        self._device_backoff_max_s = config.device_backoff_max_s
        self._conn_backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s)
        self._logged: set[tuple[int, str, int, int, str]] = set()

    def reconnect_delay(self) -> float:
        return self._conn_backoff.next_delay()

    def where(self, dev: Device, req: ReadRequest) -> str:
        return location(req, dev.unit, self._endpoint)

    # Devices ---------------------------------------------------------------------------------------

    def answered(self, dev: Device) -> None:
        """``dev`` sent a valid frame (an exception response too)."""
        dev.status.answers += 1
        self._conn_backoff.reset()
        if dev.retry_at:
            dev.retry_at = 0.0
            dev.backoff.reset()
            if dev.status.state != "ok":
                dev.status.state = "ok"
                _log.info("modbus %s: device %s (unit %d) answers again", self._name, dev.config.name, dev.unit)

    def back_off(self, dev: Device, reason: str) -> None:
        delay = dev.backoff.next_delay()
        dev.retry_at = asyncio.get_running_loop().time() + delay
        if dev.status.state != "backing_off":
            dev.status.state = "backing_off"
            _log.warning(
                "modbus %s: device %s (unit %d) gave no valid answer (%s); backing off (retry in %.1f s, growing"
                " to %.0f s) so the other devices keep their rate",
                self._name,
                dev.config.name,
                dev.unit,
                reason,
                delay,
                self._device_backoff_max_s,
            )

    # Reads -----------------------------------------------------------------------------------------

    def recovered(self, dev: Device, read: PlannedRead) -> None:
        """``read`` was answered."""
        read.strikes = 0
        if read.quarantined_until:
            read.quarantined_until = 0.0
            _log.info("modbus %s: unit %d answers %s again", self._name, dev.unit, self.where(dev, read.req))

    def split_refused(self, dev: Device, req: ReadRequest, exc: RequestError) -> list[ReadRequest] | None:
        """The reads to send instead of ``req`` after ``exc`` (None: not a refused range that splits)."""
        if exc.code != ILLEGAL_DATA_ADDRESS or len(req.points) <= 1:
            return None
        parts = split_request(req)
        spans = ", ".join(f"{p.start}..{p.end}" for p in parts)
        self._log_once(dev, req, "split", "%s; splitting %d points into reads of %s", exc, len(req.points), spans)
        return parts

    def exception_once(self, dev: Device, req: ReadRequest, exc: RequestError) -> None:
        self._log_once(dev, req, f"exception{exc.code}", "%s", exc)

    def ignored(self, dev: Device, read: PlannedRead, exc: RequestError) -> list[PlannedRead]:
        """``read`` got no answer while ``dev`` answered its others: what replaces it in the plan."""
        read.strikes += 1
        if read.strikes < 2:  # noqa: PLR2004 - once may be a glitch
            return [read]
        if len(read.req.points) > 1:
            parts = split_request(read.req)
            _log.warning(
                "modbus %s: %s, while unit %d answers its other reads; splitting it into %s to find the range it"
                " ignores",
                self._name,
                exc,
                dev.unit,
                ", ".join(f"{p.start}..{p.end}" for p in parts),
            )
            return [PlannedRead(part, strikes=1) for part in parts]
        read.quarantined_until = asyncio.get_running_loop().time() + QUARANTINE_S
        _log.warning("modbus %s: %s", self._name, self.quarantine_reason(dev, read.req))
        return [read]

    def quarantine_reason(self, dev: Device, req: ReadRequest) -> str:
        return (
            f"unit {dev.unit} never answers {self.where(dev, req)} although it answers its other reads:"
            f" check the address map of device {dev.config.name}; retried every {QUARANTINE_S:.0f} s"
        )

    def _log_once(self, dev: Device, req: ReadRequest, what: str, msg: str, *args: object) -> None:
        key = (dev.unit, req.table, req.start, req.count, what)
        if key not in self._logged:
            self._logged.add(key)
            _log.warning("modbus %s: " + msg, self._name, *args)
