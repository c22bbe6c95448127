"""The gateway process: builds the stages from the config and runs them in one TaskGroup.

Start order: buffer (recovery) → MQTT transport → publishers, buffer maintenance, status → sources.
Stop order (SIGTERM/SIGINT): sources first (nothing new is collected), publishers get
``_DRAIN_GRACE_S`` to finish what is in flight, then the MQTT client stops cleanly (no Last Will), then the
buffer flushes its ledger. Greengrass kills after 5 s, so the whole stop stays well under that.

A task that crashes on a bug is logged with its traceback and restarted with backoff; it never takes the
process or the other tasks down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from edge_gateway.backoff import Backoff
from edge_gateway.buffer.base import Buffer
from edge_gateway.buffer.disk import DiskBuffer
from edge_gateway.buffer.memory import MemoryBuffer
from edge_gateway.config import GatewayConfig, ModbusTcpSource, OpcUaSource, SourceConfig
from edge_gateway.errors import StorageError
from edge_gateway.model import Reading
from edge_gateway.publish.deadletter import DeadLetterFile
from edge_gateway.publish.mqtt import MqttTransport
from edge_gateway.publish.presence import Presence
from edge_gateway.publish.publisher import Publisher, encoder_for
from edge_gateway.sources.base import Source, SourceState
from edge_gateway.sources.modbus import ModbusReader
from edge_gateway.sources.opcua import OpcUaReader
from edge_gateway.status import StatusReporter, clock_synchronised
from edge_gateway.tasks import cancel_and_wait, raise_if_cancelling

_log = logging.getLogger(__name__)

_DRAIN_GRACE_S = 2.0
_MAINTAIN_INTERVAL_S = 1.0

SOURCE_TYPES: dict[type[SourceConfig], Callable[[Any], Source]] = {
    OpcUaSource: OpcUaReader,
    ModbusTcpSource: ModbusReader,
}


def make_buffer(config: GatewayConfig) -> Buffer:
    b = config.buffer
    destinations = [d.name for d in config.publisher.destinations]
    if b.type == "memory":
        return MemoryBuffer(destinations, when_full=b.when_full)
    return DiskBuffer(
        config.buffer_path,
        destinations,
        max_bytes=b.max_bytes,
        max_age_s=b.max_age_s,
        when_full=b.when_full,
        segment_bytes=b.segment_bytes,
        fsync_interval_ms=b.fsync_interval_ms,
    )


class BufferSink:
    """The sink sources write to: the buffer's append, with storage trouble counted (by the buffer) and
    logged once per change of state instead of killing the source."""

    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer
        self._storing = True

    async def __call__(self, readings: Sequence[Reading]) -> None:
        try:
            await self.buffer.append(readings)
        except StorageError as exc:
            if self._storing:
                self._storing = False
                _log.error("buffer cannot store readings (they are counted as dropped): %s", exc)
            return
        if not self._storing:
            self._storing = True
            _log.info("buffer stores readings again")


async def _restarting(name: str, factory: Callable[[], Awaitable[None]]) -> None:
    backoff = Backoff(1.0, 30.0)
    while True:
        raise_if_cancelling()
        started = time.monotonic()
        try:
            await factory()
        except Exception:  # noqa: BLE001 - a bug in one task must not stop the gateway
            _log.exception("task %s crashed; restarting it", name)
        else:
            _log.error("task %s ended unexpectedly; restarting it", name)
        if time.monotonic() - started > 60:  # noqa: PLR2004 - ran a good while: start over fresh
            backoff.reset()
        await asyncio.sleep(backoff.next_delay())


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.thing = config.gateway.thing_name
        self.buffer = make_buffer(config)
        self.status = StatusReporter(self, config.status_path, config.status.interval_s)
        self.presence = Presence(
            config.status_topic,
            self.thing,
            config.client_id,
            heartbeat_s=config.status.heartbeat_s,
            snapshot=lambda: self.status.latest,
        )
        self.transport = MqttTransport(config.publisher.mqtt, config.client_id, will=self.presence.will)
        self.presence.attach(self.transport)
        self.sources = [SOURCE_TYPES[type(s)](s) for s in config.sources]
        dl = config.publisher.dead_letter
        self.dead_letter = DeadLetterFile(
            config.dead_letter_path, max_file_bytes=dl.max_file_bytes, max_files=dl.max_files
        )
        self.publishers = [
            Publisher(
                d,
                self.buffer,
                self.transport,
                encoder=encoder_for(d, self.thing),
                dead_letter=self.dead_letter,
                flow_control=config.publisher.mqtt.iot_core_flow_control,
            )
            for d in config.publisher.destinations
        ]
        for p in self.publishers:
            self.transport.on_connect(p.connection_restored)

    async def run(self, stop: asyncio.Event) -> None:
        sink = BufferSink(self.buffer)
        if clock_synchronised() is False:
            _log.warning(
                "the system clock is not synchronised (no NTP?): TLS certificate checks and reading timestamps "
                "depend on it; the status shows it until it is"
            )
        await self.transport.start()
        _log.info(
            "gateway %s started: %d source(s), %d destination(s), buffer %s",
            self.thing,
            len(self.sources),
            len(self.publishers),
            self.config.buffer_path if self.config.buffer.type == "disk" else "in memory",
        )
        try:
            async with asyncio.TaskGroup() as tg:
                back = [
                    tg.create_task(_restarting(f"publish:{p.name}", p.run), name=f"publish:{p.name}")
                    for p in self.publishers
                ]
                back.append(tg.create_task(self._maintain(), name="buffer:maintain"))
                back.append(tg.create_task(self.status.run(), name="status"))
                back.append(tg.create_task(self.presence.run(self.transport), name="heartbeat"))
                front = [
                    tg.create_task(
                        _restarting(f"source:{s.name}", lambda s=s: s.run(sink)),  # type: ignore[misc]
                        name=f"source:{s.name}",
                    )
                    for s in self.sources
                ]
                await stop.wait()
                _log.info("stopping: sources first, then publishers (%.0f s grace)", _DRAIN_GRACE_S)
                await cancel_and_wait(front)
                for s in self.sources:
                    s.status.state = SourceState.STOPPED
                await self._drain(_DRAIN_GRACE_S)
                await cancel_and_wait(back)
        finally:
            await self.status.write_once()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.transport.stop(final=self.presence.stopped), 3.0)
            await self.buffer.close()
            _log.info("gateway %s stopped", self.thing)

    async def _drain(self, grace_s: float) -> None:
        """Give in-flight publishes a moment to get their PUBACKs so the next start re-sends less."""
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(p.status.in_flight for p in self.publishers):  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(_MAINTAIN_INTERVAL_S)
            try:
                await self.buffer.maintain()
            except OSError as exc:
                _log.warning("buffer maintenance failed (retrying in %.0f s): %s", _MAINTAIN_INTERVAL_S, exc)
