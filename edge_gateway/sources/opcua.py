"""OPC UA source: one session and one subscription per source, data changes to readings, reconnect with backoff.

Contract (sources/base.py) plus:
- Every configured node is a monitored item (data change, ``sampling_interval_ms``, ``queue_size``) of one
  subscription with ``publishing_interval_ms``. Each alias gets its own client handle, so two aliases of
  one node are two items and every notification maps to exactly one alias.
- asyncua 2.1 calls the (synchronous) handler once per notification, each call in a task of its own,
  started in arrival order. The handler only turns the notification into a Reading and appends it to a
  queue; ``run()`` drains the whole queue at every wake-up and makes one ``await sink(batch)`` per wake-up
  (group commit), in notification order. The queue is bounded (``max_pending``, default ``MAX_PENDING``):
  if the sink falls that far behind, the oldest readings are dropped, counted in
  ``errors_by_kind["overflow"]`` and logged once per episode (a flush that follows drops) with the count.
- A node id that does not parse, names a namespace URI (``nsu=``) the server does not have, or that the
  server refuses (unknown node, no access) gives one BAD reading for its alias per session (``status`` is
  the server's StatusCode, or the reason as text) and counts in ``errors_by_kind["bad_node"]``; the other
  nodes are subscribed and keep flowing.
- Quality follows the StatusCode severity bits (Good / Uncertain / Bad); ``status`` keeps the code when
  not GOOD. A Good value with the Overflow info bit means the server's queue for that item dropped values:
  counted in ``errors_by_kind["server_overflow"]`` (raise ``queue_size`` or lower ``publishing_interval_ms``).
  The source timestamp is the SourceTimestamp, else the ServerTimestamp.
- Values: bool, int, float and str pass through; anything else becomes a str: ISO 8601 for DateTime,
  base64 for ByteString, JSON text for arrays and structures, the text of a LocalizedText.
- Session loss: asyncua's connection supervisor (its auto-reconnect off, so only our loop reconnects)
  probes the server state every ``timeout_s`` (the probe gets as long to answer as any other request, so
  a slow but working PLC is not dropped) and reports a closed or silent connection; its stale
  watchdog re-creates a subscription whose keep-alives stop; a Bad subscription status also ends the
  session. The reader then marks the gap with one BAD reading per subscribed alias, goes RECONNECTING
  (logged once), and reconnects with jittered ``Backoff``, with a new session and subscription.
- Cancellation is never swallowed: the session is closed (at most ``CLOSE_TIMEOUT_S``) and the
  ``CancelledError`` propagates; readings still queued at that moment are not handed to the sink.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import enum
import json
import logging
import math
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeNotif
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from edge_gateway.backoff import Backoff
from edge_gateway.model import Quality, Reading, Value, now_ns
from edge_gateway.sources.base import Sink, SourceState, SourceStatus
from edge_gateway.sources.opcua_config import OpcUaSource
from edge_gateway.tasks import raise_if_cancelling

_log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 2.0
MAX_PENDING = 100_000
# The server drops our session this long after it last heard from us: short enough that a PLC with few
# session slots gets them back soon after a network cut (we never resume old sessions).
SESSION_TIMEOUT_MS = 60_000
# Keep-alive about every 5 s when nothing changes; the server keeps the subscription 10 keep-alives
# without publish requests.
_KEEPALIVE_MS = 5_000
_LIFETIME_KEEPALIVES = 10

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)
_SEVERITY = {0: Quality.GOOD, 1: Quality.UNCERTAIN}
# StatusCode bits 10-11 = 01: the info bits describe a data value; bit 7: the server's queue overflowed.
_INFO_TYPE_MASK, _INFO_TYPE_DATA_VALUE, _OVERFLOW_BIT = 0xC00, 0x400, 0x80
# What asyncua raises when the server is unreachable, goes away, or answers with an error.
_SESSION_ERRORS = (OSError, TimeoutError, UaError)


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


@dataclass(frozen=True, slots=True)
class _Item:
    handle: int  # the monitored item's client handle
    alias: str
    node_id: str  # as configured
    parsed: ua.NodeId | None
    problem: str | None  # why it can never be subscribed, when parsed is None


def _parse(handle: int, alias: str, node_id: str) -> _Item:
    try:
        parsed = ua.NodeId.from_string(node_id)
    except UaError as exc:
        detail = exc.__cause__ or exc
        return _Item(handle, alias, node_id, None, f"node {node_id!r} ({alias}): not a valid NodeId: {detail}")
    if isinstance(parsed, ua.ExpandedNodeId) and parsed.ServerIndex:
        return _Item(
            handle, alias, node_id, None, f"node {node_id!r} ({alias}): srv= (another server) is not supported"
        )
    return _Item(handle, alias, node_id, parsed, None)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time (TimeoutError)"
    if isinstance(exc, UaStatusCodeError):
        return f"{ua.StatusCode(exc.code).name} ({exc.code:#010x})"
    return f"{type(exc).__name__}: {exc}"


class _Session:
    """The subscription handler of one session: readings go to the reader, loss ends the session."""

    def __init__(self, reader: OpcUaReader) -> None:
        self.reader = reader
        self.lost = asyncio.Event()
        self.reason = "session ended"
        self.subscribed: list[str] = []  # aliases with a monitored item, in config order
        self.overflow_seen = False

    def datachange_notification(self, _node: Node, val: object, data: DataChangeNotif) -> None:
        item = data.monitored_item
        alias = self.reader.aliases.get(item.ClientHandle)
        if alias is None:  # not one of our handles; asyncua would have logged it
            return
        dv = item.Value
        code = int(dv.StatusCode.value) if dv.StatusCode is not None else 0
        quality = quality_of(code)
        if quality is Quality.GOOD and server_overflowed(code):
            self._count_server_overflow(alias)
        source_ts = to_ns(dv.SourceTimestamp) or to_ns(dv.ServerTimestamp)
        status = None if quality is Quality.GOOD else code
        self.reader.enqueue(Reading(self.reader.name, alias, to_value(val), quality, now_ns(), source_ts, status))

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        code = status.Status
        if code is not None and not code.is_good():
            self.lose(f"subscription ended by the server: {code.name}")

    async def connection_lost(self, exc: Exception) -> None:
        self.lose(f"connection to {self.reader.endpoint} lost: {_describe(exc)}")

    def lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()
            self.reader.wake.set()

    def _count_server_overflow(self, alias: str) -> None:
        kinds = self.reader.status.errors_by_kind
        kinds["server_overflow"] = kinds.get("server_overflow", 0) + 1
        if not self.overflow_seen:
            self.overflow_seen = True
            _log.warning(
                "opcua %s: the server dropped queued values of %s (overflow bit); raise queue_size or lower"
                " publishing_interval_ms (counted in errors_by_kind.server_overflow)",
                self.reader.name,
                alias,
            )


class OpcUaReader:
    def __init__(self, config: OpcUaSource, *, max_pending: int = MAX_PENDING) -> None:
        self.config = config
        self.max_pending = max_pending
        self.name = config.name
        self.endpoint = config.endpoint
        self.status = SourceStatus(config.name)
        self.items = [_parse(i, n.alias, n.node_id) for i, n in enumerate(config.nodes, start=1)]
        self.aliases = {item.handle: item.alias for item in self.items}
        self.wake = asyncio.Event()
        self._pending: deque[Reading] = deque()
        self._dropped = 0  # readings dropped from the full queue since the last flush
        self._refused_before: set[str] = set()

    async def run(self, sink: Sink) -> None:
        backoff = Backoff(self.config.reconnect_min_s, self.config.reconnect_max_s)
        try:
            while True:
                raise_if_cancelling()  # asyncua's wait_for can swallow a cancel (edge_gateway/tasks.py)
                reason = await self._session(sink, backoff)
                self.status.error("connection", reason)
                self._set_state(SourceState.RECONNECTING, reason)
                self.status.reconnects += 1
                await asyncio.sleep(backoff.next_delay())
        finally:
            self.status.state = SourceState.STOPPED

    def enqueue(self, reading: Reading) -> None:
        if len(self._pending) >= self.max_pending:
            self._pending.popleft()
            self._dropped += 1
        self._pending.append(reading)
        self.wake.set()

    async def _session(self, sink: Sink, backoff: Backoff) -> str:
        """One session from connect to loss; returns why it ended (or never started)."""
        c = self.config
        session = _Session(self)
        client = Client(self.endpoint, timeout=c.timeout_s, watchdog_intervall=c.timeout_s)
        client.name = client.description = f"edge-gateway source {self.name}"
        client.session_timeout = SESSION_TIMEOUT_MS
        client.connection_lost_callback = session.connection_lost
        connected = False
        try:
            try:
                await client.connect()
                connected = True
                refused = await self._subscribe(client, session)
            except _SESSION_ERRORS as exc:
                return (
                    f"connect and subscribe to {self.endpoint}: {_describe(exc)}; check that the server runs,"
                    " the endpoint is right and it accepts security policy None"
                )
            backoff.reset()
            self._set_state(
                SourceState.CONNECTED, f"subscribed to {len(session.subscribed)} of {len(self.items)} node(s)"
            )
            for reading in refused:
                self.enqueue(reading)
            await self._pump(sink, session)
            return session.reason
        finally:
            if connected:
                await self._close(client)
            else:
                # No session to close (a failed connect has already closed its socket, and a full disconnect
                # would only make asyncua warn on every retry); the socket of a cancelled connect must go.
                client.disconnect_socket()

    async def _resolve(self, client: Client) -> tuple[list[tuple[_Item, ua.NodeId]], dict[str, tuple[str, int | str]]]:
        """The node ids to subscribe, and the refused ones: alias -> (message, Reading.status)."""
        refused: dict[str, tuple[str, int | str]] = {}
        wanted: list[tuple[_Item, ua.NodeId]] = []
        namespaces: list[str] | None = None
        for item in self.items:
            nid = item.parsed
            if nid is None:
                assert item.problem is not None
                refused[item.alias] = (item.problem, item.problem)
                continue
            if isinstance(nid, ua.ExpandedNodeId) and nid.NamespaceUri:
                # Namespace indexes are the server's to assign and may change between its versions: resolve
                # the URI on every connect.
                if namespaces is None:
                    namespaces = list(await client.get_namespace_array())
                if nid.NamespaceUri not in namespaces:
                    msg = f"node {item.node_id!r} ({item.alias}): namespace {nid.NamespaceUri!r} is not on the server"
                    refused[item.alias] = (msg, msg)
                    continue
                nid = ua.NodeId(nid.Identifier, ua.Int16(namespaces.index(nid.NamespaceUri)), nid.NodeIdType)
            wanted.append((item, nid))
        return wanted, refused

    async def _subscribe(self, client: Client, session: _Session) -> list[Reading]:
        """Create the subscription and its monitored items; return one BAD reading per refused node."""
        c = self.config
        wanted, refused = await self._resolve(client)
        keepalive = max(1, math.ceil(_KEEPALIVE_MS / c.publishing_interval_ms))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=float(c.publishing_interval_ms),
            RequestedLifetimeCount=keepalive * _LIFETIME_KEEPALIVES,
            RequestedMaxKeepAliveCount=keepalive,
            MaxNotificationsPerPublish=0,  # no limit
            PublishingEnabled=True,
            Priority=0,
        )
        if wanted:
            subscription = await client.create_subscription(params, session)
            results = await subscription.create_monitored_items([self._request(item, nid) for item, nid in wanted])
            for (item, _), result in zip(wanted, results, strict=True):
                if isinstance(result, ua.StatusCode):
                    msg = f"node {item.node_id!r} ({item.alias}): {result.name} ({result.value:#010x})"
                    refused[item.alias] = (msg, int(result.value))
                else:
                    session.subscribed.append(item.alias)

        for message, _ in refused.values():
            self.status.error("bad_node", message)
        if set(refused) != self._refused_before:
            self._refused_before = set(refused)
            if refused:
                _log.warning(
                    "opcua %s: %d of %d node(s) cannot be read at %s (BAD readings sent): %s",
                    self.name,
                    len(refused),
                    len(self.items),
                    self.endpoint,
                    "; ".join(message for message, _ in refused.values()),
                )
        ts = now_ns()
        return [
            Reading(self.name, alias, None, Quality.BAD, ts, None, status) for alias, (_, status) in refused.items()
        ]

    def _request(self, item: _Item, nid: ua.NodeId) -> ua.MonitoredItemCreateRequest:
        c = self.config
        return ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=nid, AttributeId=AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=ua.MonitoringParameters(
                ClientHandle=item.handle,
                SamplingInterval=float(c.sampling_interval_ms),
                QueueSize=c.queue_size,
                DiscardOldest=True,
            ),
        )

    async def _pump(self, sink: Sink, session: _Session) -> None:
        while not session.lost.is_set():
            raise_if_cancelling()
            await self.wake.wait()
            self.wake.clear()
            await self._flush(sink)
        # asyncua may still hold handler calls for notifications that arrived before the loss: let them
        # run so they come before the gap marker.
        await asyncio.sleep(0)
        ts = now_ns()
        for alias in session.subscribed:
            self.enqueue(Reading(self.name, alias, None, Quality.BAD, ts, None, session.reason))
        await self._flush(sink)

    async def _flush(self, sink: Sink) -> None:
        if self._dropped:
            self._count_dropped()
        if not self._pending:
            return
        batch = list(self._pending)
        self._pending.clear()
        st = self.status
        st.readings += len(batch)
        for r in batch:
            if r.quality is Quality.BAD:
                st.bad_readings += 1
        for r in reversed(batch):
            if r.quality is Quality.GOOD:
                st.last_good_ns = r.gateway_ts_ns
                break
        await sink(batch)

    def _count_dropped(self) -> None:
        dropped, self._dropped = self._dropped, 0
        kinds = self.status.errors_by_kind
        kinds["overflow"] = kinds.get("overflow", 0) + dropped
        self.status.errors += 1
        self.status.last_error = (
            f"dropped the {dropped} oldest reading(s): more than {self.max_pending} waited for the sink"
            " (buffer too slow?)"
        )
        _log.warning("opcua %s: %s", self.name, self.status.last_error)

    async def _close(self, client: Client) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await client.disconnect()
        except _SESSION_ERRORS as exc:
            # Nothing to do about it: the server drops the session after SESSION_TIMEOUT_MS anyway.
            _log.debug("opcua %s: closing the session at %s: %s", self.name, self.endpoint, _describe(exc))
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # asyncua's disconnect swallows a CancelledError that lands while it stops its own tasks
            # (Client._cancel_task): restore it, or run() would go on after being cancelled.
            raise asyncio.CancelledError

    def _set_state(self, state: SourceState, reason: str | None) -> None:
        if self.status.state == state:
            return
        self.status.state = state
        if state is SourceState.CONNECTED:
            _log.info("opcua %s: %s at %s", self.name, reason, self.endpoint)
        else:
            _log.warning("opcua %s: %s; reconnecting with backoff", self.name, reason)
