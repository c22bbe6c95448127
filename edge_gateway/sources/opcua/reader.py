"""OPC UA source: one session per source, subscribed and polled node groups, watchdogs, recovery.

Contract (sources/base.py) plus (reference: docs/opcua.md):
- Nodes (nodes.py) are resolved on every connect; the subscribed ones become monitored items
  (data change, per-node sampling interval, queue size, absolute/percent deadband) of one subscription
  with ``publishing_interval_ms``; each poll group is read with batched Read requests every
  ``poll_interval_ms`` (registered first with RegisterNodes). Every multi-node request stays within the
  server's advertised operation limits.
- Publish responses are handled whole (no task per notification): each data change becomes a Reading
  appended to a queue; ``run()`` drains the queue at every wake-up with one ``await sink(batch)`` (group
  commit), in notification order. The queue is bounded (``max_pending``): when the sink falls that far
  behind, the oldest readings are dropped, counted in ``errors_by_kind["overflow"]`` and logged once per
  episode with the count.
- A node that cannot be resolved or that the server refuses gives one BAD reading for its alias per
  session (``status`` is the server's StatusCode, or the reason as text), counts in
  ``errors_by_kind["bad_node"]``, and is logged once per change of the refused set; the rest flow.
- Quality: StatusCode severity (values.py), the code kept in ``status`` when not GOOD. A Good value
  with the Overflow bit counts in ``errors_by_kind["server_overflow"]``. Timestamp per ``timestamp``:
  source (falling back to server), server (falling back to source) or gateway only.
- Recovery (a state machine: STARTING -> CONNECTED -> RECONNECTING -> CONNECTED ..., STOPPED at the end):
  * session loss (socket closed, the server-state probe every ``timeout_s`` unanswered, a Bad
    subscription status) ends the session;
  * keep-alive watchdog: no publish response (data or keep-alive) for 2 x the revised keep-alive
    interval + ``timeout_s`` while the session looks connected: the subscription stalled
    (``errors_by_kind["stalled"]``), the session is ended;
  * data-age watchdog (``max_data_age_s``): no data change for that long, same;
  * at the end of a session every subscribed or polled alias gets one BAD reading with the reason (the
    gap marker), the state goes RECONNECTING (logged once), and the reader reconnects after a jittered
    ``Backoff`` delay; after a connection loss (not a stall) it first asks the new session to take the
    old subscription over (TransferSubscriptions, initial values resent) and creates a new
    subscription only when the server refuses (e.g. it restarted).
- One session's publish handler, watchdogs and poll tasks live in session.py (which sees this reader only
  through its ``SessionOwner`` protocol); creating or taking over the subscription in subscription.py.
- Bounds (limits.py, values.py; docs/opcua.md "Limits"): the client enforces ``max_message_bytes`` and
  ``max_chunk_count`` itself. A refused Publish response gives every subscribed alias a BAD reading with
  the reason (its notifications are lost; the session goes on); a refused Read is split in halves until
  the node that is too large is alone, which then gets a BAD reading with the reason at every poll
  (session.py). A value over ``max_value_bytes`` becomes a BAD reading with the reason, before any
  conversion. Both count in ``errors_by_kind["too_large"]`` and are logged once per session.
- Security (security.py): Sign / SignAndEncrypt, trust list, user and password; a refused setup
  is reported with what to do and retried with backoff like any connection failure.
- Cancellation is never swallowed: the session is closed (at most ``CLOSE_TIMEOUT_S``) and the
  ``CancelledError`` propagates; readings still queued at that moment are not handed to the sink.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError

from edge_gateway.model import Quality, Reading, now_ns
from edge_gateway.sources.base import Sink, SourceState, SourceStatus
from edge_gateway.sources.opcua.config import OpcUaSource
from edge_gateway.sources.opcua.limits import Limits, bound
from edge_gateway.sources.opcua.nodes import build_items, read_limits, resolve, server_started
from edge_gateway.sources.opcua.security import SecuritySetupError, secure
from edge_gateway.sources.opcua.session import SESSION_ERRORS, Session, describe
from edge_gateway.sources.opcua.subscription import create_subscription, take_over
from edge_gateway.sources.opcua.values import oversize, quality_of, server_overflowed, to_ns, to_value
from edge_gateway.util.backoff import Backoff
from edge_gateway.util.tasks import cancel_and_wait, raise_if_cancelling

__all__ = ["OpcUaReader", "quality_of", "server_overflowed", "to_ns", "to_value"]

_log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 2.0
MAX_PENDING = 100_000
# The server drops our session this long after it last heard from us: short enough that a PLC with few
# session slots gets them back soon after a network cut, long enough to transfer the subscription.
SESSION_TIMEOUT_MS = 60_000
_WATCHDOG_TICK_S = 0.25
_AUTH_CODES = {
    StatusCodes.BadUserAccessDenied,
    StatusCodes.BadIdentityTokenInvalid,
    StatusCodes.BadIdentityTokenRejected,
}
_CERT_CODES = {
    StatusCodes.BadCertificateUntrusted,
    StatusCodes.BadSecurityChecksFailed,
    StatusCodes.BadCertificateInvalid,
    StatusCodes.BadCertificateUriInvalid,
}


class OpcUaReader:
    def __init__(self, config: OpcUaSource, *, max_pending: int = MAX_PENDING) -> None:
        self.config = config
        self.max_pending = max_pending
        self.name = config.name
        self.endpoint = config.endpoint
        self.status = SourceStatus(config.name)
        self.items = build_items(config)
        self.aliases = {item.handle: item.alias for item in self.items}
        self.wake = asyncio.Event()
        self._pending: deque[Reading] = deque()
        self._dropped = 0  # readings dropped from the full queue since the last flush
        self._refused_before: set[str] = set()
        # After a connection loss: the subscription the next session tries to take over, and the sequence
        # number of its last notification we got (Republish fetches the ones lost on the wire).
        self._transferable: tuple[int, list[str]] | None = None
        self.last_sequence = 0
        self._server_start: object = None  # ServerStatus.StartTime of the server of the last session
        self.transfers = 0  # subscriptions taken over by a new session (for tests and the docs)

    async def run(self, sink: Sink) -> None:
        backoff = Backoff(self.config.reconnect_min_s, self.config.reconnect_max_s)
        try:
            while True:
                raise_if_cancelling()  # asyncua's wait_for can swallow a cancel (edge_gateway/util/tasks.py)
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

    def on_value(self, handle: int, dv: ua.DataValue, session: Session) -> None:
        alias = self.aliases.get(handle)
        if alias is None:  # not one of our handles
            return
        code = dv.StatusCode.value if dv.StatusCode is not None else 0
        quality = quality_of(code)
        if quality is Quality.GOOD and code and server_overflowed(code):
            self._count_server_overflow(alias, session)
        variant = dv.Value
        raw = variant.Value if variant is not None else None
        too_large = oversize(raw, self.config.max_value_bytes)
        if too_large is not None:
            self.mark_gap([alias], f"node {alias}: {too_large}", session)
            return
        value = to_value(raw)
        pref = self.config.timestamp
        if pref == "source":
            ts = to_ns(dv.SourceTimestamp) or to_ns(dv.ServerTimestamp)
        elif pref == "server":
            ts = to_ns(dv.ServerTimestamp) or to_ns(dv.SourceTimestamp)
        else:
            ts = None
        status = None if quality is Quality.GOOD else code
        self.enqueue(Reading(self.name, alias, value, quality, now_ns(), ts, status))

    def mark_gap(self, aliases: list[str], reason: str, session: Session) -> None:
        """One BAD reading with ``reason`` per alias: a value refused for its size (counted, logged once)."""
        self.status.error("too_large", reason)
        if not session.too_large_seen:
            session.too_large_seen = True
            _log.warning("opcua %s: %s (BAD reading sent; counted in errors_by_kind.too_large)", self.name, reason)
        ts = now_ns()
        for alias in aliases:
            self.enqueue(Reading(self.name, alias, None, Quality.BAD, ts, None, reason))

    def _setup_hint(self, exc: BaseException) -> str:
        c = self.config
        if isinstance(exc, UaStatusCodeError):
            if exc.code in _AUTH_CODES:
                user = c.auth.username if c.auth else "anonymous"
                where = (
                    f"password file {c.auth.password_file}"
                    if c.auth and c.auth.password_file
                    else f"environment variable {c.auth.password_env}"
                    if c.auth
                    else "auth settings"
                )
                return f"; the server refused user {user!r}: check auth.username and the {where}"
            if exc.code in _CERT_CODES:
                return (
                    f"; the server does not accept our client certificate {c.security.cert_dir}/client_cert.der:"
                    " add it to the server's trusted certificates"
                )
        if c.security.mode == "None":
            return "; check that the server runs, the endpoint is right and it accepts security policy None"
        return (
            f"; check that the server runs, the endpoint is right and it offers {c.security.policy}/{c.security.mode}"
        )

    async def _session(self, sink: Sink, backoff: Backoff) -> str:
        """One session from connect to loss; returns why it ended (or never started)."""
        c = self.config
        session = Session(self)
        client = Client(self.endpoint, timeout=c.timeout_s, watchdog_intervall=c.timeout_s)
        client.name = client.description = f"edge-gateway source {self.name}"
        client.session_timeout = SESSION_TIMEOUT_MS
        client.connection_lost_callback = session.connection_lost
        bound(client, Limits(c.max_message_bytes, c.max_chunk_count), session.response_refused)
        connected = False
        pollers: list[asyncio.Task[None]] = []
        try:
            try:
                await secure(client, self.endpoint, c.security, c.auth)
                await client.connect()
                connected = True
                refused = await self._subscribe(client, session)
                pollers = await session.start_polling(client)
            except SecuritySetupError as exc:
                return str(exc)
            except SESSION_ERRORS as exc:
                return f"connect and subscribe to {self.endpoint}: {describe(exc)}{self._setup_hint(exc)}"
            backoff.reset()
            n = len(session.subscribed) + len(session.polled)
            self._set_state(SourceState.CONNECTED, f"reading {n} of {len(self.items)} node(s)")
            for reading in refused:
                self.enqueue(reading)
            await self._pump(sink, session)
            return session.reason
        finally:
            await cancel_and_wait(pollers)
            # A failed connect keeps what an earlier session left to take over.
            if session.subscription_id is not None:
                self._transferable = None if session.stalled else (session.subscription_id, session.subscribed)
            if connected:
                await self._close(client)
            else:
                # No session to close (a failed connect has already closed its socket, and a full disconnect
                # would only make asyncua warn on every retry); the socket of a cancelled connect must go.
                client.disconnect_socket()

    async def _subscribe(self, client: Client, session: Session) -> list[Reading]:
        """Resolve the nodes, take over or create the subscription and its items; one BAD reading per
        refused node is returned."""
        c = self.config
        limits = await read_limits(client, c.max_items_per_call)
        session.limits = limits
        resolved = await resolve(client, self.items, limits)
        refused = resolved.refused
        wanted = [(item, nid) for item, nid in resolved.nodes if item.group.poll_interval_ms is None]
        session.to_poll = [(item, nid) for item, nid in resolved.nodes if item.group.poll_interval_ms is not None]
        if wanted and not await self._transfer(client, session):
            self.last_sequence = 0  # a new subscription numbers its notifications anew
            await create_subscription(client, session, c, wanted, refused)
        self._report_refused(refused)
        ts = now_ns()
        return [
            Reading(self.name, alias, None, Quality.BAD, ts, None, status) for alias, (_, status) in refused.items()
        ]

    async def _transfer(self, client: Client, session: Session) -> bool:
        """Take over the previous session's subscription (after a connection loss); False: create anew."""
        started, self._server_start = self._server_start, await server_started(client)
        if self._transferable is None:
            return False
        sub_id, subscribed = self._transferable
        self._transferable = None
        if started != self._server_start or started is None:
            # Another server process: its subscription ids are not ours, even where the numbers match.
            _log.info("opcua %s: the server restarted; creating a new subscription", self.name)
            return False
        if not await take_over(client, session, self.config, sub_id, subscribed):
            return False
        self.transfers += 1
        _log.info(
            "opcua %s: took over subscription %d (%d items) in the new session", self.name, sub_id, len(subscribed)
        )
        return True

    def _report_refused(self, refused: dict[str, tuple[str, int | str]]) -> None:
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

    async def _pump(self, sink: Sink, session: Session) -> None:
        max_age = self.config.max_data_age_s
        while not session.lost.is_set():
            raise_if_cancelling()
            try:
                async with asyncio.timeout(_WATCHDOG_TICK_S):
                    await self.wake.wait()
            except TimeoutError:
                session.check_watchdogs(max_age)
                continue
            self.wake.clear()
            await self._flush(sink)
            session.check_watchdogs(max_age)
        # Handler calls for notifications that arrived before the loss come before the gap marker.
        await asyncio.sleep(0)
        ts = now_ns()
        for alias in [*session.subscribed, *session.polled]:
            self.enqueue(Reading(self.name, alias, None, Quality.BAD, ts, None, session.reason))
        await self._flush(sink)

    def _count_server_overflow(self, alias: str, session: Session) -> None:
        kinds = self.status.errors_by_kind
        kinds["server_overflow"] = kinds.get("server_overflow", 0) + 1
        if not session.overflow_seen:
            session.overflow_seen = True
            _log.warning(
                "opcua %s: the server dropped queued values of %s (overflow bit); raise queue_size or lower"
                " publishing_interval_ms (counted in errors_by_kind.server_overflow)",
                self.name,
                alias,
            )

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
        except SESSION_ERRORS as exc:
            # Nothing to do about it: the server drops the session after SESSION_TIMEOUT_MS anyway.
            _log.debug("opcua %s: closing the session at %s: %s", self.name, self.endpoint, describe(exc))
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
