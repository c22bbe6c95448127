"""How the simulator lays a typed value into Modbus registers, written apart from the gateway's codec.

The gateway decodes with ``edge_gateway.sources.modbus.codec``; the simulator encodes with this module
(bytes first, then byte swap per register, then register order), so a test that reads back what the
simulator wrote checks the codec against an independent implementation, not against itself.

Orders (per point): ``byte_order`` big = high byte of each register first; ``word_order`` big = most
significant register first. 32-bit 0xAABBCCDD: big/big AABB CCDD, word little CCDD AABB, byte little
BBAA DDCC, both little DDCC BBAA.
"""

from __future__ import annotations

import struct

_INTS = {"int16": (2, True), "uint16": (2, False), "int32": (4, True), "uint32": (4, False)}
_INTS |= {"int64": (8, True), "uint64": (8, False)}
_FLOATS = {"float32": ">f", "float64": ">d"}
_BCD = {"bcd16": 2, "bcd32": 4}


def value_bytes(data_type: str, value: object, length: int | None = None) -> bytes:
    """The value's bytes, most significant first (strings: first character first, NUL padded)."""
    if data_type in _INTS:
        size, signed = _INTS[data_type]
        return int(str(value)).to_bytes(size, "big", signed=signed)
    if data_type in _FLOATS:
        return struct.pack(_FLOATS[data_type], float(str(value)))
    if data_type in _BCD:
        digits = 2 * _BCD[data_type]
        return bytes.fromhex(f"{int(str(value)):0{digits}d}")
    if data_type == "string":
        size = 2 * (length or 1)
        return str(value).encode("latin-1").ljust(size, b"\x00")[:size]
    msg = f"no register layout for data_type {data_type!r}"
    raise ValueError(msg)


def value_words(
    data_type: str, value: object, *, byte_order: str = "big", word_order: str = "big", length: int | None = None
) -> list[int]:
    data = value_bytes(data_type, value, length)
    pairs = [data[i : i + 2] for i in range(0, len(data), 2)]
    if byte_order == "little":
        pairs = [p[::-1] for p in pairs]
    if word_order == "little":
        pairs.reverse()
    return [int.from_bytes(p, "big") for p in pairs]
