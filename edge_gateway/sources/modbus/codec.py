"""Pure Modbus logic: the read planner and value decoding (no I/O, unit-tested on its own).

Planner: points of the same table (of one device and poll group: the caller groups them) are coalesced
into as few reads as possible. Two points share a read when the gap of unused units (registers, or bits
on the coil/discrete_input tables) between them is at most the gap allowance and the read stays within
the read limit (125 registers for function codes 3/4, 2,000 bits for 1/2, or less when configured).
Reads are ordered by table and address. The greedy sweep is optimal here: extending a read as far as the
rules allow never leaves more reads for the rest (checked against brute force in the unit tests).
``split_request`` halves a planned read by address order (the reader refines its plan with it when a
device refuses or ignores a read's range); ``request_for`` is the one read covering given points.

Decoding (register tables): each register is two bytes. ``byte_order="big"`` means the high byte comes
first (the Modbus convention), ``"little"`` swaps the two bytes of every register. ``word_order="big"``
means the most significant register comes first, ``"little"`` reverses the registers (32- and 64-bit
values, BCD32 and strings). So for the 32-bit value 0xAABBCCDD: big/big = AABB CCDD ("ABCD"),
word little = CCDD AABB ("CDAB"), byte little = BBAA DDCC ("BADC"), both little = DDCC BBAA ("DCBA").
- numbers: the engineering value is ``raw * scale + offset``; it stays an ``int`` when scale is 1 and
  offset 0; a scaled value is a ``float``;
- bool on a register: bit ``bit`` (0 = least significant) of the register after the byte swap;
- string: the bytes in order, Latin-1 (every byte is a character), trailing NULs and spaces removed;
- BCD: one decimal digit per nibble, most significant first; a nibble above 9 is a ``ValueError``
  (the reader makes it a BAD reading with that reason, never a wrong number).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edge_gateway.model import Value
from edge_gateway.sources.modbus.config import MAX_BITS, MAX_REGISTERS, ModbusPoint

__all__ = [
    "MAX_BITS",
    "MAX_REGISTERS",
    "Decoder",
    "ReadRequest",
    "decode",
    "decoder_for",
    "encode",
    "plan_reads",
    "request_for",
    "split_request",
]

Decoder = Callable[[Sequence[int], int], Value]
"""Decodes one point from a read's registers, given the offset of the point's first register."""

_STRUCT = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "float32": "f",
    "int64": "q",
    "uint64": "Q",
    "float64": "d",
}


@dataclass(frozen=True, slots=True)
class ReadRequest:
    table: str
    start: int
    count: int
    points: tuple[ModbusPoint, ...]
    # (offset of the point in the read, its decoder), in the order of ``points``; built once per plan.
    decoders: tuple[tuple[int, Decoder], ...] = field(default=(), compare=False, repr=False)

    @property
    def end(self) -> int:
        """Last address read (inclusive)."""
        return self.start + self.count - 1

    @property
    def bits(self) -> bool:
        return self.table in ("coil", "discrete_input")


def make_request(table: str, start: int, count: int, points: Sequence[ModbusPoint]) -> ReadRequest:
    ordered = tuple(points)
    decoders = tuple((p.address - start, decoder_for(p)) for p in ordered)
    return ReadRequest(table, start, count, ordered, decoders)


def plan_reads(
    points: Sequence[ModbusPoint],
    *,
    max_gap: int = 8,
    max_gap_bits: int = 64,
    max_registers: int = MAX_REGISTERS,
    max_bits: int = MAX_BITS,
) -> list[ReadRequest]:
    requests: list[ReadRequest] = []
    for table in sorted({p.table for p in points}):
        group = sorted((p for p in points if p.table == table), key=lambda p: p.address)
        bits = group[0].bit_table
        gap, limit = (max_gap_bits, max_bits) if bits else (max_gap, max_registers)
        current: list[ModbusPoint] = []
        start = end = 0
        for p in group:
            p_end = p.address + p.register_count - 1
            if current and p.address - end - 1 <= gap and max(end, p_end) - start + 1 <= limit:
                current.append(p)
                end = max(end, p_end)
                continue
            if current:
                requests.append(make_request(table, start, end - start + 1, current))
            current, start, end = [p], p.address, p_end
        if current:
            requests.append(make_request(table, start, end - start + 1, current))
    return requests


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


def _words(point: ModbusPoint) -> Callable[[Sequence[int], int], list[int]]:
    """The point's registers in most-significant-first order with bytes high-first."""
    n, reverse, swap = point.register_count, point.word_order == "little", point.byte_order == "little"

    def words(registers: Sequence[int], offset: int) -> list[int]:
        ws = list(registers[offset : offset + n])
        if len(ws) != n:
            msg = f"{point.alias}: need {n} register(s), got {len(ws)}"
            raise ValueError(msg)
        if reverse:
            ws.reverse()
        if swap:
            ws = [((w & 0xFF) << 8) | (w >> 8) for w in ws]
        return ws

    return words


def _bcd(alias: str, words: list[int]) -> int:
    value = 0
    for w in words:
        for shift in (12, 8, 4, 0):
            digit = (w >> shift) & 0xF
            if digit > 9:  # noqa: PLR2004 - a decimal digit
                msg = f"{alias}: register value {w:#06x} is not BCD (nibble {digit:X})"
                raise ValueError(msg)
            value = value * 10 + digit
    return value


def decoder_for(point: ModbusPoint) -> Decoder:
    """A function decoding ``point`` from a read's registers at a given offset (built once, called per poll)."""
    t, scale, offset = point.data_type, point.scale, point.offset
    words = _words(point)
    raw: Decoder
    if t == "bool":
        mask = 1 << (point.bit or 0)
        return lambda regs, off: bool(words(regs, off)[0] & mask)
    if t == "string":

        def text(regs: Sequence[int], off: int) -> str:
            data = struct.pack(f">{point.register_count}H", *words(regs, off))
            return data.decode("latin-1").rstrip("\x00 ")

        return text
    if t in ("bcd16", "bcd32"):
        alias = point.alias

        def bcd(regs: Sequence[int], off: int) -> int:
            return _bcd(alias, words(regs, off))

        raw = bcd
    elif t == "uint16" and point.byte_order == "big":
        # The common case on the hot path: no list, no struct.
        def u16(regs: Sequence[int], off: int) -> int:
            return regs[off]

        raw = u16
    else:
        unpack = struct.Struct(f">{_STRUCT[t]}").unpack
        pack = struct.Struct(f">{point.register_count}H").pack

        def number(regs: Sequence[int], off: int) -> int | float:
            value: int | float = unpack(pack(*words(regs, off)))[0]
            return value

        raw = number
    if scale == 1 and offset == 0:
        return raw
    return lambda regs, off: raw(regs, off) * scale + offset  # type: ignore[operator,unused-ignore]


def decode(point: ModbusPoint, registers: Sequence[int]) -> Value:
    """Decode one point from the registers of its own span (``register_count`` words)."""
    if len(registers) < point.register_count:
        msg = f"{point.alias}: need {point.register_count} register(s), got {len(registers)}"
        raise ValueError(msg)
    return decoder_for(point)(registers, 0)


def encode(point: ModbusPoint, raw: float) -> list[int]:
    """The registers that hold the number ``raw`` for this point (the inverse of ``decode`` before scaling)."""
    data = struct.pack(f">{_STRUCT[point.data_type]}", raw)
    words = list(struct.unpack(f">{point.register_count}H", data))
    if point.byte_order == "little":
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    if point.word_order == "little":
        words.reverse()
    return words
