"""One poll of one device: send its planned reads, decode the answers into readings, apply the recovery policy.

Contract:
- ``Poller.poll(conn, poll)`` returns one reading per point of the poll, in plan order, all stamped with
  the gateway time taken when the poll started: GOOD with the decoded value, or BAD (value None) with the
  reason in ``status``. It raises only ``ConnectionLostError`` (and ``CancelledError``); every other
  failure is a BAD reading, counted per kind on the source and on the device.
- Reads are sent one after the other on ``conn``. Once the device gave no valid answer (kinds in
  ``NO_ANSWER``, while it answered nothing else in this poll) the rest of the poll is not sent (BAD with
  the same reason) and the device is backed off; a quarantined read is not sent (BAD with the reason).
- ``poll.reads`` is replaced by what the recovery policy made of it (splits); after a silent poll it is
  rotated so the next probe starts with another read.
- The poll's readings are counted on the source and the device (``readings``, ``bad_readings``,
  ``last_good_ns``).
"""

from __future__ import annotations

import asyncio

from edge_gateway.model import Quality, Reading, now_ns
from edge_gateway.sources.base import SourceStatus
from edge_gateway.sources.modbus.client import Connection, RequestError
from edge_gateway.sources.modbus.codec import ReadRequest
from edge_gateway.sources.modbus.recovery import NO_ANSWER, Device, PlannedRead, Recovery
from edge_gateway.sources.modbus.schedule import ScheduledPoll
from edge_gateway.util.tasks import raise_if_cancelling


def bad_reading(source: str, alias: str, reason: str, ts: int) -> Reading:
    return Reading(source, alias, None, Quality.BAD, ts, None, reason)


class Poll(ScheduledPoll):
    """One (device, poll group): its planned reads, scheduled on the connection's grid."""

    def __init__(self, device: Device, group: str, interval_s: float, reads: list[PlannedRead]) -> None:
        super().__init__(interval_s)
        self.device = device
        self.group = group
        self.reads = reads

    def hold_until(self) -> float:
        return self.device.retry_at

    def held(self, slots: int) -> None:
        self.device.status.skipped_polls += slots


class _PollRun:
    """One poll under way: its connection, device, timestamp, readings so far, and whether it went silent."""

    __slots__ = ("conn", "device", "mark", "out", "silent", "source", "ts")

    def __init__(self, source: str, conn: Connection, device: Device, ts: int, mark: int) -> None:
        self.source = source
        self.conn = conn
        self.device = device
        self.ts = ts
        self.mark = mark  # the device's answer count when the poll started
        self.out: list[Reading] = []
        self.silent: str | None = None  # the device gave no valid answer: the rest of the poll is not sent

    def bad(self, req: ReadRequest, reason: str) -> None:
        self.out.extend(bad_reading(self.source, p.alias, reason, self.ts) for p in req.points)


class Poller:
    def __init__(self, name: str, status: SourceStatus, recovery: Recovery) -> None:
        self._name = name
        self._status = status
        self._recovery = recovery

    async def poll(self, conn: Connection, poll: Poll) -> list[Reading]:
        dev = poll.device
        run = _PollRun(self._name, conn, dev, now_ns(), dev.status.answers)
        plan: list[PlannedRead] = []
        now = asyncio.get_running_loop().time()
        for read in poll.reads:
            raise_if_cancelling()
            if run.silent is not None:
                run.bad(read.req, run.silent)
                plan.append(read)
            elif read.quarantined_until > now:
                run.bad(read.req, self._recovery.quarantine_reason(dev, read.req))
                plan.append(read)
            else:
                plan += await self._read_into(run, read)
        if run.silent is not None:
            self._recovery.back_off(dev, run.silent)
            if len(plan) > 1:
                plan = plan[1:] + plan[:1]  # the next probe starts with another read
        poll.reads = plan
        self._account(dev, run.out, run.ts)
        return run.out

    async def _read_into(self, run: _PollRun, read: PlannedRead) -> list[PlannedRead]:
        """Read ``read`` and add its points' readings to the poll's; return what replaces it in the plan."""
        req, dev = read.req, run.device
        dev.status.requests += 1
        try:
            values = await run.conn.read(req, dev.unit)
        except RequestError as exc:
            if exc.answered:
                self._recovery.answered(dev)
            return await self._failed(run, read, exc)
        self._recovery.answered(dev)
        self._recovery.recovered(dev, read)
        name, good, ts, out = self._name, Quality.GOOD, run.ts, run.out
        if req.bits:
            out.extend(Reading(name, p.alias, bool(values[p.address - req.start]), good, ts) for p in req.points)
            return [read]
        for p, (offset, decoder) in zip(req.points, req.decoders, strict=True):
            try:
                out.append(Reading(name, p.alias, decoder(values, offset), good, ts))
            except ValueError as exc:
                self._status.error("decode", str(exc))
                dev.status.error("decode", str(exc))
                out.append(bad_reading(name, p.alias, f"{exc} (at {self._recovery.where(dev, req)})", ts))
        return [read]

    async def _failed(self, run: _PollRun, read: PlannedRead, exc: RequestError) -> list[PlannedRead]:
        req, dev = read.req, run.device
        parts = self._recovery.split_refused(dev, req, exc)
        if parts is not None:
            replacement: list[PlannedRead] = []
            for part in parts:
                if run.silent is not None:
                    run.bad(part, run.silent)
                    replacement.append(PlannedRead(part))
                else:
                    replacement += await self._read_into(run, PlannedRead(part))
            return replacement
        self._status.error(exc.kind, str(exc))
        dev.status.error(exc.kind, str(exc))
        run.bad(req, str(exc))
        if exc.kind in NO_ANSWER:
            if dev.status.answers > run.mark:  # it answered other reads of this poll, not this one
                return self._recovery.ignored(dev, read, exc)
            run.silent = str(exc)
        elif exc.code is not None:
            self._recovery.exception_once(dev, req, exc)
        return [read]

    def _account(self, dev: Device, readings: list[Reading], ts: int) -> None:
        bad = sum(1 for r in readings if r.quality is Quality.BAD)
        st, ds = self._status, dev.status
        st.readings += len(readings)
        st.bad_readings += bad
        ds.readings += len(readings)
        ds.bad_readings += bad
        if bad < len(readings):
            st.last_good_ns = ds.last_good_ns = ts
