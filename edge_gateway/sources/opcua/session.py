"""One OPC UA session of a reader: its publish handler, its watchdogs and its poll tasks.

Contract:
- ``on_publish`` handles a whole PublishResult (no task per notification): data changes go to the
  reader's ``on_value`` in notification order, a Bad StatusChangeNotification ends the session; every
  response (keep-alives too) feeds the keep-alive watchdog, data changes the data-age watchdog.
- ``check_watchdogs`` ends the session (``lose(..., stalled=True)``, counted in
  ``errors_by_kind["stalled"]``) when publish responses stop for ``stall_after_s``, when a transferred
  subscription sends nothing for ``first_publish_within_s``, or when data stops for ``max_data_age_s``.
- Each poll group is one task: RegisterNodes once, then Read requests within the server's limits on a
  fixed schedule; an overrun is counted in ``errors_by_kind["poll_overrun"]`` and skipped, a failed
  Read ends the session.
- A response refused for its size (limits.py): a Publish response gives every subscribed alias a BAD
  reading with the reason (``mark_gap``), the session goes on; a chunk over the agreed size ends it. A
  poll Read refused for its size is split in halves, down to single nodes: those read alone from then
  on, and a node refused alone gets a BAD reading with the reason at every poll.
- ``lose`` keeps the first reason only and wakes the reader.
- The reader is seen only through ``SessionOwner`` (defined here): this module never imports reader.py.
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from edge_gateway.sources.base import SourceStatus
from edge_gateway.sources.opcua.limits import ResponseTooLargeError
from edge_gateway.sources.opcua.nodes import Item, chunks
from edge_gateway.util.tasks import raise_if_cancelling

# What asyncua raises when the server is unreachable, goes away, or answers with an error.
SESSION_ERRORS = (OSError, TimeoutError, UaError)


class SessionOwner(Protocol):
    """What a session needs of the reader that runs it (``OpcUaReader``).

    ``on_value`` takes every value (data change or poll read) in order; ``wake`` is set when the session
    ends; ``status`` takes the watchdog and overrun counts; ``last_sequence`` is the highest notification
    sequence number seen, kept across sessions (a transfer republishes only what came after it).
    """

    name: str
    endpoint: str
    status: SourceStatus
    wake: asyncio.Event
    last_sequence: int

    def on_value(self, handle: int, dv: ua.DataValue, session: Session) -> None: ...

    def mark_gap(self, aliases: list[str], reason: str, session: Session) -> None: ...


def describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time (TimeoutError)"
    if isinstance(exc, UaStatusCodeError):
        return f"{ua.StatusCode(exc.code).name} ({exc.code:#010x})"
    return f"{type(exc).__name__}: {exc}"


class Session:
    """What one session knows: its subscription, its liveness clocks, and why it ended."""

    def __init__(self, reader: SessionOwner) -> None:
        self.reader = reader
        self.lost = asyncio.Event()
        self.reason = "session ended"
        self.stalled = False  # ended by a watchdog: the old subscription must not be taken over
        self.subscription_id: int | None = None
        self.subscribed: list[str] = []  # aliases with a monitored item, in config order
        self.polled: list[str] = []
        self.stall_after_s = math.inf
        # After TransferSubscriptions: the first response (initial values) must come within this long,
        # or the server did not really move the subscription (seen with asyncua 2.1's own server).
        self.first_publish_within_s: float | None = None
        loop = asyncio.get_running_loop()
        self.clock = loop.time
        self.last_publish = self.last_data = self.clock()
        self.overflow_seen = False
        self.too_large_seen = False  # a value or response refused for its size was logged this session
        self.limits: dict[str, int] = {}
        self.to_poll: list[tuple[Item, ua.NodeId]] = []

    async def on_publish(self, result: ua.PublishResult) -> None:
        """asyncua's publish loop calls this with every PublishResult of our subscription."""
        now = self.last_publish = self.clock()
        self.first_publish_within_s = None
        message = result.NotificationMessage
        data = message.NotificationData
        if not data:
            return  # a keep-alive
        self.reader.last_sequence = max(self.reader.last_sequence, int(message.SequenceNumber))
        reader = self.reader
        for notif in data:
            if isinstance(notif, ua.DataChangeNotification):
                self.last_data = now
                for mi in notif.MonitoredItems:
                    reader.on_value(mi.ClientHandle, mi.Value, self)
            elif isinstance(notif, ua.StatusChangeNotification):
                code = notif.Status
                if code is not None and not code.is_good():
                    self.lose(f"subscription ended by the server: {code.name}")

    def response_refused(self, reason: str, *, fatal: bool) -> None:
        """limits.py refused a response for its size; ``fatal``: the connection is being closed."""
        if fatal:
            self.lose(reason)
        else:  # a Publish response: its notifications are lost
            self.reader.mark_gap(self.subscribed, reason, self)

    async def connection_lost(self, exc: Exception) -> None:
        self.lose(f"connection to {self.reader.endpoint} lost: {describe(exc)}")

    def lose(self, reason: str, *, stalled: bool = False) -> None:
        if not self.lost.is_set():
            self.reason = reason
            self.stalled = stalled
            self.lost.set()
            self.reader.wake.set()

    def check_watchdogs(self, max_data_age_s: float | None) -> None:
        now = self.clock()
        if self.subscription_id is None:
            return
        silent = now - self.last_publish
        if self.first_publish_within_s is not None and silent > self.first_publish_within_s:
            self.reader.status.error("stalled", "transferred subscription silent")
            self.lose(
                f"the subscription taken over from the previous session sent nothing for {silent:.1f} s;"
                " creating a new one",
                stalled=True,
            )
        elif silent > self.stall_after_s:
            self.reader.status.error("stalled", "keep-alive watchdog")
            self.lose(
                f"no publish response (data or keep-alive) for {silent:.1f} s while the session looked"
                " connected: the subscription stalled; re-creating it",
                stalled=True,
            )
        elif max_data_age_s is not None and now - self.last_data > max_data_age_s:
            self.reader.status.error("stalled", "data-age watchdog")
            self.lose(
                f"no data change for {now - self.last_data:.1f} s (max_data_age_s {max_data_age_s});"
                " re-creating the subscription",
                stalled=True,
            )

    async def start_polling(self, client: Client) -> list[asyncio.Task[None]]:
        """Register the polled nodes and start one poll task per group."""
        by_group: dict[int, list[tuple[Item, ua.NodeId]]] = {}
        for item, nid in self.to_poll:
            assert item.group.poll_interval_ms is not None
            by_group.setdefault(id(item.group), []).append((item, nid))
        tasks = []
        for members in by_group.values():
            registered: list[ua.NodeId] = []
            for chunk in chunks([nid for _, nid in members], self.limits["register"]):
                registered.extend(await client.uaclient.register_nodes(list(chunk)))
            items = [item for item, _ in members]
            self.polled.extend(item.alias for item in items)
            group = items[0].group
            tasks.append(
                asyncio.create_task(
                    self._poll(client, items, registered), name=f"source:opcua:{self.reader.name}:poll:{group.name}"
                )
            )
        return tasks

    async def _poll(self, client: Client, items: list[Item], nids: list[ua.NodeId]) -> None:
        interval_ms = items[0].group.poll_interval_ms
        assert interval_ms is not None
        interval = interval_ms / 1000
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        requests = [ua.ReadValueId(NodeId=nid, AttributeId=AttributeIds.Value) for nid in nids]
        pairs = list(zip(items, requests, strict=True))
        batches = [list(chunk) for chunk in chunks(pairs, self.limits["read"])]
        reader = self.reader
        kinds = reader.status.errors_by_kind
        try:
            while True:
                raise_if_cancelling()
                turn: list[list[tuple[Item, ua.ReadValueId]]] = []
                for batch in batches:
                    turn.extend(await self._read(client, batch))
                batches = turn
                deadline += interval  # fixed schedule: a slow read does not shift the next ones
                now = loop.time()
                if deadline < now:  # overran: skip the missed turns, do not burst
                    kinds["poll_overrun"] = kinds.get("poll_overrun", 0) + 1
                    deadline = now
                await asyncio.sleep(deadline - now)
        except SESSION_ERRORS as exc:
            self.lose(f"poll read at {reader.endpoint}: {describe(exc)}")

    async def _read(
        self, client: Client, batch: list[tuple[Item, ua.ReadValueId]]
    ) -> list[list[tuple[Item, ua.ReadValueId]]]:
        """Read one batch; returns the batches to read next time (halves, when the response was too large)."""
        params = ua.ReadParameters(TimestampsToReturn=ua.TimestampsToReturn.Both, NodesToRead=[r for _, r in batch])
        try:
            results = await client.uaclient.read(params)
        except ResponseTooLargeError as exc:
            if len(batch) == 1:
                item = batch[0][0]
                self.reader.mark_gap([item.alias], f"node {item.where!r} ({item.alias}): {exc}", self)
                return [batch]
            half = len(batch) // 2
            return [*await self._read(client, batch[:half]), *await self._read(client, batch[half:])]
        for (item, _), dv in zip(batch, results, strict=True):
            self.reader.on_value(item.handle, dv, self)
        return [batch]
