"""Modbus source: TCP, RTU over a serial line, RTU over TCP; several devices per connection; poll groups.

Contract (sources/base.py): one task per source, never raises for PLC trouble, hands each poll's readings
to the sink in one call. The reference for operators is docs/modbus.md. Specifics:

- One source = one connection or serial line. Each (device, poll group) pair is a *poll*: its points,
  planned into coalesced reads by ``modbus_codec.plan_reads``, read every ``interval`` on a fixed grid
  (deadline = previous deadline + interval: no drift). All points of one poll share one gateway timestamp.
- Scheduler (``modbus_schedule.Scheduler``): at most ``max_outstanding`` requests in flight (1 on a serial
  line, 1 on TCP unless configured: then that many connections). Earliest deadline first; among equal
  deadlines the poll that started longest ago. Polls of one interval start spread over it. A poll held up
  by other traffic starts late, on its grid; slots missed by a whole interval, and slots passed while a
  poll took longer than its own interval (it then waits for its next slot), are counted in
  ``errors_by_kind["overrun"]`` (logged once per episode).
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
- ``CancelledError`` is never swallowed, and one swallowed inside pymodbus still stops the loops at their
  next turn (``raise_if_cancelling``); clients are closed on every exit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse

from edge_gateway.model import Quality, Reading, now_ns
from edge_gateway.sources.base import Sink, SourceState, SourceStatus
from edge_gateway.sources.modbus.codec import ReadRequest, make_request, plan_reads
from edge_gateway.sources.modbus.config import ModbusDevice, ModbusPoint, ModbusSource
from edge_gateway.sources.modbus.schedule import ScheduledPoll, Scheduler
from edge_gateway.util.backoff import Backoff
from edge_gateway.util.tasks import raise_if_cancelling

_log = logging.getLogger(__name__)

ILLEGAL_DATA_ADDRESS = 2
QUARANTINE_S = 60.0
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
_TABLE_WORDS = {"holding": "holding registers", "input": "input registers", "coil": "coils"}
_TABLE_WORDS["discrete_input"] = "discrete inputs"
_NO_ANSWER = frozenset({"timeout", "frame"})

Client = AsyncModbusTcpClient | AsyncModbusSerialClient


def request_for(table: str, points: Sequence[ModbusPoint]) -> ReadRequest:
    """One read covering every point given (all of ``table``), from the lowest to the highest address."""
    ordered = tuple(sorted(points, key=lambda p: p.address))
    start = ordered[0].address
    end = max(p.address + p.register_count - 1 for p in ordered)
    return make_request(table, start, end - start + 1, ordered)


def split_request(req: ReadRequest) -> list[ReadRequest]:
    """Halve a multi-point request by address order (used when the device refuses or ignores its range)."""
    if len(req.points) < 2:  # noqa: PLR2004 - a pair is the smallest thing that splits
        return [req]
    half = len(req.points) // 2
    return [request_for(req.table, req.points[:half]), request_for(req.table, req.points[half:])]


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


class _Device:
    def __init__(self, config: ModbusDevice, source: ModbusSource) -> None:
        self.config = config
        self.unit = config.unit_id
        self.status = DeviceStatus(config.name, config.unit_id)
        self.backoff = Backoff(source.device_backoff_min_s, source.device_backoff_max_s)
        self.retry_at = 0.0


class _Read:
    """One planned read and what the reader learnt about it."""

    __slots__ = ("quarantined_until", "req", "strikes")

    def __init__(self, req: ReadRequest, strikes: int = 0) -> None:
        self.req = req
        self.strikes = strikes  # timeouts in a row while the device answered other reads
        self.quarantined_until = 0.0


class _Poll(ScheduledPoll):
    """One (device, poll group): its planned reads, scheduled on the connection's grid."""

    def __init__(self, device: _Device, group: str, interval_s: float, reads: list[_Read]) -> None:
        super().__init__(interval_s)
        self.device = device
        self.group = group
        self.reads = reads

    def hold_until(self) -> float:
        return self.device.retry_at

    def held(self, slots: int) -> None:
        self.device.status.skipped_polls += slots


class _Wire:
    """Bytes received since the last request was sent: tells a garbled answer from no answer at all."""

    __slots__ = ("rx",)

    def __init__(self) -> None:
        self.rx = bytearray()

    def trace(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self.rx.clear()
        else:
            self.rx += data
        return data


class _PollRun:
    """One poll under way: its connection, device, timestamp, readings so far, and whether it went silent."""

    __slots__ = ("conn", "device", "mark", "out", "silent", "ts")

    def __init__(self, conn: tuple[Client, _Wire], device: _Device, ts: int, mark: int) -> None:
        self.conn = conn
        self.device = device
        self.ts = ts
        self.mark = mark  # the device's answer count when the poll started
        self.out: list[Reading] = []
        self.silent: str | None = None  # the device gave no valid answer: the rest of the poll is not sent

    def bad(self, reader: ModbusReader, req: ReadRequest, reason: str) -> None:
        self.out.extend(reader._bad(p.alias, reason, self.ts) for p in req.points)  # noqa: SLF001


class _ConnectionLostError(Exception):
    pass


class _RequestError(Exception):
    def __init__(self, kind: str, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code


class ModbusReader:
    def __init__(self, config: ModbusSource) -> None:
        self.config = config
        self.name = config.name
        self.status = SourceStatus(config.name)
        self.endpoint = config.endpoint
        self._devices = [_Device(d, config) for d in config.device_list]
        self.devices = {d.config.name: d.status for d in self._devices}
        self._polls: list[_Poll] = []
        for dev in self._devices:
            for group in sorted({p.group for p in dev.config.points}):
                points = [p for p in dev.config.points if p.group == group]
                reads = [
                    _Read(r)
                    for r in plan_reads(
                        points,
                        max_gap=config.max_gap_registers,
                        max_gap_bits=config.max_gap_bits,
                        max_registers=config.max_read_registers,
                        max_bits=config.max_read_bits,
                    )
                ]
                self._polls.append(_Poll(dev, group, config.interval_ms(group) / 1000, reads))
        self._all_points = config.all_points
        self._conn_backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s)
        self._logged: set[tuple[int, str, int, int, str]] = set()
        self._schedule = Scheduler(self._polls, self._count_overrun)
        # Start lateness of recent polls (seconds after their deadline), for benchmarks and diagnosis.
        self.lateness_s = self._schedule.lateness_s

    @property
    def requests(self) -> list[ReadRequest]:
        """The reads of every poll as currently planned (refined after exception 2 or quarantine splits)."""
        return [r.req for poll in self._polls for r in poll.reads]

    # Connection ------------------------------------------------------------------------------------

    def _client(self, wire: _Wire) -> Client:
        c = self.config
        # reconnect_delay=0 and retries=0: pymodbus must not run a second reconnect loop under ours.
        common: dict[str, Any] = {
            "timeout": c.timeout_s,
            "retries": 0,
            "reconnect_delay": 0,
            "name": f"modbus:{self.name}",
            "trace_packet": wire.trace,
        }
        if c.transport == "rtu":
            assert c.serial is not None  # the config validator guarantees it
            s = c.serial
            return AsyncModbusSerialClient(
                s.port,
                framer=FramerType.RTU,
                baudrate=s.baudrate,
                bytesize=s.bytesize,
                parity=s.parity,
                stopbits=s.stop_bits,
                **common,
            )
        framer = FramerType.SOCKET if c.transport == "tcp" else FramerType.RTU
        return AsyncModbusTcpClient(c.host or "", port=c.port, framer=framer, **common)

    async def run(self, sink: Sink) -> None:
        c = self.config
        while True:
            raise_if_cancelling()
            conns = [(self._client(wire), wire) for wire in (_Wire() for _ in range(c.max_outstanding))]
            try:
                if all([await client.connect() for client, _ in conns]):
                    self._set_state(SourceState.CONNECTED, None)
                    await self._serve(conns, sink)
                else:
                    self._connection_error(
                        f"cannot open serial port {self.endpoint}; check that it exists, that this user may open"
                        " it (group dialout) and that no other program holds it"
                        if c.transport == "rtu"
                        else f"cannot connect to {self.endpoint} (refused or no answer within {c.timeout_s} s);"
                        " check that the PLC is up and host/port are right"
                    )
            except _ConnectionLostError as exc:
                self._connection_error(str(exc))
                await sink(self._bad_all(str(exc)))
            finally:
                for client, _ in conns:
                    client.close()
            self.status.reconnects += 1
            await asyncio.sleep(self._conn_backoff.next_delay())

    # Scheduler -------------------------------------------------------------------------------------

    async def _serve(self, conns: list[tuple[Client, _Wire]], sink: Sink) -> None:
        """Dispatch due polls onto free connections until one is lost (then raise ``_ConnectionLostError``)."""
        loop = asyncio.get_running_loop()
        self._schedule.start(loop.time())
        free: asyncio.Queue[tuple[Client, _Wire]] = asyncio.Queue()
        for conn in conns:
            free.put_nowait(conn)
        wake = asyncio.Event()
        lost: list[str] = []

        async def run_poll(conn: tuple[Client, _Wire], poll: _Poll) -> None:
            readings: list[Reading] | None = None
            try:
                readings = await self._poll_once(conn, poll)
            except _ConnectionLostError as exc:
                lost.append(str(exc))
            finally:
                free.put_nowait(conn)  # the line is free while the sink works
            try:
                if readings is not None:
                    await sink(readings)
            finally:
                self._schedule.done(poll, loop.time())
                wake.set()

        async with asyncio.TaskGroup() as tg:
            while not lost:
                raise_if_cancelling()
                conn = await free.get()
                poll = await self._next_due(wake, lost)
                if poll is None:
                    break
                tg.create_task(run_poll(conn, poll), name=f"source:modbus:{self.name}:{poll.device.config.name}")
        raise _ConnectionLostError(lost[0])

    async def _next_due(self, wake: asyncio.Event, lost: list[str]) -> _Poll | None:
        """The next poll to send, once due (None once the connection is lost)."""
        loop = asyncio.get_running_loop()
        while not lost:
            raise_if_cancelling()
            due = self._schedule.pop_due(loop.time())
            if isinstance(due, _Poll):
                return due
            wake.clear()  # a poll finishing (or the connection lost) sets it
            try:
                async with asyncio.timeout(None if due is None else due - loop.time()):
                    await wake.wait()
            except TimeoutError:
                pass
        return None

    # One poll --------------------------------------------------------------------------------------

    async def _poll_once(self, conn: tuple[Client, _Wire], poll: _Poll) -> list[Reading]:
        dev = poll.device
        run = _PollRun(conn, dev, now_ns(), dev.status.answers)
        plan: list[_Read] = []
        now = asyncio.get_running_loop().time()
        for read in poll.reads:
            raise_if_cancelling()
            if run.silent is not None:
                run.bad(self, read.req, run.silent)
                plan.append(read)
            elif read.quarantined_until > now:
                run.bad(self, read.req, self._quarantine_reason(dev, read.req))
                plan.append(read)
            else:
                plan += await self._read_into(run, read)
        if run.silent is not None:
            self._back_off(dev, run.silent)
            if len(plan) > 1:
                plan = plan[1:] + plan[:1]  # the next probe starts with another read
        poll.reads = plan
        self._account(dev, run.out, run.ts)
        return run.out

    async def _read_into(self, run: _PollRun, read: _Read) -> list[_Read]:
        """Read ``read`` and add its points' readings to the poll's; return what replaces it in the plan."""
        req, dev = read.req, run.device
        try:
            values = await self._read(run.conn, dev, req)
        except _RequestError as exc:
            return await self._failed(run, read, exc)
        read.strikes = 0
        if read.quarantined_until:
            read.quarantined_until = 0.0
            _log.info("modbus %s: unit %d answers %s again", self.name, dev.unit, self._where(dev, req))
        name, good, ts, out = self.name, Quality.GOOD, run.ts, run.out
        if req.bits:
            out.extend(Reading(name, p.alias, bool(values[p.address - req.start]), good, ts) for p in req.points)
            return [read]
        for p, (offset, decoder) in zip(req.points, req.decoders, strict=True):
            try:
                out.append(Reading(name, p.alias, decoder(values, offset), good, ts))
            except ValueError as exc:
                self.status.error("decode", str(exc))
                dev.status.error("decode", str(exc))
                out.append(self._bad(p.alias, f"{exc} (at {self._where(dev, req)})", ts))
        return [read]

    async def _failed(self, run: _PollRun, read: _Read, exc: _RequestError) -> list[_Read]:
        req, dev = read.req, run.device
        if exc.code == ILLEGAL_DATA_ADDRESS and len(req.points) > 1:
            parts = split_request(req)
            spans = ", ".join(f"{p.start}..{p.end}" for p in parts)
            self._log_once(dev, req, "split", "%s; splitting %d points into reads of %s", exc, len(req.points), spans)
            replacement: list[_Read] = []
            for part in parts:
                if run.silent is not None:
                    run.bad(self, part, run.silent)
                    replacement.append(_Read(part))
                else:
                    replacement += await self._read_into(run, _Read(part))
            return replacement
        self.status.error(exc.kind, str(exc))
        dev.status.error(exc.kind, str(exc))
        run.bad(self, req, str(exc))
        if exc.kind in _NO_ANSWER:
            if dev.status.answers > run.mark:  # it answered other reads of this poll, not this one
                read.strikes += 1
                return self._ignored_read(dev, read, exc)
            run.silent = str(exc)
        elif exc.code is not None:
            self._log_once(dev, req, f"exception{exc.code}", "%s", exc)
        return [read]

    def _ignored_read(self, dev: _Device, read: _Read, exc: _RequestError) -> list[_Read]:
        """A read that got no answer twice while the device answered others: split it, or quarantine it."""
        if read.strikes < 2:  # noqa: PLR2004 - once may be a glitch
            return [read]
        if len(read.req.points) > 1:
            parts = split_request(read.req)
            _log.warning(
                "modbus %s: %s, while unit %d answers its other reads; splitting it into %s to find the range it"
                " ignores",
                self.name,
                exc,
                dev.unit,
                ", ".join(f"{p.start}..{p.end}" for p in parts),
            )
            return [_Read(part, strikes=1) for part in parts]
        read.quarantined_until = asyncio.get_running_loop().time() + QUARANTINE_S
        _log.warning("modbus %s: %s", self.name, self._quarantine_reason(dev, read.req))
        return [read]

    def _quarantine_reason(self, dev: _Device, req: ReadRequest) -> str:
        return (
            f"unit {dev.unit} never answers {self._where(dev, req)} although it answers its other reads:"
            f" check the address map of device {dev.config.name}; retried every {QUARANTINE_S:.0f} s"
        )

    def _where(self, dev: _Device, req: ReadRequest) -> str:
        return f"{_TABLE_WORDS[req.table]} {req.start}..{req.end} from unit {dev.unit} at {self.endpoint}"

    async def _read(self, conn: tuple[Client, _Wire], dev: _Device, req: ReadRequest) -> list[int] | list[bool]:
        """The values of ``req`` (registers or bits, at least ``req.count``), or an error."""
        client, wire = conn
        where = self._where(dev, req)
        read: Any = {
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
            "coil": client.read_coils,
            "discrete_input": client.read_discrete_inputs,
        }[req.table]
        dev.status.requests += 1
        try:
            response = await read(req.start, count=req.count, device_id=dev.unit)
        except ConnectionException as exc:
            raise _ConnectionLostError(f"connection to {self.endpoint} lost: {exc}") from exc
        except ModbusIOException as exc:
            # pymodbus closes a TCP connection itself after a few unanswered requests in a row.
            if not client.connected:
                raise _ConnectionLostError(f"connection to {self.endpoint} lost: {exc}") from exc
            if "id=" in str(exc):  # an answer for another unit or transaction (a late answer)
                raise _RequestError("protocol", f"read {where}: {exc}") from exc
            if wire.rx:
                raise _RequestError(
                    "frame",
                    f"read {where}: invalid answer (bad CRC or short frame: {len(wire.rx)} bytes"
                    f" {bytes(wire.rx[:16]).hex()}{'...' if len(wire.rx) > 16 else ''})",  # noqa: PLR2004
                ) from exc
            raise _RequestError("timeout", f"read {where}: no response within {self.config.timeout_s} s") from exc
        except ModbusException as exc:
            raise _RequestError("protocol", f"read {where}: {exc}") from exc
        self._answered(dev)
        if isinstance(response, ExceptionResponse) or response.isError():
            code = int(getattr(response, "exception_code", 0))
            name = EXCEPTION_NAMES.get(code, "unknown")
            raise _RequestError("exception", f"modbus exception {code} ({name}) reading {where}", code)
        values: list[int] | list[bool] = response.bits if req.bits else response.registers
        if len(values) < req.count or (not req.bits and len(values) != req.count):
            # Decoding an answer of the wrong size would shift every value: refuse it instead.
            raise _RequestError("protocol", f"read {where}: got {len(values)} values for {req.count}")
        return values

    def _answered(self, dev: _Device) -> None:
        dev.status.answers += 1
        self._conn_backoff.reset()
        if dev.retry_at:
            dev.retry_at = 0.0
            dev.backoff.reset()
            if dev.status.state != "ok":
                dev.status.state = "ok"
                _log.info("modbus %s: device %s (unit %d) answers again", self.name, dev.config.name, dev.unit)

    def _back_off(self, dev: _Device, reason: str) -> None:
        delay = dev.backoff.next_delay()
        dev.retry_at = asyncio.get_running_loop().time() + delay
        if dev.status.state != "backing_off":
            dev.status.state = "backing_off"
            _log.warning(
                "modbus %s: device %s (unit %d) gave no valid answer (%s); backing off (retry in %.1f s, growing"
                " to %.0f s) so the other devices keep their rate",
                self.name,
                dev.config.name,
                dev.unit,
                reason,
                delay,
                self.config.device_backoff_max_s,
            )

    # Bookkeeping -----------------------------------------------------------------------------------

    def _account(self, dev: _Device, readings: list[Reading], ts: int) -> None:
        bad = sum(1 for r in readings if r.quality is Quality.BAD)
        st, ds = self.status, dev.status
        st.readings += len(readings)
        st.bad_readings += bad
        ds.readings += len(readings)
        ds.bad_readings += bad
        if bad < len(readings):
            st.last_good_ns = ds.last_good_ns = ts

    def _log_once(self, dev: _Device, req: ReadRequest, what: str, msg: str, *args: object) -> None:
        key = (dev.unit, req.table, req.start, req.count, what)
        if key not in self._logged:
            self._logged.add(key)
            _log.warning("modbus %s: " + msg, self.name, *args)

    def _count_overrun(self, poll: _Poll, missed: int, why: str) -> None:
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

    def _bad(self, alias: str, reason: str, ts: int) -> Reading:
        return Reading(self.name, alias, None, Quality.BAD, ts, None, reason)

    def _bad_all(self, reason: str) -> list[Reading]:
        ts = now_ns()
        self.status.bad_readings += len(self._all_points)
        self.status.readings += len(self._all_points)
        return [self._bad(p.alias, reason, ts) for p in self._all_points]

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
