"""Settings of a Modbus source (``sources[]`` with ``type: modbus``); the reference is docs/modbus.md.

One source is one connection (Modbus TCP, or RTU framing over TCP to a serial gateway) or one serial
line (RTU). It polls one or more devices (unit ids) on that connection; each point belongs to a poll
group with its own interval. The flat form of earlier versions (``host``, ``port``, ``unit_id``,
``poll_interval_ms``, ``points``) stays valid: it is one device polled in the ``default`` group.

Every cross-field rule raises an error whose text starts with the field it is about, so the loader's
``path: message`` lines say exactly what to fix.

``serial.port`` is a serial device path (``SERIAL_DEVICE``), never a URL: pymodbus hands the string to
pyserial's ``serial_for_url``, whose URL handlers (``spy://`` opens a file for writing, ``loop://``,
``socket://``, ``rfc2217://``, ``hwgrep://``, ``alt://``) would turn a config field into file or network
access. ``load`` is what the source asks of its PLC, for the whole-document budget (config/budget.py).
"""

from __future__ import annotations

import re
from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from edge_gateway.config.common import (
    ALIAS_PATTERN,
    NAME_PATTERN,
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
    Model,
    Reconnecting,
    SourceLoad,
    check_unique,
)

# 'int16', 'uint16' stay first: the loader's message lists the choices in this order.
ModbusDataType = Literal[
    "int16", "uint16", "int32", "uint32", "float32", "int64", "uint64", "float64", "bool", "string", "bcd16", "bcd32"
]
ModbusTable = Literal["holding", "input", "coil", "discrete_input"]
BIT_TABLES = frozenset({"coil", "discrete_input"})
DEFAULT_GROUP = "default"
MAX_REGISTERS = 125  # function codes 3/4: at most 125 registers per read
MAX_BITS = 2000  # function codes 1/2: at most 2,000 bits per read

REGISTERS_OF_TYPE = {
    "int16": 1,
    "uint16": 1,
    "bcd16": 1,
    "bool": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "bcd32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
}
_NUMERIC = frozenset(REGISTERS_OF_TYPE) - {"bool"}
# Serial devices as Linux names them: /dev/tty* (ttyS, ttyUSB, ttyACM, ttyAMA, ttymxc, ...), the udev links
# /dev/serial/by-id/* and /dev/serial/by-path/*, Bluetooth /dev/rfcomm*, and pseudo-terminals /dev/pts/N.
SERIAL_DEVICE = re.compile(r"/dev/(tty[A-Za-z0-9_.-]+|serial/by-(id|path)/[A-Za-z0-9_.:+@=,-]+|rfcomm\d+|pts/\d+)")
SERIAL_FORMS = "/dev/ttyUSB0, /dev/ttyACM0, /dev/ttyAMA0, /dev/ttyS0, /dev/serial/by-id/…, /dev/serial/by-path/…"


def _invalid(message: str) -> PydanticCustomError:
    return PydanticCustomError("modbus_config", "{message}", {"message": message})


class ModbusPoint(Model):
    alias: str = Field(pattern=ALIAS_PATTERN)
    table: ModbusTable = "holding"
    address: int = Field(ge=0, le=65535, description="0-based PDU address (register, or bit for coils/inputs)")
    # Default: "bool" on the bit tables (coil, discrete_input), "uint16" on the register tables.
    data_type: ModbusDataType = "uint16"
    # bool on a register table: which bit of the register (0 = least significant).
    bit: int | None = Field(default=None, ge=0, le=15)
    # string: how many registers it spans (2 characters each).
    length: int | None = Field(default=None, ge=1, le=MAX_REGISTERS)
    # Byte order inside each register: "big" = high byte first (the Modbus convention).
    byte_order: Literal["big", "little"] = "big"
    # Register order of multi-register values: "big" = most significant register first.
    word_order: Literal["big", "little"] = "big"
    scale: float = Field(default=1.0, ge=-1e9, le=1e9)
    offset: float = Field(default=0.0, ge=-1e12, le=1e12)
    group: str = Field(default=DEFAULT_GROUP, pattern=NAME_PATTERN)

    @model_validator(mode="before")
    @classmethod
    def _bool_on_bit_tables(cls, data: Any) -> Any:  # noqa: ANN401 - the raw document
        if isinstance(data, dict) and data.get("table") in BIT_TABLES and "data_type" not in data:
            return data | {"data_type": "bool"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        t, table = self.data_type, self.table
        if table in BIT_TABLES:
            if t != "bool":
                raise _invalid(f"data_type: table {table} holds single bits, so data_type must be bool, not {t}")
            if self.bit is not None:
                raise _invalid(f"bit: only for bool points on a register table, not on table {table}")
        elif t == "bool" and self.bit is None:
            raise _invalid(f"bit: required for a bool point on table {table} (0 = least significant bit)")
        elif t != "bool" and self.bit is not None:
            raise _invalid(f"bit: only for data_type bool, not {t}")
        if (t == "string") != (self.length is not None):
            raise _invalid(
                "length: required for data_type string (registers, 2 characters each)"
                if t == "string"
                else f"length: only for data_type string, not {t}"
            )
        if t not in _NUMERIC and (self.scale != 1 or self.offset != 0):
            raise _invalid(f"scale: scale and offset apply to numbers only, not to data_type {t}")
        if self.address + self.register_count - 1 > 65535:  # noqa: PLR2004 - the last PDU address
            raise _invalid(f"address: {t} at {self.address} would run past address 65535")
        return self

    @property
    def register_count(self) -> int:
        """How many units of its table the point spans (bits on coil/discrete_input, else registers)."""
        if self.data_type == "string":
            return self.length or 1
        return REGISTERS_OF_TYPE[self.data_type]

    @property
    def bit_table(self) -> bool:
        return self.table in BIT_TABLES


class ModbusDevice(Model):
    name: str = Field(pattern=NAME_PATTERN)
    unit_id: int = Field(ge=0, le=255)
    points: list[ModbusPoint] = Field(min_length=1)


class PollGroup(Model):
    name: str = Field(pattern=NAME_PATTERN)
    interval_ms: int = Field(ge=10, le=3_600_000)


class SerialSettings(Model):
    port: str = Field(min_length=1, max_length=255, description="serial device, e.g. /dev/ttyUSB0")
    baudrate: int = Field(default=19200, ge=300, le=4_000_000)
    bytesize: Literal[7, 8] = 8
    # The Modbus serial line specification's default is even parity.
    parity: Literal["N", "E", "O"] = "E"
    stop_bits: Literal[1, 2] = 1

    @field_validator("port")
    @classmethod
    def _device_path(cls, port: str) -> str:
        if "://" in port:
            msg = (
                f"{port!r} is a URL; give the serial device path ({SERIAL_FORMS}): pyserial's URL handlers"
                " (spy://, loop://, socket://, rfc2217://, hwgrep://, alt://) open files and network connections"
            )
            raise ValueError(msg)
        if not SERIAL_DEVICE.fullmatch(port):
            msg = (
                f"{port!r} is not a serial device path; give one of the forms {SERIAL_FORMS}, /dev/rfcomm0, /dev/pts/N"
            )
            raise ValueError(msg)
        return port


class ModbusTcpSource(Reconnecting):
    """A Modbus source over any transport; the class keeps the name it had when it was TCP only (config.py,
    supervisor.py and the JSON schema's ``$defs`` use it). ``ModbusSource`` is the same class."""

    type: Literal["modbus"]
    name: str = Field(pattern=NAME_PATTERN)
    transport: Literal["tcp", "rtu", "rtu_over_tcp"] = "tcp"
    # tcp and rtu_over_tcp: the PLC or serial gateway.
    host: str | None = Field(default=None, min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    # rtu: the serial line.
    serial: SerialSettings | None = None
    # Flat form (one device): its unit id and points. With ``devices`` leave both out.
    unit_id: int = Field(default=1, ge=0, le=255)
    points: list[ModbusPoint] = Field(default_factory=list)
    devices: list[ModbusDevice] = Field(default_factory=list, max_length=256)
    # Interval of the "default" poll group; ``poll_groups`` adds named groups with their own interval.
    poll_interval_ms: int = Field(default=1000, ge=10, le=3_600_000)
    poll_groups: list[PollGroup] = Field(default_factory=list, max_length=64)
    timeout_s: float = Field(default=2.0, ge=0.05, le=60)
    # Planner: unused registers/bits a read may span to join two points, and the most one read asks for.
    max_gap_registers: int = Field(default=8, ge=0, le=MAX_REGISTERS - 2)
    max_gap_bits: int = Field(default=64, ge=0, le=MAX_BITS - 2)
    max_read_registers: int = Field(default=MAX_REGISTERS, ge=1, le=MAX_REGISTERS)
    max_read_bits: int = Field(default=MAX_BITS, ge=1, le=MAX_BITS)
    # Requests in flight at once; above 1 (tcp only) opens that many connections to the host.
    max_outstanding: int = Field(default=1, ge=1, le=16)
    # A device that stops answering is retried after a jittered, growing delay so the others keep their rate.
    device_backoff_min_s: float = Field(default=1.0, ge=0.05, le=3600)
    device_backoff_max_s: float = Field(default=30.0, ge=0.05, le=3600)
    # A PLC that comes back is polled again within ~5 s (a connect attempt on a plant LAN costs nothing).
    reconnect_max_s: float = Field(default=4.0, ge=RECONNECT_MIN_S, le=RECONNECT_MAX_S)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        self._check_transport()
        if self.devices and (self.points or "unit_id" in self.model_fields_set):
            raise _invalid("devices: give either devices or the flat unit_id/points, not both")
        if not self.devices and not self.points:
            raise _invalid("points: at least one point is required (or list devices, each with its points)")
        devices = self.device_list
        check_unique([d.name for d in devices], "device name")
        check_unique([p.alias for d in devices for p in d.points], "alias")
        groups = {g.name for g in self.poll_groups} | {DEFAULT_GROUP}
        for d in devices:
            if self.transport == "rtu" and not 1 <= d.unit_id <= 247:  # noqa: PLR2004 - serial line unit ids
                raise _invalid(f"unit_id: {d.unit_id} of device {d.name} is not a serial line address (1..247)")
            for p in d.points:
                if p.group not in groups:
                    raise _invalid(f"group: point {p.alias} names poll group {p.group!r}, not in poll_groups")
        if self.device_backoff_min_s > self.device_backoff_max_s:
            raise _invalid(
                f"device_backoff_min_s ({self.device_backoff_min_s}) must not exceed"
                f" device_backoff_max_s ({self.device_backoff_max_s})"
            )
        return self

    def _check_transport(self) -> None:
        if self.transport == "rtu":
            if self.serial is None:
                raise _invalid("serial: required with transport rtu (port, baudrate, parity, stop_bits)")
            if self.host is not None:
                raise _invalid("host: not used with transport rtu (the line is serial.port)")
            if self.max_outstanding != 1:
                raise _invalid("max_outstanding: a serial line carries one request at a time; leave it at 1")
            return
        if self.host is None:
            raise _invalid(f"host: required with transport {self.transport}")
        if self.serial is not None:
            raise _invalid(f"serial: only with transport rtu, not {self.transport}")
        if self.transport == "rtu_over_tcp" and self.max_outstanding != 1:
            raise _invalid("max_outstanding: a serial gateway carries one request at a time; leave it at 1")

    @field_validator("poll_groups")
    @classmethod
    def _unique_groups(cls, groups: list[PollGroup]) -> list[PollGroup]:
        check_unique([g.name for g in groups], "poll group")
        if any(g.name == DEFAULT_GROUP for g in groups):
            raise _invalid(f"poll_groups: {DEFAULT_GROUP!r} is the group of poll_interval_ms; name yours otherwise")
        return groups

    @property
    def device_list(self) -> list[ModbusDevice]:
        """The devices polled, the flat form as one device named after the source."""
        if self.devices:
            return list(self.devices)
        return [ModbusDevice(name=self.name, unit_id=self.unit_id, points=self.points)]

    @property
    def all_points(self) -> list[ModbusPoint]:
        return [p for d in self.device_list for p in d.points]

    def interval_ms(self, group: str) -> int:
        for g in self.poll_groups:
            if g.name == group:
                return g.interval_ms
        return self.poll_interval_ms

    @property
    def load(self) -> SourceLoad:
        """Connections to its host (max_outstanding on tcp, else one) and points per second over its groups."""
        points = self.all_points
        return SourceLoad(
            host=self.serial.port if self.serial is not None else str(self.host),
            connections=self.max_outstanding if self.transport == "tcp" else 1,
            points=len(points),
            points_per_s=sum(1000 / self.interval_ms(p.group) for p in points),
        )

    @property
    def endpoint(self) -> str:
        """Where the source talks to, for messages: host:port or the serial port."""
        if self.serial is not None:
            return self.serial.port
        return f"{self.host}:{self.port}"


ModbusSource = ModbusTcpSource
