"""Eventstream framing: round trips, every corruption detected, and the format checked against awscrt itself.

awscrt exposes no encoder or decoder to Python, but its RPC client encodes and decodes real frames: the
interop tests run it against a bare Unix socket (a few milliseconds, no broker) so the format is proven on
both sides - frames awscrt writes decode here and re-encode byte for byte, frames written here decode in
awscrt with every header type intact - and a golden frame captured from it pins the bytes.
"""

from __future__ import annotations

import asyncio
import struct
import tempfile
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from awscrt import io as crt_io
from awscrt.eventstream import Header as CrtHeader
from awscrt.eventstream import HeaderType as CrtHeaderType
from awscrt.eventstream import rpc as crt_rpc

from simulators.eventstream import (
    MAX_HEADER_VALUE_BYTES,
    MAX_MESSAGE_BYTES,
    EventStreamError,
    Header,
    HeaderType,
    Message,
    decode_message,
    encode_message,
    read_message,
)
from simulators.eventstream_rpc import MessageFlag, MessageType, ProtocolError, rpc_fields, rpc_message

UUID = uuid.UUID("0123456789abcdef0123456789abcdef")
# One header of every type, with values at or near their limits.
EVERY_TYPE = (
    Header("t", HeaderType.BOOL_TRUE, value=True),
    Header("f", HeaderType.BOOL_FALSE, value=False),
    Header("byte", HeaderType.BYTE, -7),
    Header("i16", HeaderType.INT16, -30000),
    Header("i32", HeaderType.INT32, 2**31 - 1),
    Header("i64", HeaderType.INT64, -(2**63)),
    Header("buf", HeaderType.BYTES, b"\x00\xffraw"),
    Header("str", HeaderType.STRING, "héllo ✓"),
    Header("ts", HeaderType.TIMESTAMP, 1_700_000_000_123),
    Header("id", HeaderType.UUID, UUID),
)
# The CONNECT frame awscrt 0.36.1 wrote for awsiot.greengrasscoreipc.connect(authtoken="token-1").
GOLDEN_CONNECT = bytes.fromhex(
    "0000007000000048e4f7f604083a76657273696f6e070005302e312e300d3a6d6573736167652d7479706504000000040e3a6d65"
    "73736167652d666c61677304000000000a3a73747265616d2d696404000000007b2261757468546f6b656e223a2022746f6b656e"
    "2d31227d53de5b69"
)


def test_every_header_type_round_trips() -> None:
    message = Message(EVERY_TYPE, b'{"payload": true}')
    assert decode_message(encode_message(message)) == message


def test_empty_message_is_sixteen_bytes_with_both_crcs() -> None:
    frame = encode_message(Message())
    assert len(frame) == 16
    assert struct.unpack(">III", frame[:12]) == (16, 0, zlib.crc32(frame[:8]))
    assert struct.unpack(">I", frame[12:]) == (zlib.crc32(frame[:12]),)


def test_golden_connect_frame_from_awscrt() -> None:
    message = decode_message(GOLDEN_CONNECT)
    assert rpc_fields(message) == (MessageType.CONNECT, 0, 0, None)
    assert message.header(":version") == Header.string(":version", "0.1.0")
    assert message.payload == b'{"authToken": "token-1"}'
    rebuilt = rpc_message(
        MessageType.CONNECT, MessageFlag.NONE, 0, [Header.string(":version", "0.1.0")], message.payload
    )
    assert encode_message(rebuilt) == GOLDEN_CONNECT


@pytest.mark.parametrize(
    ("position", "error"),
    [
        (0, "prelude CRC"),
        (5, "prelude CRC"),
        (9, "prelude CRC"),
        (20, "message CRC"),
        (-10, "message CRC"),
        (-1, "message CRC"),
    ],
)
def test_any_flipped_byte_is_detected(position: int, error: str) -> None:
    frame = bytearray(GOLDEN_CONNECT)
    frame[position] ^= 0x01
    with pytest.raises(EventStreamError, match=error):
        decode_message(bytes(frame))


def _framed(headers: bytes, payload: bytes = b"") -> bytes:
    """A frame with correct lengths and CRCs around arbitrary header bytes."""
    prelude = struct.pack(">II", 16 + len(headers) + len(payload), len(headers))
    body = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + payload
    return body + struct.pack(">I", zlib.crc32(body))


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        (b"\x01a\x0a", "malformed headers"),  # type 10 does not exist
        (b"\x01a\x04\x00\x00", "malformed headers"),  # INT32 cut short
        (b"\x01a\x07\x00\x05abc", "truncated"),  # string shorter than its length
        (b"\x01a\x07\x00\x02\xff\xfe", "malformed headers"),  # string not UTF-8
        (b"\x05ab", "malformed headers"),  # name longer than what is left
    ],
)
def test_malformed_headers_are_refused(headers: bytes, error: str) -> None:
    with pytest.raises(EventStreamError, match=error):
        decode_message(_framed(headers))


def test_inconsistent_lengths_are_refused() -> None:
    prelude = struct.pack(">II", 16, 4)  # 4 bytes of headers cannot fit in a 16-byte frame
    frame = prelude + struct.pack(">I", zlib.crc32(prelude))
    frame += struct.pack(">I", zlib.crc32(frame))
    with pytest.raises(EventStreamError, match="inconsistent lengths"):
        decode_message(frame)
    with pytest.raises(EventStreamError, match="says 112 bytes but has 111"):
        decode_message(GOLDEN_CONNECT[:-1])
    huge = struct.pack(">II", MAX_MESSAGE_BYTES + 1, 0)
    with pytest.raises(EventStreamError, match="over the 25165824-byte limit"):
        decode_message(huge + struct.pack(">I", zlib.crc32(huge)) + bytes(4))


def test_encoder_refuses_what_the_format_cannot_hold() -> None:
    with pytest.raises(ValueError, match="32767"):
        encode_message(Message((Header("big", HeaderType.BYTES, b"x" * (MAX_HEADER_VALUE_BYTES + 1)),)))
    with pytest.raises(ValueError, match=r"1\.\.255"):
        encode_message(Message((Header.string("n" * 256, "v"),)))
    with pytest.raises(TypeError, match="needs an int"):
        encode_message(Message((Header("i", HeaderType.INT32, "1"),)))


def test_rpc_fields_require_int32_headers() -> None:
    as_int16 = Message((Header(":message-type", HeaderType.INT16, 0), Header.int32(":message-flags", 0)))
    with pytest.raises(ProtocolError, match="missing required fields"):
        rpc_fields(as_int16)
    upper = Message(
        (Header.int32(":Message-Type", 0), Header.int32(":MESSAGE-FLAGS", 2), Header.int32(":stream-id", 3))
    )
    assert rpc_fields(upper) == (0, 2, 3, None)


async def test_read_message_splits_a_byte_stream() -> None:
    reader = asyncio.StreamReader()
    first, second = Message(EVERY_TYPE[:3], b"one"), Message((), b"two")
    reader.feed_data(encode_message(first) + encode_message(second))
    reader.feed_eof()
    assert await read_message(reader) == first
    assert await read_message(reader) == second
    assert await read_message(reader) is None

    cut = asyncio.StreamReader()
    cut.feed_data(GOLDEN_CONNECT[:40])
    cut.feed_eof()
    with pytest.raises(EventStreamError, match="closed inside a 112-byte frame"):
        await read_message(cut)


# ---- against awscrt --------------------------------------------------------------------------------------


def _crt_headers() -> list[CrtHeader]:
    return [
        CrtHeader.from_bool("t", value=True),
        CrtHeader.from_bool("f", value=False),
        CrtHeader.from_byte("byte", -7),
        CrtHeader.from_int16("i16", -30000),
        CrtHeader.from_int32("i32", 2**31 - 1),
        CrtHeader.from_int64("i64", -(2**63)),
        CrtHeader.from_byte_buf("buf", b"\x00\xffraw"),
        CrtHeader.from_string("str", "héllo ✓"),
        CrtHeader.from_timestamp("ts", 1_700_000_000_123),
        CrtHeader.from_uuid("id", UUID),
    ]


class _CrtClient(crt_rpc.ClientConnectionHandler):  # type: ignore[misc] # awscrt is untyped
    """awscrt's RPC client; its callbacks (on CRT threads) are handed to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.received: asyncio.Queue[tuple[list[CrtHeader], bytes, int, int]] = asyncio.Queue()
        self.shutdown: asyncio.Future[Exception | None] = loop.create_future()
        self.connection: crt_rpc.ClientConnection | None = None

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def on_connection_setup(self, connection: Any, error: Any, **kwargs: Any) -> None:
        self.connection = connection
        if connection is not None:
            connection.send_protocol_message(
                headers=_crt_headers(), payload=b"from awscrt", message_type=crt_rpc.MessageType.CONNECT
            )

    def on_connection_shutdown(self, reason: Any, **kwargs: Any) -> None:
        def done() -> None:
            if not self.shutdown.done():
                self.shutdown.set_result(reason)

        self._on_loop(done)

    def on_protocol_message(self, headers: Any, payload: Any, message_type: Any, flags: Any, **kwargs: Any) -> None:
        self._on_loop(self.received.put_nowait, (list(headers), bytes(payload), int(message_type), int(flags)))


@pytest.fixture
async def crt_peer() -> AsyncIterator[tuple[_CrtClient, asyncio.StreamReader, asyncio.StreamWriter]]:
    """awscrt's client connected to a bare socket: (client, reader, writer) of the server side."""
    with tempfile.TemporaryDirectory(prefix="es", dir="/tmp") as directory:
        path = str(Path(directory) / "s")
        accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accepted.put((reader, writer))

        server = await asyncio.start_unix_server(on_client, path=path)
        client = _CrtClient(asyncio.get_running_loop())
        options = crt_io.SocketOptions()
        options.domain = crt_io.SocketDomain.Local
        connected = crt_rpc.ClientConnection.connect(handler=client, host_name=path, port=0, socket_options=options)
        reader, writer = await asyncio.wait_for(accepted.get(), 5)
        await asyncio.wait_for(asyncio.wrap_future(connected), 5)
        yield client, reader, writer
        if client.connection is not None:
            client.connection.close()
        await asyncio.wait_for(client.shutdown, 5)
        writer.close()
        server.close()
        await server.wait_closed()


async def _raw_frame(reader: asyncio.StreamReader) -> bytes:
    prelude = await asyncio.wait_for(reader.readexactly(12), 5)
    (total,) = struct.unpack(">I", prelude[:4])
    return prelude + await reader.readexactly(total - 12)


async def test_frames_awscrt_writes_decode_here_and_reencode_identically(
    crt_peer: tuple[_CrtClient, asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    _, reader, _ = crt_peer
    raw = await _raw_frame(reader)
    message = decode_message(raw)
    assert message.headers[: len(EVERY_TYPE)] == EVERY_TYPE
    assert rpc_fields(message) == (MessageType.CONNECT, 0, 0, None)
    assert message.payload == b"from awscrt"
    assert encode_message(message) == raw


async def test_frames_written_here_decode_in_awscrt(
    crt_peer: tuple[_CrtClient, asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    client, reader, writer = crt_peer
    await _raw_frame(reader)  # its CONNECT
    ack = rpc_message(MessageType.CONNECT_ACK, MessageFlag.CONNECTION_ACCEPTED, 0, EVERY_TYPE, b"\x00payload\xff")
    writer.write(encode_message(ack))
    headers, payload, message_type, flags = await asyncio.wait_for(client.received.get(), 5)
    assert (message_type, flags, payload) == (MessageType.CONNECT_ACK, 1, b"\x00payload\xff")
    seen = {h.name: (int(h.type), h.value) for h in headers}
    for h in EVERY_TYPE:
        value = bytes(seen[h.name][1]) if h.type == HeaderType.BYTES else seen[h.name][1]
        assert (seen[h.name][0], value) == (int(h.type), h.value), h.name
    assert seen[":message-type"] == (int(CrtHeaderType.INT32), 5)


async def test_awscrt_drops_the_connection_on_a_bad_crc(
    crt_peer: tuple[_CrtClient, asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    client, reader, writer = crt_peer
    await _raw_frame(reader)
    frame = bytearray(encode_message(rpc_message(MessageType.CONNECT_ACK, MessageFlag.CONNECTION_ACCEPTED, 0)))
    frame[-1] ^= 0xFF
    writer.write(bytes(frame))
    reason = await asyncio.wait_for(client.shutdown, 5)
    assert reason is not None
    assert "CHECKSUM" in str(reason)
    assert client.received.empty()
