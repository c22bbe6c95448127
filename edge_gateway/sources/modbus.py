"""Modbus TCP source: deadline-based polling of holding/input registers with coalesced reads.

Contract (sources/base.py): one task per source, never raises for PLC trouble, hands every poll's
readings to the sink in one call. Specifics:
- Polls every ``poll_interval_ms`` on a fixed schedule (next deadline = previous + interval, so no drift);
  a poll that overruns its slot skips the missed slots and counts them in ``errors_by_kind["overrun"]``.
- All points of one poll share one gateway timestamp (Modbus has no source timestamps).
- A Modbus exception response or a timeout of one request makes BAD readings (value None, the reason in
  ``status``) for that request's points; the other requests still deliver.
- A lost connection makes one BAD reading per point (marking the gap), then reconnects with jittered
  backoff; pymodbus's own reconnect and retries are turned off so only one loop runs.
"""

from __future__ import annotations

import asyncio
import logging

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse

from edge_gateway.backoff import Backoff
from edge_gateway.config import ModbusTcpSource
from edge_gateway.model import Quality, Reading, now_ns
from edge_gateway.sources.base import Sink, SourceState, SourceStatus
from edge_gateway.sources.modbus_codec import ReadRequest, decode, plan_reads

_log = logging.getLogger(__name__)

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class _ConnectionLostError(Exception):
    pass


class ModbusReader:
    def __init__(self, config: ModbusTcpSource) -> None:
        self.config = config
        self.name = config.name
        self.status = SourceStatus(config.name)
        self.requests = plan_reads(config.points)
        self.endpoint = f"{config.host}:{config.port}"

    async def run(self, sink: Sink) -> None:
        c = self.config
        backoff = Backoff(c.reconnect_min_s, c.reconnect_max_s)
        while True:
            client = AsyncModbusTcpClient(
                c.host, port=c.port, timeout=c.timeout_s, retries=0, reconnect_delay=0, name=f"modbus:{self.name}"
            )
            try:
                if await client.connect():
                    self._set_state(SourceState.CONNECTED, None)
                    backoff.reset()
                    await self._poll_forever(client, sink)
                else:
                    self._connection_error(f"cannot connect to {self.endpoint}")
            except _ConnectionLostError as exc:
                self._connection_error(str(exc))
                await sink(self._bad_all(str(exc)))
            finally:
                client.close()
            self.status.reconnects += 1
            await asyncio.sleep(backoff.next_delay())

    async def _poll_forever(self, client: AsyncModbusTcpClient, sink: Sink) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.poll_interval_ms / 1000
        deadline = loop.time()
        while True:
            readings = await self._poll_once(client)
            await sink(readings)
            deadline += interval
            now = loop.time()
            if now > deadline:
                missed = int((now - deadline) // interval) + 1
                self.status.errors_by_kind["overrun"] = self.status.errors_by_kind.get("overrun", 0) + missed
                deadline += missed * interval
            await asyncio.sleep(deadline - now)

    async def _poll_once(self, client: AsyncModbusTcpClient) -> list[Reading]:
        ts = now_ns()
        readings: list[Reading] = []
        failed = 0
        for req in self.requests:
            try:
                registers = await self._read(client, req)
            except _RequestError as exc:
                failed += 1
                self.status.error(exc.kind, str(exc))
                readings.extend(self._bad(p.alias, str(exc), ts) for p in req.points)
                continue
            for p in req.points:
                offset = p.address - req.start
                try:
                    value = decode(p, registers[offset : offset + p.register_count])
                except (ValueError, OverflowError) as exc:  # short response
                    readings.append(self._bad(p.alias, f"decode failed: {exc}", ts))
                    continue
                readings.append(Reading(self.name, p.alias, value, Quality.GOOD, ts))
        st = self.status
        st.readings += len(readings)
        st.bad_readings += sum(1 for r in readings if r.quality is Quality.BAD)
        if failed < len(self.requests):
            st.last_good_ns = ts
        return readings

    async def _read(self, client: AsyncModbusTcpClient, req: ReadRequest) -> list[int]:
        where = f"{req.table} registers {req.start}..{req.end} from unit {self.config.unit_id} at {self.endpoint}"
        read = client.read_holding_registers if req.table == "holding" else client.read_input_registers
        try:
            response = await read(req.start, count=req.count, device_id=self.config.unit_id)
        except ConnectionException as exc:
            raise _ConnectionLostError(f"connection to {self.endpoint} lost: {exc}") from exc
        except ModbusIOException as exc:
            if not client.connected:
                raise _ConnectionLostError(f"connection to {self.endpoint} lost: {exc}") from exc
            raise _RequestError("timeout", f"read {where}: no response within {self.config.timeout_s} s") from exc
        except ModbusException as exc:
            raise _RequestError("protocol", f"read {where}: {exc}") from exc
        if isinstance(response, ExceptionResponse) or response.isError():
            code = int(getattr(response, "exception_code", 0))
            name = EXCEPTION_NAMES.get(code, "unknown")
            raise _RequestError("exception", f"modbus exception {code} ({name}) reading {where}")
        registers = list(response.registers)
        if len(registers) < req.count:
            raise _RequestError("short_response", f"read {where}: {len(registers)} of {req.count} registers")
        return registers

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


class _RequestError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
