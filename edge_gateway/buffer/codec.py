"""Reading <-> bytes for buffer records: a compact binary payload, and the JSON one it replaced.

``encode_reading`` writes the binary payload (*kind 2*); every decoder also reads the JSON payload
(*kind 1*) of buffers written before it, and of the rare reading kind 2 cannot express. The first byte
tells them apart: a JSON payload always starts with ``[`` (0x5B), a tag never does (its quality bits are
never 3). The record framing (length, CRC) lives in ``disk.py``.

Kind 1, JSON: ``[source, point, value, quality, gateway_ts_ns, source_ts_ns|null, status|null]`` with
quality as 0 GOOD, 1 UNCERTAIN, 2 BAD; strings UTF-8 with lone surrogates kept ("surrogatepass").

Kind 2, binary, little-endian: ``tag, fixed fields, variable bytes, key``

    tag            u8: bits 0-1 quality (0 GOOD, 1 UNCERTAIN, 2 BAD), bit 2 source_ts present,
                   bits 3-4 status kind, bits 5-7 value kind
    fixed fields   gateway_ts_ns i64; the value's fixed part; source_ts_ns i64 (when present);
                   the status's fixed part
    variable bytes the value's bytes, then the status's bytes (when they have any)
    key            u8 length of source (255: a u32 length follows), source, point (the rest)

    value kind     0 None, 1 False, 2 True (no bytes); 3 float f64; 4 int i64; 5 str u32 length +
                   UTF-8; 6 int beyond i64, u32 length + two's complement; 7 anything else JSON can hold
                   (OPC UA arrays and structures), u32 length + JSON text
    status kind    0 None; 1 int i64; 2 str u32 length + UTF-8; 3 anything else, u32 length + JSON text

Strings are UTF-8 with "surrogatepass", so a PLC string with lone surrogates comes back exactly; floats
keep NaN, infinities and -0.0; a reading whose timestamps do not fit i64 is written as kind 1. Type
mapping is exact for bool, int, float, str and None; other values come back as JSON gives them (a tuple
as a list, an int subclass as an int), as with kind 1.

``decode_frames`` is the drain's hot path: it walks the framed records of a segment (so it knows the
frame layout, see ``disk.py``) and decodes the common layouts inline, without a call per record.
"""

from __future__ import annotations

import functools
import json
import math
import struct
from collections.abc import Callable
from typing import Any

from edge_gateway.errors import BufferCorruptError
from edge_gateway.model import Quality, Reading

_QUALITY_CODES = {Quality.GOOD: 0, Quality.UNCERTAIN: 1, Quality.BAD: 2}
_QUALITIES = (Quality.GOOD, Quality.UNCERTAIN, Quality.BAD)
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=True)

_JSON_MARK = 0x5B  # "[": the first byte of every kind 1 payload, never a kind 2 tag

_HAS_SRC = 4
_V_NONE, _V_FALSE, _V_TRUE, _V_FLOAT, _V_INT, _V_STR, _V_BIGINT, _V_JSON = range(8)
_S_NONE, _S_INT, _S_STR, _S_JSON = range(4)
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_KEY_LONG = 255  # a source of this many bytes or more has a u32 length after the marker
_U32 = struct.Struct("<I")
_MAX_KEYS = 65_536  # decoded (source, point) pairs kept; the cache starts over when it is full


def _fixed_format(tag: int) -> str:
    """struct format of the tag byte plus the fixed fields it announces."""
    value, status = tag >> 5, (tag >> 3) & 3
    fmt = "Bq"  # tag, gateway_ts_ns
    fmt += {_V_FLOAT: "d", _V_INT: "q", _V_STR: "I", _V_BIGINT: "I", _V_JSON: "I"}.get(value, "")
    fmt += "q" if tag & _HAS_SRC else ""
    fmt += {_S_INT: "q", _S_STR: "I", _S_JSON: "I"}.get(status, "")
    return fmt


def _valid(tag: int) -> bool:
    return tag & 3 != 3  # noqa: PLR2004 - quality code 3 does not exist (and keeps "[" free)


# Indexed by tag; the entries of invalid tags exist too, the decoder rejects those tags first.
_FIXED: tuple[struct.Struct, ...] = tuple(struct.Struct("<" + _fixed_format(t)) for t in range(256))

# The drain's inline layouts: a float or i64 value and no status, any quality, with or without source_ts.
# Each entry unpacks frame length + payload fixed fields in one call: (length, tag, gw_ts, value[, src_ts]).
_Fast = tuple[Callable[[bytes, int], tuple[Any, ...]], Quality, int, bool]


def _fast_entry(tag: int) -> _Fast | None:
    if not _valid(tag) or tag >> 5 not in (_V_FLOAT, _V_INT) or (tag >> 3) & 3 != _S_NONE:
        return None
    layout = struct.Struct("<I" + _fixed_format(tag))
    return layout.unpack_from, _QUALITIES[tag & 3], layout.size, bool(tag & _HAS_SRC)


_FAST: tuple[_Fast | None, ...] = tuple(_fast_entry(t) for t in range(256))


class CodecError(BufferCorruptError, ValueError):
    """A payload that is not one this codec writes (damage the CRC did not catch, or a newer format)."""


# ---- encoding -------------------------------------------------------------------------------------


def encode_reading(r: Reading) -> bytes:
    """The kind 2 payload of ``r`` (kind 1 when its timestamps do not fit i64).

    Raises TypeError / ValueError for a value or status that cannot be stored (the buffer stores such a
    reading as BAD with the reason, see ``disk._encode_as_bad``).
    """
    source, point, value, quality, gw_ts, src_ts, status = r
    kind = type(value)
    try:
        # The common case (a number, no status) without building argument tuples.
        if status is None and (kind is float or (kind is int and _I64_MIN <= value <= _I64_MAX)):  # type: ignore[operator]
            tag = _QUALITY_CODES[quality] | (_V_FLOAT << 5 if kind is float else _V_INT << 5)
            if src_ts is None:
                return _FIXED[tag].pack(tag, gw_ts, value) + _key(source, point)
            tag |= _HAS_SRC
            return _FIXED[tag].pack(tag, gw_ts, value, src_ts) + _key(source, point)
        return _encode_any(r)
    except (struct.error, AttributeError):
        # A timestamp that is not an int or is beyond i64, a source that is not a str: JSON keeps them.
        return encode_reading_json(r)


def _encode_any(r: Reading) -> bytes:
    source, point, value, quality, gw_ts, src_ts, status = r
    tag, args, tail = _encode_value(_QUALITY_CODES[quality], gw_ts, value)
    if src_ts is not None:
        tag |= _HAS_SRC
        args = (*args, src_ts)
    if status is not None:
        tag, args, status_bytes = _encode_status(tag, args, status)
        tail += status_bytes
    return _FIXED[tag].pack(tag, *args) + tail + _key(source, point)


def _encode_value(tag: int, gw_ts: int, value: object) -> tuple[int, tuple[object, ...], bytes]:
    kind = type(value)
    if kind is float or (kind is int and _I64_MIN <= value <= _I64_MAX):  # type: ignore[operator]
        return tag | (_V_FLOAT if kind is float else _V_INT) << 5, (gw_ts, value), b""
    if value is None:
        return tag | _V_NONE << 5, (gw_ts,), b""
    if kind is bool:
        return tag | (_V_TRUE if value else _V_FALSE) << 5, (gw_ts,), b""
    if kind is str:
        data = value.encode("utf-8", "surrogatepass")  # type: ignore[attr-defined]
        return tag | _V_STR << 5, (gw_ts, len(data)), data
    if kind is int:  # beyond i64 (a Modbus uint64, a Python big int)
        data = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)  # type: ignore[attr-defined]
        return tag | _V_BIGINT << 5, (gw_ts, len(data)), data
    data = _encoder.encode(value).encode("utf-8", "surrogatepass")
    return tag | _V_JSON << 5, (gw_ts, len(data)), data


def _encode_status(tag: int, args: tuple[object, ...], status: object) -> tuple[int, tuple[object, ...], bytes]:
    kind = type(status)
    if kind is int and _I64_MIN <= status <= _I64_MAX:  # type: ignore[operator]
        return tag | _S_INT << 3, (*args, status), b""
    if kind is str:
        data = status.encode("utf-8", "surrogatepass")  # type: ignore[attr-defined]
        return tag | _S_STR << 3, (*args, len(data)), data
    data = _encoder.encode(status).encode("utf-8", "surrogatepass")
    return tag | _S_JSON << 3, (*args, len(data)), data


@functools.lru_cache(maxsize=65_536)
def _key(source: str, point: str) -> bytes:
    s = source.encode("utf-8", "surrogatepass")
    head = bytes((len(s),)) if len(s) < _KEY_LONG else bytes((_KEY_LONG,)) + _U32.pack(len(s))
    return head + s + point.encode("utf-8", "surrogatepass")


def encode_reading_json(r: Reading) -> bytes:
    """The kind 1 (JSON) payload: what buffers before kind 2 held, and the fallback for odd timestamps."""
    # The common case (a number, no status) without the JSON encoder: three times faster, same bytes.
    # Strings from a PLC may hold lone surrogates (asyncua decodes with surrogateescape): "surrogatepass"
    # keeps them exactly, and json.loads() decodes bytes with "surrogatepass" too.
    source, point, v, quality, gw_ts, src_ts, status = r
    kind = type(v)
    if kind is float and math.isfinite(v):  # type: ignore[arg-type]
        text = repr(v)  # the repr of a finite float is valid JSON
    elif kind is int:
        text = str(v)
    else:
        text = _encoder.encode(v)
    return (
        f"{_json_prefix(source, point)}{text},{_QUALITY_CODES[quality]},{gw_ts},"
        f"{'null' if src_ts is None else int(src_ts)},{'null' if status is None else _encoder.encode(status)}]"
    ).encode("utf-8", "surrogatepass")


@functools.lru_cache(maxsize=65_536)
def _json_prefix(source: str, point: str) -> str:
    return f"[{_encoder.encode(source)},{_encoder.encode(point)},"


# ---- decoding -------------------------------------------------------------------------------------

_keys: dict[bytes, tuple[str, str]] = {}


def _source_point(key: bytes) -> tuple[str, str]:
    """(source, point) of a key, cached: a buffer holds few distinct keys, each one many times."""
    found = _keys.get(key)
    if found is not None:
        return found
    n, at = key[0], 1
    if n == _KEY_LONG:
        (n,) = _U32.unpack_from(key, 1)
        at = 5
    if at + n > len(key):
        msg = f"key of {len(key)} bytes announces a source of {n}"
        raise CodecError(msg)
    found = (key[at : at + n].decode("utf-8", "surrogatepass"), key[at + n :].decode("utf-8", "surrogatepass"))
    if len(_keys) >= _MAX_KEYS:
        _keys.clear()
    _keys[bytes(key)] = found
    return found


def decode_reading(data: bytes) -> Reading:
    """One payload of either kind."""
    try:
        if data[0] == _JSON_MARK:
            source, point, value, quality, gw_ts, src_ts, status = json.loads(data)
            return Reading(source, point, value, _QUALITIES[quality], gw_ts, src_ts, status)
        return _decode_binary(data, 0, len(data))
    except CodecError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, struct.error) as exc:
        raise CodecError(f"undecodable payload of {len(data)} bytes: {exc}") from exc


def decode_readings(payloads: list[bytes]) -> list[Reading]:
    """Decode many payloads; runs of JSON ones with one parser call (several times faster)."""
    if all(p[:1] == b"[" for p in payloads):
        return _decode_json_many(payloads)
    return [decode_reading(p) for p in payloads]


def _decode_json_many(payloads: list[bytes]) -> list[Reading]:
    if not payloads:
        return []
    try:
        rows = json.loads(b"[" + b",".join(payloads) + b"]")
        q, new = _QUALITIES, tuple.__new__
        for row in rows:
            if len(row) != 7:  # noqa: PLR2004 - the seven fields of a Reading
                raise CodecError(f"a JSON payload holds {len(row)} fields, not 7")
            row[3] = q[row[3]]
    except (ValueError, TypeError, IndexError) as exc:
        raise CodecError(f"undecodable JSON payloads: {exc}") from exc
    return [new(Reading, row) for row in rows]  # Reading(*row) without the NamedTuple's Python-level __new__


def _decode_binary(buf: bytes, start: int, end: int) -> Reading:
    """The kind 2 payload in ``buf[start:end]``, any layout (the slow path: a call and a few branches)."""
    tag = buf[start]
    if not _valid(tag):
        msg = f"tag 0x{tag:02x} is not a known layout"
        raise CodecError(msg)
    layout = _FIXED[tag]
    fields = layout.unpack_from(buf, start)
    value_kind, status_kind = tag >> 5, (tag >> 3) & 3
    i, at = 2, start + layout.size
    value: object = None
    if value_kind in (_V_FALSE, _V_TRUE):
        value = value_kind == _V_TRUE
    elif value_kind in (_V_FLOAT, _V_INT):
        value, i = fields[2], 3
    elif value_kind != _V_NONE:
        value, at = _variable(value_kind, buf, at, fields[2]), at + fields[2]
        i = 3
    src_ts = None
    if tag & _HAS_SRC:
        src_ts, i = fields[i], i + 1
    status: object = None
    if status_kind == _S_INT:
        status = fields[i]
    elif status_kind != _S_NONE:
        status, at = _variable(_V_STR if status_kind == _S_STR else _V_JSON, buf, at, fields[i]), at + fields[i]
    if at >= end:
        msg = f"payload of {end - start} bytes ends inside its fields"
        raise CodecError(msg)
    source, point = _source_point(buf[at:end])
    return tuple.__new__(Reading, (source, point, value, _QUALITIES[tag & 3], fields[1], src_ts, status))


def _variable(kind: int, buf: bytes, at: int, n: int) -> object:
    data = buf[at : at + n]
    if len(data) != n:
        msg = f"a field of {n} bytes runs past the payload"
        raise CodecError(msg)
    if kind == _V_STR:
        return data.decode("utf-8", "surrogatepass")
    if kind == _V_BIGINT:
        return int.from_bytes(data, "little", signed=True)
    return json.loads(data)


def decode_frames(buf: bytes, pos: int, stop: int, count: int, out: list[Reading]) -> int:
    """Decode up to ``count`` framed records from ``buf[pos:stop]`` onto ``out``; return where it stopped.

    A frame is ``<u32 payload length> payload <4 bytes>`` (the trailing 4 are the CRC, checked by the
    caller over the whole run). It stops before a frame that does not end by ``stop``: the caller decides
    whether that is a chunk boundary or damage. Raises CodecError for a frame it cannot decode; ``out``
    then holds the frames before it and the error's ``args[1]`` is its offset.
    """
    fast, new, keys, source_point = _FAST, tuple.__new__, _keys, _source_point
    length_at, mark = _U32.unpack_from, _JSON_MARK
    append = out.append
    try:
        # This loop runs once per record on the drain path: names are bound locally on purpose.
        while count and pos + 5 <= stop:
            tag = buf[pos + 4]
            entry = fast[tag]
            if entry is not None:
                unpack, quality, key_at, has_src = entry
                if has_src:
                    n, _, gw_ts, value, src_ts = unpack(buf, pos)
                else:
                    n, _, gw_ts, value = unpack(buf, pos)
                    src_ts = None
                end = pos + 4 + n
                if end + 4 > stop:
                    break
                key = buf[pos + key_at : end]
                names = keys.get(key) or source_point(key)
                append(new(Reading, (names[0], names[1], value, quality, gw_ts, src_ts, None)))
            else:
                (n,) = length_at(buf, pos)
                end = pos + 4 + n
                if end + 4 > stop:
                    break
                if tag == mark:
                    append(decode_reading(buf[pos + 4 : end]))
                else:
                    append(_decode_binary(buf, pos + 4, end))
            pos = end + 4
            count -= 1
    except (ValueError, TypeError, IndexError, KeyError, struct.error) as exc:
        if pos + 4 <= stop and pos + 8 + length_at(buf, pos)[0] <= stop:
            raise CodecError(f"undecodable record at byte {pos}: {exc}", pos) from exc
        # else: the frame at pos runs past the data in hand (unpacked before its length was checked)
    return pos
