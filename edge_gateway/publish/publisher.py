"""Drain one destination's buffer cursor to the cloud.

A publisher MUST (DESIGN.md §3):
- read the next records from its own cursor, batch them by size (``max_message_bytes``) or age
  (``max_latency_ms``), encode them for the destination and publish QoS1;
- ack the buffer range of a batch only after every message of it got a PUBACK with a success code;
- keep at most ``max_in_flight`` messages unacknowledged (the awscrt offline queue is unbounded: the
  durable buffer is the queue, not the client's memory);
- retry a failed message with exponential backoff and full jitter, never in a hot loop (one schedule shared
  by all failing messages, so they retry together and delivery order survives most failures); a reconnect
  of the transport (``connection_restored``) ends every wait at once and starts the schedule over;
- never retry what can never succeed: a message the broker refuses for good (``PublishError.retryable``
  false: not authorized, topic invalid, packet too large, payload format invalid) goes to the dead-letter
  file with the reason, is counted (``rejected_points``), logged once per kind of refusal, and its range is
  acked, so one poison message cannot block the backlog; readings the encoder knows the destination would
  refuse (``Encoded.rejected``, e.g. SiteWise's time window) are never sent: dead-lettered and counted
  (``unsendable_points``) before their range is acked.
Encoding is not done here: ``encode.encoder`` holds the ``Encoder`` contract and one encoder per destination.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from edge_gateway.buffer.base import Buffer, Record
from edge_gateway.config.model import DestinationBase
from edge_gateway.errors import PublishError
from edge_gateway.publish.deadletter import DeadLetterFile, message_entry, reading_entry
from edge_gateway.publish.encode.encoder import Encoded, Encoder
from edge_gateway.publish.encode.iotcore import Message
from edge_gateway.util.backoff import Backoff

if TYPE_CHECKING:
    from edge_gateway.gxp.provenance import Epochs

__all__ = ["LIVE_LANE", "MAIN_LANE", "Publisher", "PublisherStatus", "Transport"]

_log = logging.getLogger(__name__)

_READ_RECORDS = 4000  # records per buffer read; a batch is several reads when points are small
MAIN_LANE, LIVE_LANE = "", "live"
_IDLE_WAIT_S = 3600.0
# Behind = the oldest unsent reading is older than this many latency bounds (and at least _BACKLOG_MIN_AGE_S).
_BACKLOG_LATENCIES = 5
_BACKLOG_MIN_AGE_S = 5.0
_LIVE_RESERVE = 2  # in-flight slots a draining backlog leaves to the live lane
_FLOW_BYTES_PER_S = 512 * 1024  # IoT Core per-connection throughput, paced by awscrt's flow control
_BACKLOG_QUEUE_S = 0.5
_FILL = 0.97  # a batch aims just under one full message: one message per batch, not one and a bit


class Transport(Protocol):
    async def publish(self, topic: str, payload: bytes) -> int:
        """QoS1 publish; the PUBACK reason code, or PublishError."""


@dataclass(slots=True)
class PublisherStatus:
    name: str
    messages: int = 0  # acknowledged by the broker
    points: int = 0
    payload_bytes: int = 0
    failures: int = 0
    rejected_points: int = 0  # refused for good by the broker: dead-lettered
    unsendable_points: int = 0  # never sent (the destination would refuse them): dead-lettered
    in_flight: int = 0
    backlog_split_seq: int | None = None  # set while a live lane runs ahead of a draining backlog
    last_ack_ns: int | None = None
    last_error: str | None = None
    failures_by_code: dict[str, int] = field(default_factory=dict)


class Publisher:
    def __init__(
        self,
        dest: DestinationBase,
        buffer: Buffer,
        transport: Transport,
        *,
        encoder: Encoder,
        dead_letter: DeadLetterFile,
        flow_control: bool = True,
        backoff: Backoff | None = None,
        gate: Callable[[], Awaitable[None]] | None = None,
        epochs: Epochs | None = None,
    ) -> None:
        """``gate``, when given, is awaited before every publish attempt: the gateway uses it so that after
        a connect the fresh status goes out before any data (observe/presence.py). ``epochs`` says which
        configuration collected which sequence numbers: each message then carries that config's hash."""
        self.dest = dest
        self.name = dest.name
        self.buffer = buffer
        self.transport = transport
        self.encoder = encoder
        self.dead_letter = dead_letter
        self._refusals_logged: set[str] = set()
        self.status = PublisherStatus(dest.name)
        self._backoff = backoff or Backoff(1.0, 60.0)
        self._window = asyncio.Semaphore(dest.max_in_flight)
        # While a backlog drains, it may use all but a few slots, so live messages never wait for a slot;
        # with IoT Core flow control (~512 KiB/s) it also keeps at most ~_BACKLOG_QUEUE_S of bytes queued
        # in the client ahead of a live message.
        backlog = dest.max_in_flight - min(_LIVE_RESERVE, dest.max_in_flight - 1)
        if flow_control:
            backlog = min(backlog, int(_FLOW_BYTES_PER_S * _BACKLOG_QUEUE_S) // dest.max_message_bytes)
        self._backlog_lane = asyncio.Semaphore(max(1, backlog))
        self._failing = False
        self._retry_at = 0.0
        self._reconnected = asyncio.Event()
        self._bytes_per_point = 12.0  # learnt from what the encoder makes
        self._gate = gate
        self._epochs = epochs
        # first seq -> gateway timestamp of the first reading, for every batch read and not yet acked
        self._unacked: dict[int, int] = {}

    @property
    def oldest_unacked_ns(self) -> int | None:
        """Gateway timestamp of the oldest reading handed out to this publisher and not acknowledged yet.

        Reads go in sequence order per lane and the backlog lane is the older one, so this is the oldest
        unsent reading of the destination whenever the publisher has read anything it did not deliver."""
        return min(self._unacked.values(), default=None)

    async def run(self) -> None:
        # Whatever a previous run handed out but never got acked is due again.
        self.buffer.rewind(self.name)
        self._unacked.clear()
        async with asyncio.TaskGroup() as tg:
            while True:
                records = await self._next_batch(MAIN_LANE, None, _IDLE_WAIT_S)
                if self._behind(records):
                    await self._drain_backlog(tg, records)
                else:
                    await self._send(tg, records, None)

    def _behind(self, records: list[Record]) -> bool:
        age_s = (time.time_ns() - records[0].reading.gateway_ts_ns) / 1e9
        return age_s > max(_BACKLOG_MIN_AGE_S, _BACKLOG_LATENCIES * self.dest.max_latency_ms / 1000)

    async def _drain_backlog(self, tg: asyncio.TaskGroup, first: list[Record]) -> None:
        """Fresh data first: a live lane sends what arrives from now on within the latency bound while
        the main lane drains the backlog up to the split; then the main lane continues after the live one."""
        split = self.buffer.stats().last_seq + 1
        self.buffer.seek(self.name, split, lane=LIVE_LANE)
        self.status.backlog_split_seq = split
        _log.info(
            "publisher %s: behind (oldest unsent reading %.0f s old): new readings go first on a live lane "
            "while the backlog up to seq %d drains",
            self.name,
            (time.time_ns() - first[0].reading.gateway_ts_ns) / 1e9,
            split - 1,
        )
        stop_live = asyncio.Event()
        live = tg.create_task(self._live_lane(tg, split, stop_live), name=f"publish:{self.name}:live")
        records = first
        while records:
            await self._send(tg, records, self._backlog_lane)
            records = await self._next_batch(MAIN_LANE, split, 0.0)
        stop_live.set()
        resume = await live
        self.buffer.seek(self.name, resume)
        self.status.backlog_split_seq = None
        _log.info("publisher %s: backlog drained; one lane again from seq %d", self.name, resume)

    async def _live_lane(self, tg: asyncio.TaskGroup, start: int, stop: asyncio.Event) -> int:
        """Send from ``start`` on until ``stop``; return the seq the main lane continues at."""
        position = start
        while not stop.is_set():
            records = await self._next_batch(LIVE_LANE, None, self.dest.max_latency_ms / 1000)
            if records:
                position = records[-1].seq + 1
                await self._send(tg, records, None)
        return position

    async def _send(self, tg: asyncio.TaskGroup, records: list[Record], lane: asyncio.Semaphore | None) -> None:
        """Encode and dispatch, in parts that each come from one configuration (provenance)."""
        if self._epochs is None:
            await self._send_part(tg, records, None, lane)
            return
        for cfg, part in self._epochs.split(records):
            await self._send_part(tg, part, cfg, lane)

    async def _send_part(
        self, tg: asyncio.TaskGroup, records: Sequence[Record], cfg: str | None, lane: asyncio.Semaphore | None
    ) -> None:
        """Every message takes a slot of the in-flight window (and of ``lane`` if given)."""
        encoded = self.encoder(records, cfg)
        self._learn_size(encoded, len(records))
        if encoded.rejected:
            await self._set_aside(encoded.rejected)
        batch = _Batch(records[0].seq, records[-1].seq, len(encoded.messages))
        if not encoded.messages:
            self.buffer.ack(self.name, batch.first_seq, batch.last_seq)
            return
        self._unacked[batch.first_seq] = records[0].reading.gateway_ts_ns
        for i, msg in enumerate(encoded.messages):
            if lane is not None:
                await lane.acquire()
            await self._window.acquire()
            self.status.in_flight += 1
            expires = encoded.expires_ns[i] if encoded.expires_ns is not None else None
            tg.create_task(self._deliver(msg, batch, lane, expires), name=f"publish:{self.name}:{msg.first_seq}")

    async def _next_batch(self, lane: str, end_seq: int | None, wait_s: float) -> list[Record]:
        """Wait up to ``wait_s`` for data (forever when it is _IDLE_WAIT_S), then gather until the batch is
        full or the oldest record waited max_latency; [] if nothing came."""
        target = self._batch_records()
        records: list[Record] = []
        while not records:
            records = await self.buffer.read(self.name, min(_READ_RECORDS, target), wait_s, lane=lane, end_seq=end_seq)
            if wait_s != _IDLE_WAIT_S:
                break
        if not records:
            return records
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.dest.max_latency_ms / 1000
        while len(records) < target:
            # A bounded lane (a backlog up to its split) has everything on disk already: never wait for more.
            remaining = 0.0 if end_seq is not None else deadline - loop.time()
            if remaining < 0:
                break
            want = min(_READ_RECORDS, target - len(records))
            more = await self.buffer.read(self.name, want, remaining, lane=lane, end_seq=end_seq)
            if not more:
                break
            records.extend(more)
        return records

    def _batch_records(self) -> int:
        """Records for one full message, from the bytes per point the encoder produced so far."""
        return max(100, int(self.dest.max_message_bytes * _FILL / self._bytes_per_point))

    def _learn_size(self, encoded: Encoded, records: int) -> None:
        size = sum(len(m.payload) for m in encoded.messages)
        if records >= 100 and size:  # noqa: PLR2004 - tiny batches say little about the steady size
            self._bytes_per_point = 0.8 * self._bytes_per_point + 0.2 * size / records

    async def _deliver(
        self, msg: Message, batch: _Batch, lane: asyncio.Semaphore | None, expires_ns: int | None
    ) -> None:
        try:
            while True:
                try:
                    if self._gate is not None:
                        await self._gate()
                    await self.transport.publish(msg.topic, msg.payload)
                except PublishError as exc:
                    if not exc.retryable or exc.reason_code in self.dest.dead_letter_codes:
                        await self._reject(msg, exc)
                        break
                    self._fail(exc)
                    await self._wait_for_retry()
                    if expires_ns is not None and time.time_ns() >= expires_ns:
                        await self._expire(msg)
                        break
                else:
                    self._succeed(msg)
                    break
            if batch.message_done():
                self.buffer.ack(self.name, batch.first_seq, batch.last_seq)
                self._unacked.pop(batch.first_seq, None)
        finally:
            self.status.in_flight -= 1
            self._window.release()
            if lane is not None:
                lane.release()

    async def _wait_for_retry(self) -> None:
        """All failing messages share one backoff schedule and retry together, oldest first in practice,
        instead of each drifting on its own growing delay (which would reorder and slow the drain)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._retry_at <= now:
            self._retry_at = now + self._backoff.next_delay()
        reconnected = self._reconnected
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._retry_at - now):
                await reconnected.wait()

    def connection_restored(self) -> None:
        """The transport reconnected: whatever waits to retry goes now, and the backoff starts over."""
        self._backoff.reset()
        self._retry_at = 0.0
        self._reconnected.set()
        self._reconnected = asyncio.Event()

    def _succeed(self, msg: Message) -> None:
        s = self.status
        s.messages += 1
        s.points += msg.points
        s.payload_bytes += len(msg.payload)
        s.last_ack_ns = time.time_ns()
        self._backoff.reset()
        if self._failing:
            self._failing = False
            _log.info("publisher %s: delivering again", self.name)

    def _fail(self, exc: PublishError) -> None:
        s = self.status
        s.failures += 1
        code = _failure_kind(exc)
        s.failures_by_code[code] = s.failures_by_code.get(code, 0) + 1
        s.last_error = str(exc)
        if not self._failing:
            self._failing = True
            _log.warning("publisher %s: publish failed, retrying with backoff: %s", self.name, exc)

    async def _reject(self, msg: Message, exc: PublishError) -> None:
        self.status.rejected_points += msg.points
        self.status.last_error = str(exc)
        await asyncio.to_thread(self.dead_letter.write, [message_entry(self.name, msg, str(exc))])
        kind = _failure_kind(exc)
        if kind in self._refusals_logged:
            return
        self._refusals_logged.add(kind)
        _log.error(
            "publisher %s: the broker refuses for good a message of %d point(s) (seqs %d..%d, %d bytes) on %s: "
            "%s; it is in the dead-letter file %s and counted; later refusals of this kind are only counted",
            self.name,
            msg.points,
            msg.first_seq,
            msg.last_seq,
            len(msg.payload),
            msg.topic,
            exc,
            self.dead_letter.path,
        )

    async def _expire(self, msg: Message) -> None:
        self.status.unsendable_points += msg.points
        reason = "the destination's time window passed while the message waited to be sent"
        await asyncio.to_thread(self.dead_letter.write, [message_entry(self.name, msg, reason)])
        _log.warning(
            "publisher %s: %d point(s) (seqs %d..%d) became too old for the destination while retrying; they are "
            "in the dead-letter file %s",
            self.name,
            msg.points,
            msg.first_seq,
            msg.last_seq,
            self.dead_letter.path,
        )

    async def _set_aside(self, rejected: list[tuple[Record, str]]) -> None:
        first = not self.status.unsendable_points
        self.status.unsendable_points += len(rejected)
        await asyncio.to_thread(self.dead_letter.write, [reading_entry(self.name, r, why) for r, why in rejected])
        if first:
            record, why = rejected[0]
            _log.warning(
                "publisher %s: %d reading(s) the destination would refuse (first: seq %d %s: %s) are in the "
                "dead-letter file %s, not sent; further ones are only counted",
                self.name,
                len(rejected),
                record.seq,
                record.reading.point,
                why,
                self.dead_letter.path,
            )


def _failure_kind(exc: PublishError) -> str:
    """The PUBACK reason code, or the kind of client error: how failures are counted and logged."""
    return str(exc.reason_code) if exc.reason_code is not None else type(exc.__cause__ or exc).__name__


class _Batch:
    """Acks a buffer range once all messages encoded from it are delivered."""

    __slots__ = ("first_seq", "last_seq", "pending")

    def __init__(self, first_seq: int, last_seq: int, messages: int) -> None:
        self.first_seq, self.last_seq, self.pending = first_seq, last_seq, messages

    def message_done(self) -> bool:
        self.pending -= 1
        return self.pending == 0
