"""Presence and heartbeat on the status topic (``heartbeat.topic``).

- Presence: ``online`` on every connect, ``stopped`` on a clean shutdown, and the MQTT 5 Last Will
  ``offline`` that the broker publishes when the connection dies without a DISCONNECT. Over Greengrass IPC
  (``publisher.mqtt.mode: greengrass_ipc``) there is no Last Will: no ``offline``, the nucleus' own
  status is the equivalent; ``online``, ``stopped`` and heartbeats go out as usual.
- Heartbeat: every ``heartbeat_s`` while connected, and right after each ``online``, a status snapshot
  (status.py) taken at that moment, never an old one.
- Status first: after every connect, data waits (``wait_announced``, the publishers' gate) until ``online``
  and the fresh heartbeat were acknowledged (or ``ANNOUNCE_TIMEOUT_S`` passed), so after an outage the first
  thing the cloud sees is the current status, then the backlog. Only messages the MQTT client already held
  unacknowledged when the link broke (at most the publishers' in-flight window) may be resent before it.
- Each delivered heartbeat is handed to ``on_delivered`` (the gateway keeps the last one on disk for
  ``edge-gateway status --last-heartbeat`` and reports health to the shadow from it).

Message (JSON, format ``v`` 1): ``{"v":1,"kind":"presence"|"heartbeat","gw":<thing>,"state":"online"|
"offline"|"stopped","client_id":..., "version":..., "started":<epoch s>}`` plus ``"time"`` (epoch s, when
sent) except in the Last Will, which the broker holds from the moment of connecting; a heartbeat adds
``"status"``: the snapshot. Not retained (IoT Core bills retained messages). Sent QoS 1 outside the data
backlog: never queued behind buffered readings, and latest wins: nothing is sent while disconnected (no
stale heartbeats pile up) and a heartbeat is skipped while the previous one is still unacknowledged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from edge_gateway import __version__
from edge_gateway.errors import PublishError
from edge_gateway.publish.transport.base import Transport

_log = logging.getLogger(__name__)
FORMAT_VERSION = 1
ANNOUNCE_TIMEOUT_S = 5.0
_DISCONNECTED_POLL_S = 0.25


async def _no_status() -> dict[str, Any] | None:
    return None


class Presence:
    def __init__(
        self,
        topic: str,
        thing: str,
        client_id: str,
        *,
        heartbeat_s: float = 60.0,
        snapshot: Callable[[], Awaitable[dict[str, Any] | None]] = _no_status,
        on_delivered: Callable[[bytes, dict[str, Any]], None] = lambda _payload, _status: None,
    ) -> None:
        self.topic = topic
        self.heartbeat_s = heartbeat_s
        self.snapshot = snapshot
        self.on_delivered = on_delivered
        self._announced = asyncio.Event()  # set once the current connection's status went out
        self._transport: Transport | None = None
        self._base = {"gw": thing, "client_id": client_id, "version": __version__}
        self._started = round(time.time(), 3)
        self._tasks: set[asyncio.Task[None]] = set()
        self._beating = False

    def message(self, state: str, *, timed: bool = True, status: dict[str, Any] | None = None) -> bytes:
        kind = "presence" if status is None else "heartbeat"
        doc: dict[str, object] = {"v": FORMAT_VERSION, "kind": kind, **self._base, "state": state}
        doc["started"] = self._started
        if timed:
            doc["time"] = round(time.time(), 3)
        if status is not None:
            doc["status"] = status
        return json.dumps(doc, separators=(",", ":")).encode()

    @property
    def will(self) -> tuple[str, bytes]:
        return self.topic, self.message("offline", timed=False)

    @property
    def stopped(self) -> tuple[str, bytes]:
        return self.topic, self.message("stopped")

    def attach(self, transport: Transport) -> None:
        """Announce ``online``, then a fresh heartbeat, after every connect of ``transport``."""

        self._transport = transport

        def announce() -> None:
            self._announced.clear()
            task = asyncio.get_running_loop().create_task(self._announce(transport), name="presence:online")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        transport.on_connect(announce)

    async def _announce(self, transport: Transport) -> None:
        try:
            async with asyncio.timeout(ANNOUNCE_TIMEOUT_S):
                try:
                    await transport.publish(self.topic, self.message("online"))
                except PublishError as exc:
                    _log.warning("presence: 'online' on %s not delivered: %s", self.topic, exc)
                await self.beat(transport)
        except TimeoutError:
            _log.warning(
                "presence: no acknowledgement for the status on %s within %.0f s", self.topic, ANNOUNCE_TIMEOUT_S
            )
        finally:
            self._announced.set()

    async def wait_announced(self) -> None:
        """Return once connected and this connection's ``online`` and fresh status went out (or timed out)."""
        while True:
            await self._announced.wait()
            if self._transport is None or self._transport.connected:
                return
            await asyncio.sleep(_DISCONNECTED_POLL_S)  # the next connect clears the event and announces

    async def beat(self, transport: Transport) -> None:
        """One heartbeat now with a fresh snapshot, unless disconnected or the previous one is unacknowledged."""
        if self._beating or not transport.connected:
            return
        self._beating = True
        try:
            status = await self.snapshot()
            if status is None:
                return
            payload = self.message("online", status=status)
            await transport.publish(self.topic, payload)
        except PublishError as exc:
            _log.debug("heartbeat on %s not delivered: %s", self.topic, exc)
        else:
            self.on_delivered(payload, status)
        finally:
            self._beating = False

    async def run(self, transport: Transport) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await self.beat(transport)
