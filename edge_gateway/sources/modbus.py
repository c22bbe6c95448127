"""Modbus TCP source: deadline-based polling of holding/input registers with coalesced reads.

Contract (sources/base.py): one task per source, never raises for PLC trouble, hands every poll's
readings to the sink in one call. Specifics:
- Polls every ``poll_interval_ms`` on a fixed schedule (next deadline = previous + interval, so no drift);
  a poll that overruns its slot skips the missed slots, counts them in ``errors_by_kind["overrun"]`` and
  logs once per episode (not once per poll).
- All points of one poll share one gateway timestamp (Modbus has no source timestamps).
- Reads are planned by ``modbus_codec.plan_reads`` (same table, small gaps bridged, <= 125 registers).
  A Modbus exception response, a timeout or a malformed answer to one request makes BAD readings
  (value None, the reason in ``status``) for that request's points; the other requests still deliver.
- Exception 2 (illegal data address) to a request covering several points splits it in halves, read
  again in the same poll, down to single points: one wrong address (or a hole the planner bridged)
  makes only its own point BAD. The refined plan is kept for the life of the reader.
- A lost connection makes one BAD reading per point (marking the gap), then reconnects with jittered
  backoff; while disconnected nothing is emitted. The backoff restarts from its minimum only after a
  poll got an answer, so a peer that accepts and drops connections is not hammered. pymodbus's own
  reconnect and retries are turned off so only one loop runs.
- ``CancelledError`` is never swallowed, and one swallowed inside pymodbus still stops the loop at its
  next turn (``raise_if_cancelling``); the client is closed on every exit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse

from edge_gateway.backoff import Backoff
from edge_gateway.model import Quality, Reading, now_ns
from edge_gateway.sources.base import Sink, SourceState, SourceStatus
from edge_gateway.sources.modbus_codec import ReadRequest, decode, plan_reads
from edge_gateway.sources.modbus_config import ModbusPoint, ModbusTcpSource
from edge_gateway.tasks import raise_if_cancelling

_log = logging.getLogger(__name__)

ILLEGAL_DATA_ADDRESS = 2
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


def request_for(table: str, points: Sequence[ModbusPoint]) -> ReadRequest:
    """One read covering every point given (all of ``table``), from the lowest to the highest register."""
    ordered = tuple(sorted(points, key=lambda p: p.address))
    start = ordered[0].address
    end = max(p.address + p.register_count - 1 for p in ordered)
    return ReadRequest(table, start, end - start + 1, ordered)


def split_request(req: ReadRequest) -> list[ReadRequest]:
    """Halve a multi-point request by address order (used when the PLC refuses its range)."""
    if len(req.points) < 2:  # noqa: PLR2004 - a pair is the smallest thing that splits
        return [req]
    half = len(req.points) // 2
    return [request_for(req.table, req.points[:half]), request_for(req.table, req.points[half:])]


class _ConnectionLostError(Exception):
    pass


class _RequestError(Exception):
    def __init__(self, kind: str, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code


class ModbusReader:
    def __init__(self, config: ModbusTcpSource) -> None:
        self.config = config
        self.name = config.name
        self.status = SourceStatus(config.name)
        self.requests = plan_reads(config.points)
        self.endpoint = f"{config.host}:{config.port}"
        self._overrunning = False
        self._answered = False  # did the current poll get any answer (data or exception) from the PLC?

    async def run(self, sink: Sink) -> None:
        c = self.config
        backoff = Backoff(c.reconnect_min_s, c.reconnect_max_s)
        while True:
            raise_if_cancelling()
            # reconnect_delay=0 and retries=0: pymodbus must not run a second reconnect loop under ours.
            client = AsyncModbusTcpClient(
                c.host, port=c.port, timeout=c.timeout_s, retries=0, reconnect_delay=0, name=f"modbus:{self.name}"
            )
            try:
                if await client.connect():
                    self._set_state(SourceState.CONNECTED, None)
                    await self._poll_forever(client, sink, backoff)
                else:
                    self._connection_error(
                        f"cannot connect to {self.endpoint} (refused or no answer within {c.timeout_s} s);"
                        " check that the PLC is up and host/port are right"
                    )
            except _ConnectionLostError as exc:
                self._connection_error(str(exc))
                await sink(self._bad_all(str(exc)))
            finally:
                client.close()
            self.status.reconnects += 1
            await asyncio.sleep(backoff.next_delay())

    async def _poll_forever(self, client: AsyncModbusTcpClient, sink: Sink, backoff: Backoff) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.poll_interval_ms / 1000
        deadline = loop.time()
        while True:
            raise_if_cancelling()  # pymodbus's wait_for can swallow a cancel (edge_gateway/tasks.py)
            started = loop.time()
            readings = await self._poll_once(client)
            if self._answered:
                backoff.reset()
            await sink(readings)
            deadline += interval
            now = loop.time()
            if now > deadline:
                missed = int((now - deadline) // interval) + 1
                deadline += missed * interval
                self._count_overrun(missed, now - started)
            else:
                self._overrunning = False
            await asyncio.sleep(deadline - now)

    async def _poll_once(self, client: AsyncModbusTcpClient) -> list[Reading]:
        ts = now_ns()
        readings: list[Reading] = []
        self._answered = False
        plan: list[ReadRequest] = []
        for req in self.requests:
            plan += await self._read_into(client, req, ts, readings)
        self.requests = plan
        st = self.status
        bad = sum(1 for r in readings if r.quality is Quality.BAD)
        st.readings += len(readings)
        st.bad_readings += bad
        if bad < len(readings):
            st.last_good_ns = ts
        return readings

    async def _read_into(
        self, client: AsyncModbusTcpClient, req: ReadRequest, ts: int, out: list[Reading]
    ) -> list[ReadRequest]:
        """Read ``req`` and append its points' readings to ``out``; return what replaces it in the plan."""
        try:
            registers = await self._read(client, req)
        except _RequestError as exc:
            if exc.code == ILLEGAL_DATA_ADDRESS and len(req.points) > 1:
                parts = split_request(req)
                _log.info(
                    "modbus %s: %s; splitting %d points into reads of %s",
                    self.name,
                    exc,
                    len(req.points),
                    ", ".join(f"{p.start}..{p.end}" for p in parts),
                )
                replacement: list[ReadRequest] = []
                for part in parts:
                    replacement += await self._read_into(client, part, ts, out)
                return replacement
            self.status.error(exc.kind, str(exc))
            out.extend(self._bad(p.alias, str(exc), ts) for p in req.points)
            return [req]
        for p in req.points:
            offset = p.address - req.start
            value = decode(p, registers[offset : offset + p.register_count])
            out.append(Reading(self.name, p.alias, value, Quality.GOOD, ts))
        return [req]

    async def _read(self, client: AsyncModbusTcpClient, req: ReadRequest) -> list[int]:
        """The registers of ``req`` (exactly ``req.count``), or ``_RequestError`` / ``_ConnectionLostError``."""
        where = f"{req.table} registers {req.start}..{req.end} from unit {self.config.unit_id} at {self.endpoint}"
        read = client.read_holding_registers if req.table == "holding" else client.read_input_registers
        try:
            response = await read(req.start, count=req.count, device_id=self.config.unit_id)
        except ConnectionException as exc:
            raise _ConnectionLostError(f"connection to {self.endpoint} lost: {exc}") from exc
        except ModbusIOException as exc:
            # pymodbus closes the connection itself after a few unanswered requests in a row.
            if not client.connected:
                raise _ConnectionLostError(f"connection to {self.endpoint} lost: {exc}") from exc
            raise _RequestError("timeout", f"read {where}: no response within {self.config.timeout_s} s") from exc
        except ModbusException as exc:
            raise _RequestError("protocol", f"read {where}: {exc}") from exc
        self._answered = True
        if isinstance(response, ExceptionResponse) or response.isError():
            code = int(getattr(response, "exception_code", 0))
            name = EXCEPTION_NAMES.get(code, "unknown")
            raise _RequestError("exception", f"modbus exception {code} ({name}) reading {where}", code)
        registers = list(response.registers)
        if len(registers) != req.count:
            # Decoding a response of the wrong size would shift every value: refuse it instead.
            raise _RequestError("protocol", f"read {where}: got {len(registers)} registers for {req.count}")
        return registers

    def _count_overrun(self, missed: int, took_s: float) -> None:
        kinds = self.status.errors_by_kind
        kinds["overrun"] = kinds.get("overrun", 0) + missed
        if not self._overrunning:
            self._overrunning = True
            _log.warning(
                "modbus %s: a poll took %.0f ms, longer than poll_interval_ms=%d; skipped %d poll(s)"
                " (counted in errors_by_kind.overrun; raise the interval or reduce the points)",
                self.name,
                took_s * 1000,
                self.config.poll_interval_ms,
                missed,
            )

    def _bad(self, alias: str, reason: str, ts: int) -> Reading:
        return Reading(self.name, alias, None, Quality.BAD, ts, None, reason)

    def _bad_all(self, reason: str) -> list[Reading]:
        ts = now_ns()
        self.status.bad_readings += len(self.config.points)
        self.status.readings += len(self.config.points)
        return [self._bad(p.alias, reason, ts) for p in self.config.points]

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
