"""Modbus source: TCP, RTU over a serial line, RTU over TCP; several devices per connection; poll groups.

Contract (sources/base.py): one task per source, never raises for PLC trouble, hands each poll's readings
to the sink in one call. The reference for operators is docs/modbus.md. Specifics:

- One source = one connection or serial line. Each (device, poll group) pair is a *poll*: its points,
  planned into coalesced reads by ``codec.plan_reads``, read every ``interval`` on a fixed grid
  (deadline = previous deadline + interval: no drift). All points of one poll share one gateway timestamp.
- Scheduler (``schedule.Scheduler``, driven by ``dispatch.serve``): at most ``max_outstanding`` requests
  in flight (1 on a serial line, 1 on TCP unless configured: then that many connections). Earliest
  deadline first; among equal deadlines the poll that started longest ago. Polls of one interval start
  spread over it. A poll held up by other traffic starts late, on its grid; slots missed by a whole
  interval, and slots passed while a poll took longer than its own interval (it then waits for its next
  slot), are counted in ``errors_by_kind["overrun"]`` (logged once per episode).
- Errors: an exception response, a timeout, a garbled answer (bad CRC, short frame: bytes came back but no
  valid frame) or an answer of the wrong size makes BAD readings (value None, the reason in ``status``)
  for that read's points, counted per kind on the source and per device (``devices[name]``).
- Exception 2 (illegal data address) to a read covering several points splits it in halves, read again in
  the same poll, down to single points: one wrong address (or a hole the planner bridged) makes only its
  own point BAD. The refined plan is kept for the life of the reader.
- Isolation: a device that gives no valid answer (timeout, garbled) is *backed off*: the rest of that
  poll is not sent (its points are BAD with the same reason) and the device's polls are skipped until a
  jittered, growing delay (``device_backoff_min_s``..``max_s``) has passed; then one poll probes it.
  Meanwhile the other devices on the line keep their rate. Any valid answer resets the device's backoff.
- A read that times out twice while its device answers its other reads is a configuration problem (an
  address range the device ignores): it is split in halves like exception 2, and a single point that
  still gets no answer is *quarantined*: BAD with a reason telling what to check, retried once every
  ``QUARANTINE_S``, never in a hot loop.
- A lost connection (or a serial port that cannot be opened) makes one BAD reading per point (marking
  the gap), then reconnects with jittered backoff; while disconnected nothing is emitted. The backoff
  restarts from its minimum only after an answer, so a peer that accepts and drops connections is not
  hammered. pymodbus's own reconnect and retries are off so only one loop runs.
- Where it lives: this module is the source and its reconnect loop; ``dispatch`` puts due polls on free
  connections, ``poll`` runs one poll and decodes it, ``recovery`` holds the policy above (splits,
  quarantine, device and connection backoff), ``client`` is the one module that talks pymodbus.
- ``CancelledError`` is never swallowed, and one swallowed inside pymodbus still stops the loops at their
  next turn (``raise_if_cancelling``); clients are closed on every exit.
"""

from __future__ import annotations

import asyncio
import logging

from edge_gateway.model import Reading, now_ns
from edge_gateway.sources.base import Sink, SourceState, SourceStatus
from edge_gateway.sources.modbus.client import Connection, ConnectionLostError
from edge_gateway.sources.modbus.codec import ReadRequest, plan_reads
from edge_gateway.sources.modbus.config import ModbusSource
from edge_gateway.sources.modbus.dispatch import serve
from edge_gateway.sources.modbus.poll import Poll, Poller, bad_reading
from edge_gateway.sources.modbus.recovery import Device, PlannedRead, Recovery
from edge_gateway.sources.modbus.schedule import Scheduler
from edge_gateway.util.tasks import raise_if_cancelling

_log = logging.getLogger(__name__)


class ModbusReader:
    def __init__(self, config: ModbusSource) -> None:
        self.config = config
        self.name = config.name
        self.status = SourceStatus(config.name)
        self.endpoint = config.endpoint
        self._devices = [Device(d, config) for d in config.device_list]
        self.devices = {d.config.name: d.status for d in self._devices}
        self._polls: list[Poll] = []
        for dev in self._devices:
            for group in sorted({p.group for p in dev.config.points}):
                points = [p for p in dev.config.points if p.group == group]
                reads = [
                    PlannedRead(r)
                    for r in plan_reads(
                        points,
                        max_gap=config.max_gap_registers,
                        max_gap_bits=config.max_gap_bits,
                        max_registers=config.max_read_registers,
                        max_bits=config.max_read_bits,
                    )
                ]
                self._polls.append(Poll(dev, group, config.interval_ms(group) / 1000, reads))
        self._all_points = config.all_points
        self._recovery = Recovery(config)
        self._poller = Poller(self.name, self.status, self._recovery)
        self._schedule = Scheduler(self._polls, self._count_overrun)
        # Start lateness of recent polls (seconds after their deadline), for benchmarks and diagnosis.
        self.lateness_s = self._schedule.lateness_s

    @property
    def requests(self) -> list[ReadRequest]:
        """The reads of every poll as currently planned (refined after exception 2 or quarantine splits)."""
        return [r.req for poll in self._polls for r in poll.reads]

    async def run(self, sink: Sink) -> None:
        c = self.config
        while True:
            raise_if_cancelling()
            conns = [Connection(c) for _ in range(c.max_outstanding)]
            try:
                if all([await conn.connect() for conn in conns]):
                    self._set_state(SourceState.CONNECTED, None)
                    await serve(self.name, self._schedule, conns, self._poller.poll, sink)
                else:
                    self._connection_error(
                        f"cannot open serial port {self.endpoint}; check that it exists, that this user may open"
                        " it (group dialout) and that no other program holds it"
                        if c.transport == "rtu"
                        else f"cannot connect to {self.endpoint} (refused or no answer within {c.timeout_s} s);"
                        " check that the PLC is up and host/port are right"
                    )
            except ConnectionLostError as exc:
                self._connection_error(str(exc))
                await sink(self._bad_all(str(exc)))
            finally:
                for conn in conns:
                    conn.close()
            self.status.reconnects += 1
            await asyncio.sleep(self._recovery.reconnect_delay())

    # Bookkeeping -----------------------------------------------------------------------------------

    def _count_overrun(self, poll: Poll, missed: int, why: str) -> None:
        kinds = self.status.errors_by_kind
        kinds["overrun"] = kinds.get("overrun", 0) + missed
        if not poll.overrunning:
            poll.overrunning = True
            _log.warning(
                "modbus %s: poll of device %s group %s %s (interval %.0f ms); skipped %d slot(s) (counted in"
                " errors_by_kind.overrun; raise the interval, reduce the points or the devices on this line)",
                self.name,
                poll.device.config.name,
                poll.group,
                why,
                poll.interval_s * 1000,
                missed,
            )

    def _bad_all(self, reason: str) -> list[Reading]:
        ts = now_ns()
        self.status.bad_readings += len(self._all_points)
        self.status.readings += len(self._all_points)
        return [bad_reading(self.name, p.alias, reason, ts) for p in self._all_points]

    def _connection_error(self, message: str) -> None:
        self.status.error("connection", message)
        self._set_state(SourceState.RECONNECTING, message)

    def _set_state(self, state: SourceState, reason: str | None) -> None:
        if self.status.state == state:
            return
        self.status.state = state
        if state is SourceState.CONNECTED:
            _log.info("modbus %s: connected to %s", self.name, self.endpoint)
        else:
            _log.warning("modbus %s: %s; reconnecting with backoff", self.name, reason)
