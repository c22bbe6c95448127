"""Presence on the status topic: ``online`` on every connect, ``stopped`` on a clean shutdown, and the MQTT 5
Last Will ``offline`` that the broker publishes when the connection dies without a DISCONNECT.

Message (JSON, format ``v`` 1): ``{"v":1,"gw":<thing>,"state":"online"|"offline"|"stopped",
"client_id":..., "version":..., "started":<epoch s>}`` plus ``"time"`` (epoch s, when sent) except in the
Last Will, which the broker holds from the moment of connecting. Not retained (IoT Core bills retained
messages); a cloud rule or a subscriber keeps the last state. Presence is sent QoS 1 outside the data
backlog: it never waits behind buffered readings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from edge_gateway import __version__
from edge_gateway.errors import PublishError
from edge_gateway.publish.mqtt import MqttTransport

_log = logging.getLogger(__name__)
FORMAT_VERSION = 1


class Presence:
    def __init__(self, topic: str, thing: str, client_id: str) -> None:
        self.topic = topic
        self._base = {"v": FORMAT_VERSION, "gw": thing, "client_id": client_id, "version": __version__}
        self._started = round(time.time(), 3)
        self._tasks: set[asyncio.Task[None]] = set()

    def message(self, state: str, *, timed: bool = True) -> bytes:
        doc: dict[str, object] = {**self._base, "state": state, "started": self._started}
        if timed:
            doc["time"] = round(time.time(), 3)
        return json.dumps(doc, separators=(",", ":")).encode()

    @property
    def will(self) -> tuple[str, bytes]:
        return self.topic, self.message("offline", timed=False)

    @property
    def stopped(self) -> tuple[str, bytes]:
        return self.topic, self.message("stopped")

    def attach(self, transport: MqttTransport) -> None:
        """Announce ``online`` after every connect of ``transport``."""

        def announce() -> None:
            task = asyncio.get_running_loop().create_task(self._announce(transport), name="presence:online")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        transport.on_connect(announce)

    async def _announce(self, transport: MqttTransport) -> None:
        try:
            await transport.publish(self.topic, self.message("online"))
        except PublishError as exc:
            _log.warning("presence: 'online' on %s not delivered: %s", self.topic, exc)
