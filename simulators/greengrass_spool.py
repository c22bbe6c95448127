"""The nucleus' cloud MQTT spooler, for ``PublishToIoTCore`` in ``simulators.greengrass_ipc``.

The nucleus answers PublishToIoTCore once the message is **queued** in its spooler, never on PUBACK; a
component that needs delivery must not read the answer as delivery. ``CloudSpool`` models that:

- ``add(message)`` checks what the nucleus' MQTT client checks (``publish_problem``: payload <= 128 KiB,
  IoT Core topic rules for MQTT 5) and the spool's capacity, and raises ``SpoolError`` with the nucleus'
  words. Capacity counts payload bytes (2.5 MiB by default, the memory spooler's): when full, QoS 0
  messages are evicted oldest first; if that is not enough, the message is refused. QoS 0 while the MQTT
  connection is down is refused ("Device is offline. Dropping QoS 0 message.").
- Without a transport, a queued message is delivered at once: it is appended to ``published``.
- With a started ``MqttTransport`` (the caller starts and stops it), ``run()`` publishes the queue oldest
  first, one at a time, always QoS 1 (the transport has no QoS 0), and appends to ``published`` with the
  PUBACK reason code. A failure is retried in place every 0.5 s up to 100 times, as the nucleus' default
  ``maxPublishRetry``; PUBACK 144 or 153, or a failure no retry can fix, drops the message at once. Every
  drop is counted in ``drops`` by reason and logged.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter, deque
from dataclasses import dataclass
from typing import Final

from edge_gateway.errors import PublishError
from edge_gateway.publish.transport.mqtt import MqttTransport

_log = logging.getLogger(__name__)

DEFAULT_SPOOL_BYTES: Final = int(2.5 * 1024 * 1024)
MAX_PUBLISH_BYTES: Final = 128 * 1024
MAX_RESERVED_TOPIC: Final = 512
MAX_TOPIC: Final = 256
MAX_SLASHES: Final = 7
MAX_PUBLISH_RETRIES: Final = 100
RETRY_DELAY_S: Final = 0.5
_NON_RETRYABLE_PUBACK: Final = frozenset({0x90, 0x99})  # topic name invalid, payload format invalid
_BASIC_INGEST: Final = re.compile(r"\$aws/rules/\S+/\S+")
_BASIC_INGEST_PREFIX: Final = re.compile(r"^\$aws/rules/\S+?/")


class SpoolError(Exception):
    """The nucleus refused to queue a publish; the text is its reason."""


@dataclass(frozen=True, slots=True)
class IoTCoreMessage:
    topic: str
    payload: bytes
    qos: int
    component: str
    reason_code: int | None = None  # the PUBACK's, when forwarded to a broker


def publish_problem(topic: str, payload: bytes, *, max_bytes: int = MAX_PUBLISH_BYTES) -> str | None:
    """Why the nucleus' MQTT client (MQTT 5) refuses a publish, in its words, or None."""
    problem = None
    effective = _BASIC_INGEST_PREFIX.sub("", topic) if _BASIC_INGEST.fullmatch(topic) else topic
    if len(payload) > max_bytes:
        problem = f"The publishing message size {len(payload)} bytes exceeds the configured limit of {max_bytes} bytes"
    elif not topic:
        problem = "Topic must not be empty"
    elif "#" in topic or "+" in topic:
        problem = "Publish topics must not contain wildcard characters of '#' or '+'"
    elif topic.startswith("$") and effective == topic:  # MQTT 5: other reserved topics are left to IoT Core
        if len(topic) > MAX_RESERVED_TOPIC:
            problem = f"Reserved topic total length is greater than {MAX_RESERVED_TOPIC} bytes"
    elif effective.count("/") > MAX_SLASHES:
        problem = f"The request topic must have no more than {MAX_SLASHES} forward slashes (/)"
    elif len(effective) > MAX_TOPIC:
        problem = f"The topic size of request must be no larger than {MAX_TOPIC} bytes of UTF-8 encoded characters"
    return problem


class CloudSpool:
    def __init__(self, mqtt: MqttTransport | None = None, *, max_bytes: int = DEFAULT_SPOOL_BYTES) -> None:
        self.mqtt = mqtt
        self.max_bytes = max_bytes
        self.published: list[IoTCoreMessage] = []
        self.drops: Counter[str] = Counter()
        self._queue: deque[IoTCoreMessage] = deque()
        self._bytes = 0  # queued and in-flight payload bytes
        self._in_flight = 0
        self._changed = asyncio.Event()

    @property
    def pending(self) -> int:
        """Messages queued or in flight (not yet PUBACKed)."""
        return len(self._queue) + self._in_flight

    def add(self, message: IoTCoreMessage) -> None:
        problem = publish_problem(message.topic, message.payload) or self._capacity_problem(message)
        if problem is not None:
            raise SpoolError(problem)
        if self.mqtt is None:
            self._delivered(message)
            return
        self._queue.append(message)
        self._bytes += len(message.payload)
        self._changed.set()

    def _capacity_problem(self, message: IoTCoreMessage) -> str | None:
        if self.mqtt is None:
            return None
        if message.qos == 0 and not self.mqtt.connected:
            return "Device is offline. Dropping QoS 0 message."
        size = len(message.payload)
        if size > self.max_bytes:
            return "Message is larger than the size of message spool."
        for old in [m for m in self._queue if m.qos == 0]:
            if self._bytes + size <= self.max_bytes:
                break
            self._queue.remove(old)
            self._bytes -= len(old.payload)
            self.drops["spool full: QoS 0 evicted"] += 1
        if self._bytes + size > self.max_bytes:
            return "Message spool is full. Message could not be added."
        return None

    def _delivered(self, message: IoTCoreMessage) -> None:
        self.published.append(message)
        self._changed.set()

    async def wait_published(self, count: int, timeout_s: float = 5.0) -> list[IoTCoreMessage]:
        """Wait until ``published`` holds ``count`` messages; TimeoutError otherwise."""
        async with asyncio.timeout(timeout_s):
            while len(self.published) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.published

    async def run(self) -> None:
        """Forward the queue through the transport until cancelled (nothing to do without one)."""
        if self.mqtt is None:
            return
        while True:
            while not self._queue:
                self._changed.clear()
                await self._changed.wait()
            message = self._queue.popleft()
            self._in_flight = 1
            try:
                await self._forward(self.mqtt, message)
            finally:
                self._in_flight = 0
                self._bytes -= len(message.payload)

    async def _forward(self, transport: MqttTransport, message: IoTCoreMessage) -> None:
        for attempt in range(1, MAX_PUBLISH_RETRIES + 2):
            try:
                code = await transport.publish(message.topic, message.payload)
            except PublishError as exc:
                hopeless = not exc.retryable or exc.reason_code in _NON_RETRYABLE_PUBACK
                if hopeless or attempt > MAX_PUBLISH_RETRIES:
                    self.drops[f"publish failed: {exc.reason_code or 'client error'}"] += 1
                    _log.warning(
                        "greengrass spooler: dropped a message to %r after %d attempt(s): %s",
                        message.topic,
                        attempt,
                        exc,
                    )
                    return
                if attempt == 1:
                    _log.warning("greengrass spooler: retrying a message to %r: %s", message.topic, exc)
                await asyncio.sleep(RETRY_DELAY_S)
            else:
                self._delivered(IoTCoreMessage(message.topic, message.payload, message.qos, message.component, code))
                return
