"""The one place that talks pymodbus: one client of the source's connection, its errors translated.

Contract:
- ``Connection`` is one pymodbus client (Modbus TCP, RTU over TCP, or RTU on a serial line) with
  pymodbus's own reconnect and retries off (``reconnect_delay=0``, ``retries=0``): the reader runs the
  only reconnect loop. ``close()`` may be called in any state.
- ``Connection.read(req, unit)`` returns the values of ``req`` (registers or bits: at least ``req.count``,
  exactly ``req.count`` registers) or raises, ``from`` the pymodbus exception where there is one:
  * ``ConnectionLostError`` when the connection is gone (pymodbus closes a TCP connection itself after a
    few unanswered requests in a row): nothing more can be sent on it, the caller reconnects;
  * ``RequestError`` for this read only, ``kind`` telling what happened: ``timeout`` (no byte came back),
    ``frame`` (bytes came back but no valid frame: bad CRC, short frame), ``protocol`` (an answer for
    another unit or transaction, an answer of the wrong size, or another pymodbus error) or
    ``exception`` (an exception response, its code in ``code``). ``answered`` is true when the device
    sent a valid frame (an exception response, an answer of the wrong size): it is alive.
- No pymodbus exception, response or client leaves this module.
"""

from __future__ import annotations

from typing import Any

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse

from edge_gateway.errors import SourceError
from edge_gateway.sources.modbus.codec import ReadRequest
from edge_gateway.sources.modbus.config import ModbusSource

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
_TABLE_WORDS = {"holding": "holding registers", "input": "input registers", "coil": "coils"}
_TABLE_WORDS["discrete_input"] = "discrete inputs"


class ConnectionLostError(SourceError):
    """The connection (or serial line) is gone; the reader marks the gap and reconnects with backoff."""

    retryable = True


class RequestError(SourceError):
    """One read failed; the connection is still usable. Retryable: the read is sent again at the next
    poll, and the recovery policy (splitting, quarantine, device backoff) handles the ones that keep
    failing."""

    retryable = True

    def __init__(self, kind: str, message: str, code: int | None = None, *, answered: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.answered = answered


def location(req: ReadRequest, unit: int, endpoint: str) -> str:
    """What ``req`` reads, in words: ``holding registers 0..9 from unit 1 at 10.0.0.5:502``."""
    return f"{_TABLE_WORDS[req.table]} {req.start}..{req.end} from unit {unit} at {endpoint}"


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


def _client(config: ModbusSource, wire: _Wire) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
    c = config
    # reconnect_delay=0 and retries=0: pymodbus must not run a second reconnect loop under ours.
    common: dict[str, Any] = {
        "timeout": c.timeout_s,
        "retries": 0,
        "reconnect_delay": 0,
        "name": f"modbus:{c.name}",
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


class Connection:
    """One client of the source's connection; it carries one request at a time."""

    __slots__ = ("_client", "_endpoint", "_timeout_s", "_wire")

    def __init__(self, config: ModbusSource) -> None:
        self._endpoint = config.endpoint
        self._timeout_s = config.timeout_s
        self._wire = _Wire()
        self._client = _client(config, self._wire)

    async def connect(self) -> bool:
        return await self._client.connect()

    def close(self) -> None:
        self._client.close()

    async def read(self, req: ReadRequest, unit: int) -> list[int] | list[bool]:
        """The values of ``req`` from device ``unit``, or an error (see the module docstring)."""
        client, wire = self._client, self._wire
        where = location(req, unit, self._endpoint)
        read: Any = {
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
            "coil": client.read_coils,
            "discrete_input": client.read_discrete_inputs,
        }[req.table]
        try:
            response = await read(req.start, count=req.count, device_id=unit)
        except ConnectionException as exc:
            raise ConnectionLostError(f"connection to {self._endpoint} lost: {exc}") from exc
        except ModbusIOException as exc:
            # pymodbus closes a TCP connection itself after a few unanswered requests in a row.
            if not client.connected:
                raise ConnectionLostError(f"connection to {self._endpoint} lost: {exc}") from exc
            if "id=" in str(exc):  # an answer for another unit or transaction (a late answer)
                raise RequestError("protocol", f"read {where}: {exc}") from exc
            if wire.rx:
                raise RequestError(
                    "frame",
                    f"read {where}: invalid answer (bad CRC or short frame: {len(wire.rx)} bytes"
                    f" {bytes(wire.rx[:16]).hex()}{'...' if len(wire.rx) > 16 else ''})",  # noqa: PLR2004
                ) from exc
            raise RequestError("timeout", f"read {where}: no response within {self._timeout_s} s") from exc
        except ModbusException as exc:
            raise RequestError("protocol", f"read {where}: {exc}") from exc
        if isinstance(response, ExceptionResponse) or response.isError():
            code = int(getattr(response, "exception_code", 0))
            name = EXCEPTION_NAMES.get(code, "unknown")
            raise RequestError("exception", f"modbus exception {code} ({name}) reading {where}", code, answered=True)
        values: list[int] | list[bool] = response.bits if req.bits else response.registers
        if len(values) < req.count or (not req.bits and len(values) != req.count):
            # Decoding an answer of the wrong size would shift every value: refuse it instead.
            raise RequestError("protocol", f"read {where}: got {len(values)} values for {req.count}", answered=True)
        return values
