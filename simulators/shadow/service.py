"""Local stand-in for the AWS IoT Device Shadow service: an MQTT client of the test broker (Mosquitto).

``ShadowService`` answers every shadow request on the broker (``$aws/things/<thing>/shadow[/name/<name>]
/get|update|delete``) the way AWS does; the document semantics (merge, delta, metadata, versions, the
error codes and messages) live in ``simulators.shadow.document`` with the protocol they follow.
``ShadowCaller`` is the requesting side (a device or an app), for the CLI and the tests.

- One worker task applies requests in arrival order and publishes each answer (QoS 1, PUBACK awaited)
  before taking the next request, so answers and events leave in the order the state changed.
- ``ShadowService.update()``/``delete()`` act as the UpdateThingShadow/DeleteThingShadow APIs (an
  operator): a refusal is raised, not published; an acceptance is published as if it came over MQTT.
- Above the optional per-shadow rate limit a request is answered 429; an exception in the document
  logic is answered 500 and logged, and the worker lives on.

The command line (``python -m simulators.shadow serve|get|set|delete``, which ``make demo`` and the README
use) is ``simulators/shadow/__main__.py``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from edge_gateway.config.model import MqttSettings
from edge_gateway.errors import PublishError
from edge_gateway.publish.transport.mqtt import MqttTransport
from simulators.service import AsyncService
from simulators.shadow.document import (
    DEFAULT_MAX_DOCUMENT_BYTES,
    INTERNAL_FAILURE,
    TOO_MANY_REQUESTS,
    JsonObject,
    Outcome,
    ShadowKey,
    ShadowRequestError,
    ShadowStore,
    client_token_of,
    parse_topic,
)

_log = logging.getLogger(__name__)

# What the service and caller APIs hand out: a JSON object, loosely typed for the tests that read it.
Document: TypeAlias = dict[str, Any]

# Every request topic, named and classic; responses have one level more, so the service never hears itself.
REQUEST_FILTERS: Final = ("$aws/things/+/shadow/name/+/+", "$aws/things/+/shadow/+")


# ---- MQTT plumbing -----------------------------------------------------------------------------------


class _RateLimiter:
    """Token bucket per shadow (burst = one second's worth, at least 1); None lets everything through."""

    def __init__(self, rate_per_s: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self._clock = clock
        self._buckets: dict[ShadowKey, tuple[float, float]] = {}

    def allow(self, key: ShadowKey) -> bool:
        if self.rate_per_s is None:
            return True
        now, burst = self._clock(), max(1.0, self.rate_per_s)
        tokens, last = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - last) * self.rate_per_s)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        return allowed


@dataclass(slots=True)
class _Job:
    operation: str
    key: ShadowKey
    payload: bytes
    # None: an MQTT request, answered on the response topics. A future: an API call (the "cloud" side).
    reply: asyncio.Future[Document] | None = None


def _dump(doc: JsonObject) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


class ShadowService(AsyncService):
    """The shadow service on one MQTT connection: ``async with ShadowService(settings) as svc: ...``.

    ``settings`` name the broker and this client's certificate (its CN must be allowed to read and write
    ``$aws/things/#`` when the broker has an ACL). ``counts`` counts answers as ``"<op>/accepted"`` or
    ``"<op>/rejected"``, and ``"publish_failed"``. ``clock`` gives the epoch seconds stamped into documents
    (tests fix it to assert whole payloads).
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str = "shadow-service",
        max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
        rate_limit_per_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = ShadowStore(max_document_bytes=max_document_bytes)
        self.transport = MqttTransport(settings, client_id)
        self.counts: Counter[str] = Counter()
        self._limiter = _RateLimiter(rate_limit_per_s)
        self._clock = clock
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float = 10.0) -> None:
        """Connect, subscribe to every request topic and start answering; raise PublishError if that fails."""
        self._worker = asyncio.create_task(self._serve(), name=f"shadow-service[{self.transport.client_id}]")
        try:
            await self.transport.start()
            await self.transport.wait_connected(timeout_s)
            for topic_filter in REQUEST_FILTERS:
                await self.transport.subscribe(topic_filter, self._on_request)
        except BaseException:
            await self.stop()
            raise
        _log.info("shadow service: answering on %s", ", ".join(REQUEST_FILTERS))

    async def stop(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            try:
                await worker
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        while not self._jobs.empty():
            job = self._jobs.get_nowait()
            if job.reply is not None and not job.reply.done():
                job.reply.cancel()
        await self.transport.stop()

    # ---- the "cloud" side: what an operator or a cloud app would do through the AWS API ----------------

    def document(self, thing: str, name: str | None = None) -> Document | None:
        """The shadow as get/accepted would carry it now (with ``state.delta``), or None if it does not exist."""
        return self.store.document(ShadowKey(thing, name), int(self._clock()))

    async def update(self, thing: str, name: str | None, request: Mapping[str, object] | str | bytes) -> Document:
        """UpdateThingShadow: the accepted document, published with its events; raise ShadowRequestError."""
        if isinstance(request, bytes):
            payload = request
        elif isinstance(request, str):
            payload = request.encode()
        else:
            payload = json.dumps(request).encode()
        return await self._call("update", ShadowKey(thing, name), payload)

    async def set_desired(
        self,
        thing: str,
        name: str | None,
        desired: Mapping[str, object] | None,
        *,
        version: int | None = None,
        client_token: str | None = None,
    ) -> Document:
        """Set (merge) desired state as an operator would; ``None`` clears desired."""
        request: dict[str, object] = {"state": {"desired": desired}}
        if version is not None:
            request["version"] = version
        if client_token is not None:
            request["clientToken"] = client_token
        return await self.update(thing, name, request)

    async def delete(self, thing: str, name: str | None = None) -> Document:
        """DeleteThingShadow: ``{"version", "timestamp"}``; raise ShadowRequestError (404) if there is none."""
        return await self._call("delete", ShadowKey(thing, name), b"")

    async def _call(self, operation: str, key: ShadowKey, payload: bytes) -> Document:
        if self._worker is None:
            msg = "the shadow service is not started: use `async with ShadowService(...)` or call start()"
            raise RuntimeError(msg)
        reply: asyncio.Future[Document] = asyncio.get_running_loop().create_future()
        self._jobs.put_nowait(_Job(operation, key, payload, reply))
        return await reply

    # ---- MQTT side ---------------------------------------------------------------------------------------

    def _on_request(self, topic: str, payload: bytes) -> None:
        parsed = parse_topic(topic)
        if parsed is not None:
            self._jobs.put_nowait(_Job(parsed[1], parsed[0], payload))

    async def _serve(self) -> None:
        while True:
            job = await self._jobs.get()
            await self._handle(job)

    async def _handle(self, job: _Job) -> None:
        timestamp = int(self._clock())
        prefix = job.key.topic_prefix
        if job.reply is not None:
            try:
                outcome = self._apply(job, timestamp)
            except Exception as exc:  # noqa: BLE001 - a refusal (or a bug here) goes to the caller, not to the worker
                if not job.reply.done():
                    job.reply.set_exception(exc)
                return
            if not job.reply.done():
                job.reply.set_result(copy.deepcopy(outcome.response))
        elif not self._limiter.allow(job.key):
            error = ShadowRequestError(429, TOO_MANY_REQUESTS, client_token_of(job.payload))
            outcome = Outcome(accepted=False, response=error.payload())
        else:
            try:
                outcome = self.store.handle(job.operation, job.key, job.payload, timestamp)
            except Exception:  # noqa: BLE001 - a bug here answers 500 like the real service, and the worker lives on
                _log.exception("shadow service: %s %s failed", job.operation, job.key)
                error = ShadowRequestError(500, INTERNAL_FAILURE, client_token_of(job.payload))
                outcome = Outcome(accepted=False, response=error.payload())
        verdict = "accepted" if outcome.accepted else "rejected"
        self.counts[f"{job.operation}/{verdict}"] += 1
        _log.info(
            "shadow %s %s: %s %s",
            job.operation,
            job.key,
            verdict,
            f"version {outcome.response.get('version')}" if outcome.accepted else outcome.response.get("message"),
        )
        await self._publish(f"{prefix}/{job.operation}/{verdict}", outcome.response)
        for suffix, event in outcome.events:
            await self._publish(f"{prefix}/{suffix}", event)

    def _apply(self, job: _Job, timestamp: int) -> Outcome:
        if job.operation == "update":
            return self.store.update(job.key, job.payload, timestamp)
        return self.store.delete(job.key, job.payload, timestamp)

    async def _publish(self, topic: str, doc: JsonObject) -> None:
        try:
            await self.transport.publish(topic, _dump(doc))
        except PublishError as exc:
            self.counts["publish_failed"] += 1
            _log.warning("shadow service: answer on %r not delivered: %s", topic, exc)


class ShadowCaller:
    """The requesting side (a device or an app) over one MqttTransport: publish a request, await its answer.

    Used by the CLI and the tests; answers are matched by clientToken, and an answer without one goes to
    the oldest request waiting on that topic.
    """

    def __init__(self, transport: MqttTransport) -> None:
        self.transport = transport
        self._subscribed: set[str] = set()
        self._waiting: dict[str, list[tuple[str | None, asyncio.Future[tuple[bool, Document]]]]] = {}

    async def request(
        self, key: ShadowKey, operation: str, payload: bytes | Mapping[str, object] = b"", *, timeout_s: float = 10.0
    ) -> tuple[bool, Document]:
        """``(accepted, answer)``. A mapping gets a fresh clientToken unless it has one; bytes go as they are."""
        if isinstance(payload, Mapping):
            doc = dict(payload)
            doc.setdefault("clientToken", uuid.uuid4().hex)
            payload = json.dumps(doc).encode()
        base = f"{key.topic_prefix}/{operation}"
        if base not in self._subscribed:
            await self.transport.subscribe(f"{base}/accepted", self._on_answer)
            await self.transport.subscribe(f"{base}/rejected", self._on_answer)
            self._subscribed.add(base)
        answer: asyncio.Future[tuple[bool, Document]] = asyncio.get_running_loop().create_future()
        entry = (client_token_of(payload), answer)
        self._waiting.setdefault(base, []).append(entry)
        try:
            await self.transport.publish(base, payload)
            async with asyncio.timeout(timeout_s):
                return await answer
        finally:
            self._waiting[base].remove(entry)

    def _on_answer(self, topic: str, payload: bytes) -> None:
        base, _, verdict = topic.rpartition("/")
        try:
            doc = json.loads(payload)
        except ValueError:
            _log.warning("shadow caller: answer on %r is not JSON: %r", topic, payload[:200])
            return
        if not isinstance(doc, dict):
            return
        waiting = [(t, f) for t, f in self._waiting.get(base, []) if not f.done()]
        token = doc.get("clientToken")
        chosen = next((f for t, f in waiting if token is not None and t == token), None)
        if chosen is None and token is None and waiting:
            chosen = waiting[0][1]
        if chosen is not None:
            chosen.set_result((verdict == "accepted", doc))
