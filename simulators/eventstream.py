"""AWS eventstream framing and the eventstream RPC server rules, as the awscrt client speaks them.

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

RPC layer (aws-c-event-stream's server, which the Greengrass nucleus runs): every frame carries
``:message-type``, ``:message-flags`` and ``:stream-id`` as INT32 headers (names compared without case).
``RpcServerConnection`` enforces, as that server does:

- The first frame MUST be CONNECT (type 4) with ``:version`` "0.1.0"; the service's ``authenticate`` decides.
  Accepted: CONNECT_ACK with flag CONNECTION_ACCEPTED. Refused: CONNECT_ACK with flags 0, then the
  connection waits (a few seconds) for the client to hang up, so the client reports AccessDeniedError
  rather than a socket error.
- Stream id 0 carries PING (answered by PING_RESPONSE echoing the headers not starting with ``:`` and the
  payload) and connection-level messages; application messages (types 0, 1) MUST use a stream id > 0.
- A new stream id MUST be the last one + 1 and its first frame MUST name the ``operation``. A frame on a
  closed stream is ignored if it terminates it, else it is a protocol error. Every protocol error is a
  PROTOCOL_ERROR frame with a JSON message, then the connection closes.
- A frame with TERMINATE_STREAM (flag 0x2) closes its stream on either side; the service hears
  ``on_stream_closed`` once per stream, also when the connection ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import Final, Protocol, TypeAlias

_log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES: Final = 24 * 1024 * 1024
MAX_HEADER_VALUE_BYTES: Final = 32767
PRELUDE_BYTES: Final = 12
OVERHEAD_BYTES: Final = 16  # prelude + trailing message CRC
RPC_VERSION: Final = "0.1.0"
CONTENT_TYPE_JSON: Final = "application/json"
# How long a refused client gets to hang up before the server closes the socket itself.
REFUSED_LINGER_S: Final = 5.0


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


# ---- RPC layer ---------------------------------------------------------------------------------------


class MessageType(IntEnum):
    APPLICATION_MESSAGE = 0
    APPLICATION_ERROR = 1
    PING = 2
    PING_RESPONSE = 3
    CONNECT = 4
    CONNECT_ACK = 5
    PROTOCOL_ERROR = 6
    INTERNAL_ERROR = 7


class MessageFlag(IntFlag):
    NONE = 0
    CONNECTION_ACCEPTED = 1
    TERMINATE_STREAM = 2


# aws-c-event-stream's connection-level error texts.
_ERR_MISSING_FIELDS: Final = (
    "A message was received with missing required fields. Check that your client is sending at least, "
    ":message-type, :message-flags, and :stream-id"
)
_ERR_CONNECT_FIRST: Final = (
    "A CONNECT message must be received, and the CONNECT_ACK must be sent in response, before any other "
    "message-types can be sent on this connection. In addition, only one CONNECT message is allowed on a connection."
)
_ERR_MESSAGE_TYPE: Final = "an invalid value for message-type field was received."
_ERR_STREAM_TYPE: Final = (
    "non-zero stream-id field is only allowed for messages of type APPLICATION_MESSAGE. "
    "The stream id max value is INT32_MAX."
)
_ERR_OLD_STREAM: Final = (
    "stream-id values must be monotonically incrementing. A stream-id arrived that was lower than the last seen "
    "stream-id."
)
_ERR_NEW_STREAM: Final = (
    "stream-id values must be monotonically incrementing. A new stream-id arrived that was incremented by more than 1."
)
_ERR_NO_OPERATION: Final = "The first message for on a non-zero :stream-id must contain an operation header value."


def rpc_message(
    message_type: MessageType,
    flags: MessageFlag,
    stream_id: int,
    headers: Sequence[Header] = (),
    payload: bytes = b"",
) -> Message:
    rpc = (
        Header.int32(":message-type", message_type),
        Header.int32(":message-flags", flags),
        Header.int32(":stream-id", stream_id),
    )
    return Message((*headers, *rpc), payload)  # awscrt's order: the caller's headers, then these


class ProtocolError(Exception):
    """A client broke the RPC rules; ``message`` is what the PROTOCOL_ERROR frame tells it."""


def rpc_fields(message: Message) -> tuple[int, int, int, str | None]:
    """``(message type, flags, stream id, operation or None)``; ProtocolError when one of the first three is missing."""
    values = [message.header(n, HeaderType.INT32) for n in (":message-type", ":message-flags", ":stream-id")]
    if any(v is None for v in values):
        raise ProtocolError(_ERR_MISSING_FIELDS)
    message_type, flags, stream_id = (int(v.value) for v in values if v is not None)
    operation = message.header("operation", HeaderType.STRING)
    return message_type, flags, stream_id, str(operation.value) if operation is not None else None


class RpcService(Protocol):
    """What a connection asks of the service behind it. Callbacks run on the event loop and must not block."""

    def authenticate(self, payload: bytes) -> str | None:
        """The principal named by a CONNECT payload, or None to refuse the connection."""

    def on_request(self, stream: RpcStream, message: Message) -> None:
        """The first message of a new stream (``stream.operation`` names the operation)."""

    def on_stream_message(self, stream: RpcStream, message: Message) -> None:
        """A later, non-terminating message on an open stream."""

    def on_stream_closed(self, stream: RpcStream) -> None:
        """The stream closed (either side terminated it, or the connection ended); called once."""


@dataclass(eq=False, slots=True)
class RpcStream:
    connection: RpcServerConnection
    stream_id: int
    operation: str
    closed: bool = False

    @property
    def principal(self) -> str:
        return self.connection.principal or ""

    def send(self, message_type: MessageType, headers: Sequence[Header], payload: bytes, *, terminate: bool) -> None:
        """Send on this stream; nothing is sent once it is closed. ``terminate`` closes it."""
        if self.closed:
            return
        flags = MessageFlag.TERMINATE_STREAM if terminate else MessageFlag.NONE
        self.connection.send(rpc_message(message_type, flags, self.stream_id, headers, payload))
        if terminate:
            self.connection.close_stream(self)


@dataclass(eq=False)
class RpcServerConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    service: RpcService
    principal: str | None = field(default=None, init=False)  # the authenticated component, after CONNECT
    _latest_stream_id: int = field(default=0, init=False)
    _streams: dict[int, RpcStream] = field(default_factory=dict, init=False)
    _closing: bool = field(default=False, init=False)

    def send(self, message: Message) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode_message(message))

    def close_stream(self, stream: RpcStream) -> None:
        if stream.closed:
            return
        stream.closed = True
        self._streams.pop(stream.stream_id, None)
        try:
            self.service.on_stream_closed(stream)
        except Exception:  # noqa: BLE001 - a bug in the service must not take the connection down
            _log.exception("eventstream: on_stream_closed failed for %s", stream.operation)

    def _protocol_error(self, text: str) -> None:
        _log.warning("eventstream: protocol error from %s: %s", self.principal or "an unauthenticated client", text)
        payload = json.dumps({"message": text}).encode()
        headers = (Header.string(":content-type", CONTENT_TYPE_JSON),)
        self.send(rpc_message(MessageType.PROTOCOL_ERROR, MessageFlag.NONE, 0, headers, payload))
        self._closing = True

    async def run(self) -> None:
        """Serve the connection until the client leaves or breaks the protocol; closes it on return."""
        try:
            while not self._closing:
                message = await read_message(self.reader)
                if message is None:
                    break
                try:
                    await self._dispatch(message)
                except ProtocolError as exc:
                    self._protocol_error(str(exc))
                await self.writer.drain()
        except EventStreamError as exc:
            _log.warning("eventstream: closing the connection of %s: %s", self.principal or "a client", exc)
        except ConnectionError:
            pass
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        self._closing = True
        for stream in list(self._streams.values()):
            self.close_stream(stream)
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    async def _dispatch(self, message: Message) -> None:
        message_type, flags, stream_id, operation = rpc_fields(message)
        if self.principal is None and message_type != MessageType.CONNECT:
            raise ProtocolError(_ERR_CONNECT_FIRST)
        if stream_id == 0:
            await self._on_connection_message(message, message_type)
            return
        self._on_stream_frame(message, message_type, flags, stream_id, operation)

    def _on_stream_frame(
        self, message: Message, message_type: int, flags: int, stream_id: int, operation: str | None
    ) -> None:
        if message_type > MessageType.APPLICATION_ERROR or stream_id < 0:
            raise ProtocolError(_ERR_STREAM_TYPE)
        terminate = bool(flags & MessageFlag.TERMINATE_STREAM)
        if stream_id <= self._latest_stream_id:
            stream = self._streams.get(stream_id)
            if stream is None:
                if not terminate:  # a terminate crossing our own close is normal
                    raise ProtocolError(_ERR_OLD_STREAM)
            elif terminate:
                self.close_stream(stream)
            else:
                self.service.on_stream_message(stream, message)
            return
        if stream_id != self._latest_stream_id + 1:
            raise ProtocolError(_ERR_NEW_STREAM)
        if not operation:
            raise ProtocolError(_ERR_NO_OPERATION)
        self._latest_stream_id = stream_id
        if terminate:  # a request hung up at once: the operation is not invoked (as the nucleus does)
            return
        stream = RpcStream(self, stream_id, operation)
        self._streams[stream_id] = stream
        self.service.on_request(stream, message)

    async def _on_connection_message(self, message: Message, message_type: int) -> None:
        if message_type == MessageType.PING_RESPONSE:
            return
        if message_type == MessageType.PING:
            echo = tuple(h for h in message.headers if not h.name.startswith(":"))
            self.send(rpc_message(MessageType.PING_RESPONSE, MessageFlag.NONE, 0, echo, message.payload))
            return
        if message_type != MessageType.CONNECT or self.principal is not None:
            raise ProtocolError(_ERR_CONNECT_FIRST if message_type == MessageType.CONNECT else _ERR_MESSAGE_TYPE)
        version = message.header(":version", HeaderType.STRING)
        principal = self.service.authenticate(message.payload) if version and version.value == RPC_VERSION else None
        if principal is not None:
            self.principal = principal
            self.send(rpc_message(MessageType.CONNECT_ACK, MessageFlag.CONNECTION_ACCEPTED, 0))
            return
        _log.info("eventstream: connection refused (version %r or auth token not accepted)", version)
        self.send(rpc_message(MessageType.CONNECT_ACK, MessageFlag.NONE, 0))
        await self.writer.drain()
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(REFUSED_LINGER_S):
                while await self.reader.read(4096):
                    pass
        self._closing = True
