"""AWS eventstream framing (the codec), as the awscrt client speaks it; the RPC rules on top of it are in
``simulators.eventstream_rpc``.

Frame (all integers big-endian)::

    u32 total_len | u32 headers_len | u32 prelude_crc | headers | payload | u32 message_crc

``prelude_crc`` is the CRC-32 (``zlib.crc32``, not CRC32C) of the first 8 bytes, ``message_crc`` that of
everything before it. ``total_len`` counts the whole frame (16 bytes of overhead). A header is ``u8 name_len,
name (UTF-8), u8 type, value`` with the types of ``HeaderType``: bools carry no value, integers are signed,
bytes and strings carry a ``u16`` length (at most 32,767), a timestamp is an ``i64`` passed through as is,
a UUID is 16 bytes. ``decode_message`` rejects a bad CRC, a length that does not add up, an unknown type or
a truncated header (``EventStreamError``), and frames over 24 MiB: aws-c-event-stream's limit since 2025,
for headers too (measured: awscrt 0.36.1 takes a 17 MB frame and 180 KB of headers, drops a 25.2 MB frame;
older releases had 16 MiB and 128 KiB).
"""

from __future__ import annotations

import asyncio
import struct
import uuid
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, TypeAlias

MAX_MESSAGE_BYTES: Final = 24 * 1024 * 1024
MAX_HEADER_VALUE_BYTES: Final = 32767
PRELUDE_BYTES: Final = 12
OVERHEAD_BYTES: Final = 16  # prelude + trailing message CRC


class EventStreamError(ValueError):
    """A frame that cannot be decoded: bad CRC, inconsistent lengths, unknown header type, truncation."""


class HeaderType(IntEnum):
    BOOL_TRUE = 0
    BOOL_FALSE = 1
    BYTE = 2
    INT16 = 3
    INT32 = 4
    INT64 = 5
    BYTES = 6
    STRING = 7
    TIMESTAMP = 8
    UUID = 9


HeaderValue: TypeAlias = bool | int | bytes | str | uuid.UUID
_INT_FORMATS: Final = {
    HeaderType.BYTE: ">b",
    HeaderType.INT16: ">h",
    HeaderType.INT32: ">i",
    HeaderType.INT64: ">q",
    HeaderType.TIMESTAMP: ">q",
}


@dataclass(frozen=True, slots=True)
class Header:
    name: str
    type: HeaderType
    value: HeaderValue

    @classmethod
    def string(cls, name: str, value: str) -> Header:
        return cls(name, HeaderType.STRING, value)

    @classmethod
    def int32(cls, name: str, value: int) -> Header:
        return cls(name, HeaderType.INT32, value)

    @classmethod
    def boolean(cls, name: str, value: bool) -> Header:
        return cls(name, HeaderType.BOOL_TRUE if value else HeaderType.BOOL_FALSE, value)


@dataclass(frozen=True, slots=True)
class Message:
    headers: tuple[Header, ...] = ()
    payload: bytes = b""

    def header(self, name: str, header_type: HeaderType | None = None) -> Header | None:
        """The first header of that name (any case) and, when given, that type."""
        wanted = name.lower()
        for h in self.headers:
            if h.name.lower() == wanted and (header_type is None or h.type == header_type):
                return h
        return None


def _encode_header(h: Header) -> bytes:
    name = h.name.encode()
    if not 1 <= len(name) <= 255:
        raise ValueError(f"header name {h.name!r} is {len(name)} bytes: 1..255 allowed")
    head = bytes((len(name),)) + name + bytes((h.type,))
    if h.type in (HeaderType.BOOL_TRUE, HeaderType.BOOL_FALSE):
        return head
    if h.type in _INT_FORMATS:
        if not isinstance(h.value, int) or isinstance(h.value, bool):
            raise TypeError(f"header {h.name!r} of type {h.type.name} needs an int, not {h.value!r}")
        return head + struct.pack(_INT_FORMATS[h.type], h.value)
    if h.type == HeaderType.UUID:
        if not isinstance(h.value, uuid.UUID):
            raise TypeError(f"header {h.name!r} of type UUID needs a uuid.UUID, not {h.value!r}")
        return head + h.value.bytes
    if h.type == HeaderType.STRING and isinstance(h.value, str):
        raw = h.value.encode()
    elif h.type == HeaderType.BYTES and isinstance(h.value, bytes):
        raw = h.value
    else:
        raise TypeError(f"header {h.name!r} of type {h.type.name} cannot hold {h.value!r}")
    if len(raw) > MAX_HEADER_VALUE_BYTES:
        raise ValueError(f"header {h.name!r} value is {len(raw)} bytes, over {MAX_HEADER_VALUE_BYTES}")
    return head + struct.pack(">H", len(raw)) + raw


def encode_message(message: Message) -> bytes:
    headers = b"".join(_encode_header(h) for h in message.headers)
    total = OVERHEAD_BYTES + len(headers) + len(message.payload)
    prelude = struct.pack(">II", total, len(headers))
    body = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + message.payload
    return body + struct.pack(">I", zlib.crc32(body))


def _decode_headers(data: bytes) -> tuple[Header, ...]:
    headers: list[Header] = []
    pos = 0
    try:
        while pos < len(data):
            name_len = data[pos]
            name = data[pos + 1 : pos + 1 + name_len].decode()
            pos += 1 + name_len
            header_type = HeaderType(data[pos])
            pos += 1
            value: HeaderValue
            if header_type in (HeaderType.BOOL_TRUE, HeaderType.BOOL_FALSE):
                value = header_type == HeaderType.BOOL_TRUE
            elif header_type in _INT_FORMATS:
                fmt = _INT_FORMATS[header_type]
                (value,) = struct.unpack_from(fmt, data, pos)
                pos += struct.calcsize(fmt)
            elif header_type == HeaderType.UUID:
                value = uuid.UUID(bytes=data[pos : pos + 16])
                pos += 16
            else:
                (length,) = struct.unpack_from(">H", data, pos)
                raw = data[pos + 2 : pos + 2 + length]
                if len(raw) != length:
                    raise EventStreamError(f"header {name!r} value is truncated")
                value = raw.decode() if header_type == HeaderType.STRING else raw
                pos += 2 + length
            headers.append(Header(name, header_type, value))
    except (IndexError, struct.error, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, EventStreamError):
            raise
        raise EventStreamError(f"malformed headers at byte {pos}: {exc}") from None
    if pos != len(data):
        raise EventStreamError(f"headers overrun their declared length ({pos} > {len(data)} bytes)")
    return tuple(headers)


def _check_prelude(prelude: bytes) -> tuple[int, int]:
    total, headers_len, prelude_crc = struct.unpack(">III", prelude)
    if zlib.crc32(prelude[:8]) != prelude_crc:
        raise EventStreamError(f"prelude CRC mismatch: got {prelude_crc:#010x}")
    if total < OVERHEAD_BYTES or headers_len > total - OVERHEAD_BYTES:
        raise EventStreamError(f"inconsistent lengths: total {total}, headers {headers_len}")
    if total > MAX_MESSAGE_BYTES:
        raise EventStreamError(f"frame of {total} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")
    return total, headers_len


def decode_message(frame: bytes) -> Message:
    """One whole frame, checked (lengths, both CRCs) and decoded."""
    if len(frame) < OVERHEAD_BYTES:
        raise EventStreamError(f"frame of {len(frame)} bytes is shorter than the {OVERHEAD_BYTES}-byte minimum")
    total, headers_len = _check_prelude(frame[:PRELUDE_BYTES])
    if total != len(frame):
        raise EventStreamError(f"frame says {total} bytes but has {len(frame)}")
    (message_crc,) = struct.unpack(">I", frame[-4:])
    if zlib.crc32(frame[:-4]) != message_crc:
        raise EventStreamError(f"message CRC mismatch: got {message_crc:#010x}")
    headers_end = PRELUDE_BYTES + headers_len
    return Message(_decode_headers(frame[PRELUDE_BYTES:headers_end]), frame[headers_end:-4])


async def read_message(reader: asyncio.StreamReader) -> Message | None:
    """The next frame from ``reader``, or None at a clean end of stream (EOF between frames)."""
    try:
        prelude = await reader.readexactly(PRELUDE_BYTES)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise EventStreamError("connection closed inside a frame prelude") from None
    total, _ = _check_prelude(prelude)
    try:
        rest = await reader.readexactly(total - PRELUDE_BYTES)
    except asyncio.IncompleteReadError:
        raise EventStreamError(f"connection closed inside a {total}-byte frame") from None
    return decode_message(prelude + rest)
