"""OPC UA values to Reading fields: quality from a StatusCode, timestamps, plain values.

- Quality follows the StatusCode severity bits (Good / Uncertain / Bad); the reader keeps the code itself
  in ``Reading.status`` whenever it is not GOOD. A Good value with the Overflow info bit means the
  server's queue for that item dropped values (``server_overflowed``).
- Timestamps: nanoseconds since the Unix epoch, None for a missing or null (1601) one.
- Values: bool, int, float and str pass through; anything else becomes a str: ISO 8601 for DateTime,
  base64 for ByteString, JSON text for arrays and structures, the text of a LocalizedText.
- Size: ``oversize(value, max_bytes)`` is checked before any conversion. It counts a value as it is on
  the wire (UTF-8 bytes of a string, bytes of a ByteString or an ExtensionObject's body, 8 bytes per
  scalar, summed over arrays, matrices and structure fields) and stops counting as soon as the total
  passes ``max_bytes``, so a 10-million-element array costs no more than a small one to refuse.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import json
import math
import uuid
from collections.abc import Callable
from typing import Any

from asyncua import ua

from edge_gateway.model import Quality, Value

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)
_SEVERITY = {0: Quality.GOOD, 1: Quality.UNCERTAIN}
# StatusCode bits 10-11 = 01: the info bits describe a data value; bit 7: the server's queue overflowed.
_INFO_TYPE_MASK, _INFO_TYPE_DATA_VALUE, _OVERFLOW_BIT = 0xC00, 0x400, 0x80


def quality_of(code: int) -> Quality:
    return _SEVERITY.get((code >> 30) & 3, Quality.BAD)


def server_overflowed(code: int) -> bool:
    return code & _INFO_TYPE_MASK == _INFO_TYPE_DATA_VALUE and bool(code & _OVERFLOW_BIT)


def to_ns(ts: dt.datetime | None) -> int | None:
    """Nanoseconds since the Unix epoch; None for a missing or null (pre-1970, e.g. 1601) timestamp."""
    if ts is None:
        return None
    if ts.tzinfo is None:  # asyncua's DateTimes are UTC
        ts = ts.replace(tzinfo=dt.UTC)
    ns = (ts - _EPOCH) // _US * 1000
    return ns if ns > 0 else None


def oversize(value: object, max_bytes: int) -> str | None:
    """Why ``value`` is too large for a Reading (the BAD reading's status), or None when it fits."""
    if value is None or isinstance(value, int | float):  # the hot path: scalars (bool is an int)
        return None
    size = _size(value, max_bytes)
    if size <= max_bytes:
        return None
    if isinstance(value, list | tuple):
        return f"array of {len(value):,} elements (over {max_bytes:,} bytes) exceeds max_value_bytes {max_bytes:,}"
    if isinstance(value, str | bytes | bytearray):
        return f"value of {size:,} bytes exceeds max_value_bytes {max_bytes:,}"
    return f"value of more than {max_bytes:,} bytes exceeds max_value_bytes {max_bytes:,}"


_SCALAR_BYTES = 8


def _size(value: object, budget: int) -> int:
    """Wire size of ``value``, or some number over ``budget`` once it is known to be over."""
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, ua.Variant):
        value = value.Value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):  # structures, ExtensionObjects
        value = [getattr(value, f.name) for f in dataclasses.fields(value)]
    if isinstance(value, list | tuple | dict):
        total = 0
        for x in value.values() if isinstance(value, dict) else value:
            total += _size(x, budget - total)
            if total > budget:
                break
        return total
    return _SCALAR_BYTES  # numbers, booleans, DateTime, NodeId, Guid, StatusCode: small, fixed size


def to_value(value: object) -> Value:
    """A Reading value for whatever a Variant holds (see the module docstring)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)  # IntEnum and friends become plain ints
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    plain = _plain(value)
    if plain is None or isinstance(plain, bool | int | float | str):
        return plain
    return json.dumps(plain, separators=(",", ":"), allow_nan=False, default=str)


def _plain(value: object) -> object:
    """JSON-friendly form of an OPC UA value (scalars stay scalars)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    for types, convert in _CONVERTERS:
        if isinstance(value, types):
            return convert(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # structures (ExtensionObjects)
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return str(value)


def _utc_iso(value: dt.datetime) -> str:
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).isoformat()


_CONVERTERS: tuple[tuple[type | tuple[type, ...], Callable[[Any], object]], ...] = (
    (dt.datetime, _utc_iso),
    ((bytes, bytearray), lambda v: base64.b64encode(v).decode("ascii")),
    (uuid.UUID, str),
    (enum.Enum, lambda v: v.name),
    (ua.LocalizedText, lambda v: v.Text),
    ((ua.QualifiedName, ua.NodeId), lambda v: v.to_string()),
    (ua.StatusCode, lambda v: v.name),
    (ua.Variant, lambda v: _plain(v.Value)),
    ((list, tuple), lambda v: [_plain(x) for x in v]),
    (dict, lambda v: {str(k): _plain(x) for k, x in v.items()}),
)
