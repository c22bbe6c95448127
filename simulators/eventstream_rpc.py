"""The eventstream RPC server (aws-c-event-stream's, which the Greengrass nucleus runs), on the frames of
``simulators.eventstream``.

Every frame carries ``:message-type``, ``:message-flags`` and ``:stream-id`` as INT32 headers (names compared
without case); ``rpc_message`` adds them, ``rpc_fields`` reads them.
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import Final, Protocol

from simulators.eventstream import EventStreamError, Header, HeaderType, Message, encode_message, read_message

_log = logging.getLogger(__name__)

RPC_VERSION: Final = "0.1.0"
CONTENT_TYPE_JSON: Final = "application/json"
# How long a refused client gets to hang up before the server closes the socket itself.
REFUSED_LINGER_S: Final = 5.0


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
