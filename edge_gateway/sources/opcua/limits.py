"""Bounds on what an OPC UA server sends: transport limits that the client itself enforces.

asyncua 2.1's client sends no limits of its own in its Hello (buffers of 2**31 - 1 bytes, message size and
chunk count 0 = unlimited) and then adopts whatever the server's Acknowledge says, so a server decides
how much the gateway buffers. ``bound(client, limits, on_refused)`` (called before ``connect``) changes that:

- The Hello carries ``max_message_bytes``, ``max_chunk_count`` and a receive buffer of ``CHUNK_BYTES``;
  the Acknowledge can lower what we send, never raise what we accept.
- A chunk whose header claims more than ``CHUNK_BYTES`` is refused as soon as its header arrives (never
  buffered): that is a protocol violation, the connection is closed (``on_refused`` is told first).
- A response whose chunks add up to more than ``max_message_bytes`` or ``max_chunk_count`` is dropped
  chunk by chunk as it arrives (memory: what came before the limit was passed, then one chunk at a time),
  the session stays up, and the request that asked for it fails with ``ResponseTooLargeError`` (its text
  names the service, the size and the limit). A refused Publish response also calls
  ``on_refused(reason, fatal=False)``: its notifications are lost, the reader marks the gap.

asyncua 2.1 has no public hook for the socket protocol; ``bound`` replaces ``UaClient._make_protocol``
with a copy that builds ``_BoundedProtocol`` (checked by tests/integration/test_opcua_limits.py).
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import Any, Protocol

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UASocketProtocol
from asyncua.common.connection import MessageChunk, SecureConnection, TransportLimits
from asyncua.common.utils import wait_for
from asyncua.ua.ua_binary import uatcp_to_binary
from asyncua.ua.uaerrors import UaError, UaStructParsingError

# The largest chunk we accept (and the receive buffer our Hello announces): asyncua's and most servers' size.
CHUNK_BYTES = 65_535
_HEADER = struct.Struct("<3scI")  # message type, chunk type, packet size


class OnRefused(Protocol):
    """Told of every refused Publish response (``fatal=False``) and oversized chunk (``fatal=True``)."""

    def __call__(self, reason: str, *, fatal: bool) -> None: ...


class ResponseTooLargeError(UaStructParsingError):
    """A response refused for its size. A ``UaStructParsingError`` so that asyncua's publish loop asks for
    the next publish response at once (it treats the message as unreadable) instead of pausing."""

    def __init__(self, service: str, size: int, chunks: int, limits: TransportLimits) -> None:
        self.service, self.size, self.chunks = service, size, chunks
        if size > limits.max_message_size:
            over, setting = f"{size:,} bytes exceeds max_message_bytes {limits.max_message_size:,}", "max_message_bytes"
        else:
            over, setting = f"{chunks:,} chunks exceed max_chunk_count {limits.max_chunk_count:,}", "max_chunk_count"
        super().__init__(
            f"the server's response to {service} was refused: {over} (raise {setting} in the source's settings"
            " only if responses this large are expected)"
        )


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_bytes: int
    max_chunk_count: int

    def transport(self) -> TransportLimits:
        return _ReceiveLimits(CHUNK_BYTES, CHUNK_BYTES, self.max_chunk_count, self.max_message_bytes)


class _ReceiveLimits(TransportLimits):
    def update_client_limits(self, msg: ua.Acknowledge) -> None:
        # The server's ReceiveBufferSize bounds the chunks we send; what we accept stays ours.
        if 0 < msg.ReceiveBufferSize < self.max_send_buffer:
            self.max_send_buffer = int(msg.ReceiveBufferSize)


@dataclass(frozen=True, slots=True)
class _Refused:
    request_id: int
    size: int
    chunks: int


class _BoundedConnection(SecureConnection):
    """Drops the chunks of a response over the limits as they arrive; returns ``_Refused`` for its last."""

    def __init__(self, security_policy: Any, limits: TransportLimits) -> None:  # noqa: ANN401 - asyncua's type
        super().__init__(security_policy, limits)
        self._dropping: dict[int, list[int]] = {}  # request id -> [bytes, chunks] seen so far

    def _receive(self, msg: MessageChunk) -> ua.Message | None:
        header = msg.MessageHeader
        message_type: object = header.MessageType  # asyncua annotates the enum, holds its bytes
        if message_type != ua.MessageType.SecureMessage or header.packet_size > self._limits.max_recv_buffer:
            return super()._receive(msg)  # asyncua refuses an oversized chunk and closes the connection
        request_id = msg.SequenceHeader.RequestId
        seen = self._dropping.get(request_id)
        if seen is None:
            size = self._incoming_size + len(msg.Body)
            count = len(self._incoming_parts) + 1
            if size <= self._limits.max_message_size and count <= self._limits.max_chunk_count:
                return super()._receive(msg)
            self._check_incoming_chunk(msg)
            self._drop_incoming_parts()
            seen = self._dropping[request_id] = [size, count]
        else:
            self._check_incoming_chunk(msg)  # sequence numbers go on
            seen[0] += len(msg.Body)
            seen[1] += 1
        chunk_type: object = header.ChunkType
        if chunk_type == ua.ChunkType.Intermediate:
            return None
        del self._dropping[request_id]
        return _Refused(request_id, seen[0], seen[1])  # type: ignore[return-value]


class _BoundedProtocol(UASocketProtocol):
    def __init__(
        self,
        timeout: float,
        security_policy: Any,  # noqa: ANN401 - asyncua's type
        limits: TransportLimits,
        on_refused: OnRefused,
    ) -> None:
        super().__init__(timeout, security_policy=security_policy, limits=limits)
        self._limits = self._connection._limits  # noqa: SLF001 - our own copy, made by the base class
        self._connection = _BoundedConnection(security_policy, self._limits)
        self._on_refused = on_refused
        self._services: dict[int, str] = {}  # request id -> request type, for messages

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        pending = self.receive_buffer
        if pending is not None and len(pending) >= _HEADER.size:
            _, _, size = _HEADER.unpack_from(pending)
            if size > self._limits.max_recv_buffer:
                # Checked before the chunk is buffered: a header may claim up to 4 GiB.
                self.receive_buffer = None
                reason = (
                    f"the server sent a message chunk of {size:,} bytes, more than the {self._limits.max_recv_buffer:,}"
                    " it agreed to: connection closed (a server fault: check its transport settings)"
                )
                self._on_refused(reason, fatal=True)
                self._fail_all_pending(UaError(reason))
                self.disconnect_socket()

    def _send_request(self, request: Any, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:  # noqa: ANN401
        future = super()._send_request(request, *args, **kwargs)
        if len(self._services) > 2 * len(self._callbackmap) + 16:  # drop the answered and timed out ones
            self._services = {k: v for k, v in self._services.items() if k in self._callbackmap}
        self._services[self._request_id] = type(request).__name__.removesuffix("Request")
        return future

    def _process_received_message(self, msg: Any) -> None:  # noqa: ANN401 - asyncua's type
        if isinstance(msg, _Refused):
            service = self._services.pop(msg.request_id, "a request")
            error = ResponseTooLargeError(service, msg.size, msg.chunks, self._limits)
            future = self._callbackmap.pop(msg.request_id, None)
            if future is not None and not future.done():
                future.set_exception(error)
            if service == "Publish":
                self._on_refused(str(error), fatal=False)
            return
        if isinstance(msg, ua.Message):
            self._services.pop(msg.request_id(), None)  # type: ignore[no-untyped-call]
        super()._process_received_message(msg)

    async def send_hello(self, url: str, max_messagesize: int = 0, max_chunkcount: int = 0) -> ua.Acknowledge:
        hello = ua.Hello()
        hello.EndpointUrl = ua.String(url)
        hello.ReceiveBufferSize = ua.UInt32(self._limits.max_recv_buffer)
        hello.SendBufferSize = ua.UInt32(self._limits.max_send_buffer)
        hello.MaxMessageSize = ua.UInt32(max_messagesize)
        hello.MaxChunkCount = ua.UInt32(max_chunkcount)
        ack: asyncio.Future[ua.Acknowledge] = asyncio.get_running_loop().create_future()
        self._callbackmap[0] = ack
        if self.transport is not None:
            self.transport.write(uatcp_to_binary(ua.MessageType.Hello, hello))  # type: ignore[arg-type]
        result: ua.Acknowledge = await wait_for(ack, self.timeout)
        return result


def bound(client: Client, limits: Limits, on_refused: OnRefused) -> None:
    """Make ``client`` enforce ``limits`` on everything it receives (see the module docstring)."""
    client.max_messagesize = limits.max_message_bytes
    client.max_chunkcount = limits.max_chunk_count
    uaclient = client.uaclient

    def make_protocol() -> UASocketProtocol:
        # UaClient._make_protocol of asyncua 2.1, with our protocol class.
        protocol = _BoundedProtocol(
            uaclient._timeout,  # noqa: SLF001
            uaclient.security_policy,
            limits.transport(),
            on_refused,
        )
        protocol.pre_request_hook = uaclient._pre_request_hook  # noqa: SLF001
        protocol.on_connection_lost = uaclient._on_transport_lost  # noqa: SLF001
        protocol.is_session_closing = uaclient._is_session_closing  # noqa: SLF001
        uaclient.protocol = protocol
        return protocol

    uaclient._make_protocol = make_protocol  # type: ignore[method-assign]  # noqa: SLF001
