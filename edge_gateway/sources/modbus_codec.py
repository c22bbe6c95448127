"""Pure Modbus logic: the read planner and register decoding (no I/O, unit-tested on its own).

Planner: points of the same table are coalesced into as few reads as possible. Two points share a read
when the gap of unused registers between them is at most ``max_gap`` and the read stays within
``MAX_REGISTERS`` (125, the Modbus limit for function codes 3/4). Reads are ordered by table and address.

Decoding: registers are big-endian 16-bit words (Modbus). For 32-bit types, ``word_order="big"`` means
the high word comes first (the Modbus convention), ``"little"`` the low word first. The engineering
value is ``raw * scale + offset``; it stays an ``int`` when scale is 1 and offset 0.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from edge_gateway.sources.modbus_config import ModbusPoint

MAX_REGISTERS = 125

_FORMATS = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}


@dataclass(frozen=True, slots=True)
class ReadRequest:
    table: str
    start: int
    count: int
    points: tuple[ModbusPoint, ...]

    @property
    def end(self) -> int:
        """Last register address read (inclusive)."""
        return self.start + self.count - 1


def plan_reads(points: Sequence[ModbusPoint], *, max_gap: int = 8) -> list[ReadRequest]:
    requests: list[ReadRequest] = []
    for table in sorted({p.table for p in points}):
        group = sorted((p for p in points if p.table == table), key=lambda p: p.address)
        current: list[ModbusPoint] = []
        start = end = 0
        for p in group:
            p_end = p.address + p.register_count - 1
            if current and p.address - end - 1 <= max_gap and max(end, p_end) - start + 1 <= MAX_REGISTERS:
                current.append(p)
                end = max(end, p_end)
                continue
            if current:
                requests.append(ReadRequest(table, start, end - start + 1, tuple(current)))
            current, start, end = [p], p.address, p_end
        if current:
            requests.append(ReadRequest(table, start, end - start + 1, tuple(current)))
    return requests


def decode(point: ModbusPoint, registers: Sequence[int]) -> int | float:
    """Decode one point from the registers of its own span (``register_count`` words)."""
    words = list(registers[: point.register_count])
    if len(words) != point.register_count:
        msg = f"{point.alias}: need {point.register_count} register(s), got {len(words)}"
        raise ValueError(msg)
    if point.word_order == "little":
        words.reverse()
    raw: int | float = struct.unpack(_FORMATS[point.data_type], struct.pack(f">{len(words)}H", *words))[0]
    if point.scale == 1 and point.offset == 0:
        return raw
    return raw * point.scale + point.offset


def encode(point: ModbusPoint, raw: float) -> list[int]:
    """The registers that hold ``raw`` for this point (the inverse of ``decode`` before scaling)."""
    words = list(struct.unpack(f">{point.register_count}H", struct.pack(_FORMATS[point.data_type], raw)))
    if point.word_order == "little":
        words.reverse()
    return words
