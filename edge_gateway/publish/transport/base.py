"""The cloud transport contract the Publisher, Presence, ShadowAgent and Gateway use.

Two implementations: ``mqtt.MqttTransport`` (the gateway's own MQTT 5 connection) and
``greengrass_ipc.GreengrassIpcTransport`` (through the Greengrass nucleus). Rules every one keeps:

- ``start()`` returns at once; the transport connects, and reconnects, by itself (one loop, never two).
- ``publish(topic, payload)`` is QoS 1: it returns a success reason code (< 0x80) or raises
  ``PublishError``; ``retryable=False`` for what can never succeed, ``reason_code`` for a refusal the
  destination's ``dead_letter_codes`` judge (135: not authorized). IoT Core's topic and payload limits are
  checked before anything is sent.
- ``subscribe(filter, handler)``: handlers run on the event loop, with (topic, payload); subscriptions
  survive reconnects. ``on_connect(listener)`` listeners run on the loop after every connect.
- ``connected`` and ``status`` (endpoint, port, last_error) describe the link for the status file and for
  the shadow's rollback decisions; ``status_dict()`` is what the status file shows.
- ``stop(final)`` sends ``final`` when connected, then closes; ``reconfigure(settings)`` takes new
  ``publisher.mqtt`` settings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from edge_gateway.config.model import MqttSettings
from edge_gateway.errors import PublishError

MessageHandler = Callable[[str, bytes], None]

FINAL_PUBLISH_TIMEOUT_S = 1.0


async def publish_final(publish: Callable[[str, bytes], Awaitable[int]], final: tuple[str, bytes]) -> str | None:
    """Send ``stop(final)``'s last message within ``FINAL_PUBLISH_TIMEOUT_S``; why it failed, or None."""
    try:
        async with asyncio.timeout(FINAL_PUBLISH_TIMEOUT_S):
            await publish(*final)
    except (PublishError, TimeoutError) as exc:
        return str(exc) or "timed out"
    return None


class TransportStatus(Protocol):
    endpoint: str
    port: int
    connected: bool
    last_error: str | None


class Transport(Protocol):
    @property
    def status(self) -> TransportStatus: ...

    @property
    def connected(self) -> bool: ...

    def status_dict(self) -> dict[str, Any]: ...

    async def start(self) -> None: ...

    async def stop(self, final: tuple[str, bytes] | None = None) -> None: ...

    async def reconfigure(self, settings: MqttSettings) -> None: ...

    def on_connect(self, listener: Callable[[], None]) -> None: ...

    async def publish(self, topic: str, payload: bytes) -> int: ...

    async def subscribe(self, topic_filter: str, handler: MessageHandler) -> None: ...
