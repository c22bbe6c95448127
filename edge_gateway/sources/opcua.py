"""OPC UA source: one subscription per source, data changes to readings, reconnect with backoff.

Contract (sources/base.py) plus:
- Every configured node is a monitored item (data change, ``sampling_interval_ms``, ``queue_size``) of one
  subscription with ``publishing_interval_ms``. Notifications are collected in arrival order and handed
  to the sink in one call per wake-up (group commit), never one call per value.
- A node the server refuses (unknown id, no access) yields one BAD reading with the status name and is
  reported in ``status``; the other nodes keep flowing.
- Quality follows the StatusCode severity bits (Good / Uncertain / Bad); the original code is kept in
  ``Reading.status``. The source timestamp is the server's SourceTimestamp (ServerTimestamp if absent).
- Session loss is detected by asyncua's connection watchdog (a server-state read every second); the
  reader then reconnects with jittered backoff and re-creates the subscription. asyncua's own
  auto-reconnect stays off so only one loop runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeNotif
from asyncua.ua.uaerrors import UaError

from edge_gateway.backoff import Backoff
from edge_gateway.config import OpcUaSource
from edge_gateway.model import Quality, Reading, Value, now_ns
from edge_gateway.sources.base import Sink, SourceState, SourceStatus

_log = logging.getLogger(__name__)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_SEVERITY = {0: Quality.GOOD, 1: Quality.UNCERTAIN}


def quality_of(code: int) -> Quality:
    return _SEVERITY.get(code >> 30, Quality.BAD)


def to_ns(ts: dt.datetime | None) -> int | None:
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.UTC)
    return (ts - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def to_value(value: Any) -> Value:  # noqa: ANN401 - whatever the server's Variant holds
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return json.dumps([to_value(v) for v in value])
    return str(value)


class _Collector:
    """asyncua subscription handler: runs on the event loop; keeps notifications in order."""

    def __init__(self, reader: OpcUaReader, aliases: dict[str, str]) -> None:
        self.reader = reader
        self.aliases = aliases
        self.pending: list[Reading] = []
        self.ready = asyncio.Event()

    def datachange_notification(self, node: Node, val: Any, data: DataChangeNotif) -> None:  # noqa: ANN401
        dv = data.monitored_item.Value
        code = dv.StatusCode.value if dv.StatusCode is not None else 0
        quality = quality_of(code)
        source_ts = to_ns(dv.SourceTimestamp) or to_ns(dv.ServerTimestamp)
        alias = self.aliases.get(node.nodeid.to_string(), node.nodeid.to_string())
        status = None if quality is Quality.GOOD else code
        self.pending.append(Reading(self.reader.name, alias, to_value(val), quality, now_ns(), source_ts, status))
        self.ready.set()

    def take(self) -> list[Reading]:
        out, self.pending = self.pending, []
        self.ready.clear()
        return out


class OpcUaReader:
    def __init__(self, config: OpcUaSource) -> None:
        self.config = config
        self.name = config.name
        self.status = SourceStatus(config.name)

    async def run(self, sink: Sink) -> None:
        c = self.config
        backoff = Backoff(c.reconnect_min_s, c.reconnect_max_s)
        while True:
            lost = asyncio.Event()
            client = Client(c.endpoint, timeout=c.timeout_s, watchdog_intervall=1.0)

            async def on_lost(exc: Exception, lost: asyncio.Event = lost) -> None:
                self.status.last_error = f"session lost: {exc!r}"
                lost.set()

            client.connection_lost_callback = on_lost
            try:
                await client.connect()
                collector = await self._subscribe(client, sink)
                self._set_state(SourceState.CONNECTED, None)
                backoff.reset()
                await self._pump(collector, sink, lost)
                reason = self.status.last_error or "session lost"
            except (OSError, TimeoutError, ConnectionError, UaError) as exc:
                reason = f"{c.endpoint}: {type(exc).__name__}: {exc}"
            finally:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2.0):
                        await client.disconnect()
            self.status.error("connection", reason)
            self._set_state(SourceState.RECONNECTING, reason)
            self.status.reconnects += 1
            await asyncio.sleep(backoff.next_delay())

    async def _subscribe(self, client: Client, sink: Sink) -> _Collector:
        c = self.config
        aliases = {}
        nodes = []
        for n in c.nodes:
            node = client.get_node(n.node_id)
            aliases[node.nodeid.to_string()] = n.alias
            nodes.append(node)
        collector = _Collector(self, aliases)
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=c.publishing_interval_ms,
            RequestedLifetimeCount=10_000,
            RequestedMaxKeepAliveCount=max(3, int(10_000 / c.publishing_interval_ms)),
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )
        sub = await client.create_subscription(params, collector)
        results = await sub.subscribe_data_change(
            nodes,
            queuesize=c.queue_size,
            sampling_interval=ua.Double(c.sampling_interval_ms),
        )
        bad = []
        for n, result in zip(c.nodes, results, strict=True):
            if isinstance(result, ua.StatusCode):
                name = result.name if hasattr(result, "name") else hex(result.value)
                self.status.error("bad_node", f"node {n.node_id} ({n.alias}): {name}")
                bad.append(Reading(self.name, n.alias, None, Quality.BAD, now_ns(), None, result.value))
        if bad:
            _log.warning(
                "opcua %s: %d node(s) refused by %s: %s",
                self.name,
                len(bad),
                c.endpoint,
                ", ".join(r.point for r in bad),
            )
            self.status.bad_readings += len(bad)
            self.status.readings += len(bad)
            await sink(bad)
        return collector

    async def _pump(self, collector: _Collector, sink: Sink, lost: asyncio.Event) -> None:
        lost_wait = asyncio.ensure_future(lost.wait())
        try:
            while not lost.is_set():
                ready_wait = asyncio.ensure_future(collector.ready.wait())
                try:
                    await asyncio.wait({ready_wait, lost_wait}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    ready_wait.cancel()
                readings = collector.take()
                if readings:
                    st = self.status
                    st.readings += len(readings)
                    bad = sum(1 for r in readings if r.quality is Quality.BAD)
                    st.bad_readings += bad
                    if bad < len(readings):
                        st.last_good_ns = readings[-1].gateway_ts_ns
                    await sink(readings)
        finally:
            lost_wait.cancel()

    def _set_state(self, state: SourceState, reason: str | None) -> None:
        if self.status.state == state:
            return
        self.status.state = state
        if state is SourceState.CONNECTED:
            _log.info(
                "opcua %s: subscribed to %d node(s) at %s", self.name, len(self.config.nodes), self.config.endpoint
            )
        else:
            _log.warning("opcua %s: %s; reconnecting with backoff", self.name, reason)
