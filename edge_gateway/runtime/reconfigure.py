"""The running sources and publishers, and how a new configuration is applied to them by diff.

``Stages`` owns one named task per source (``source:<name>``) and per destination (``publish:<name>``),
each created in the supervisor's TaskGroup and restarted on a crash (util/tasks.py ``restarting``).
``apply`` switches to a validated config: only what ``config/diff.py`` says changed stops and starts again;
the buffer and every other source and destination keep running.

Invariants:
- a source that stops hands over what it read: its appends are settled before the new provenance epoch
  begins, so every stored reading is attributed to the configuration that collected it;
- a removed destination's cursor goes (what only it needed can be deleted); an added one starts at the
  head, not at the oldest record;
- a changed MQTT connection restarts every publisher on the new connection (their in-flight messages are
  sent again: at-least-once).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

from edge_gateway.buffer.base import Buffer
from edge_gateway.config.diff import ConfigDiff
from edge_gateway.config.model import DestinationConfig, GatewayConfig
from edge_gateway.publish.publisher import Publisher
from edge_gateway.publish.transport.base import Transport
from edge_gateway.runtime.sink import BufferSink
from edge_gateway.runtime.wiring import make_source
from edge_gateway.sources.base import Source, SourceState
from edge_gateway.util.tasks import cancel_and_wait, restarting


class Stages:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        sink: BufferSink,
        new_publisher: Callable[[DestinationConfig, bool], Publisher],
    ) -> None:
        """``new_publisher(destination, flow_control)`` builds a publisher on the gateway's buffer and
        transport."""
        self.sink = sink
        self._new_publisher = new_publisher
        flow_control = config.publisher.mqtt.iot_core_flow_control
        self.sources: list[Source] = [make_source(s) for s in config.sources]
        self.publishers: list[Publisher] = [new_publisher(d, flow_control) for d in config.publisher.destinations]
        self._tg: asyncio.TaskGroup | None = None
        self._source_tasks: dict[str, asyncio.Task[None]] = {}
        self._publisher_tasks: dict[str, asyncio.Task[None]] = {}

    def start_publishers(self, tg: asyncio.TaskGroup) -> None:
        self._tg = tg
        for p in self.publishers:
            self._start_publisher(p)

    def start_sources(self) -> None:
        for s in self.sources:
            self._start_source(s)

    def detach(self) -> None:
        self._tg = None

    async def stop_sources(self) -> None:
        """Stop every source; what they handed over is stored before this returns."""
        await cancel_and_wait(self._source_tasks.values())
        await self.sink.settle()
        for s in self.sources:
            s.status.state = SourceState.STOPPED

    async def stop_publishers(self) -> None:
        await cancel_and_wait(self._publisher_tasks.values())

    async def apply(
        self,
        new: GatewayConfig,
        change: ConfigDiff,
        *,
        buffer: Buffer,
        transport: Transport,
        begin_epoch: Callable[[GatewayConfig], Awaitable[None]],
    ) -> None:
        await self._apply_sources(new, change, begin_epoch)
        if change.mqtt_changed:
            # Every publisher restarts on the new connection (their in-flight messages are sent again).
            await cancel_and_wait(self._publisher_tasks.values())
            self._publisher_tasks.clear()
            self.publishers = []
            await transport.reconfigure(new.publisher.mqtt)
        await self._apply_destinations(new, change, buffer)

    def _start_source(self, source: Source) -> None:
        assert self._tg is not None
        name = f"source:{source.name}"
        factory = functools.partial(source.run, self.sink)
        self._source_tasks[source.name] = self._tg.create_task(restarting(name, factory), name=name)

    def _start_publisher(self, p: Publisher) -> None:
        assert self._tg is not None
        name = f"publish:{p.name}"
        self._publisher_tasks[p.name] = self._tg.create_task(restarting(name, p.run), name=name)

    async def _apply_sources(
        self, new: GatewayConfig, change: ConfigDiff, begin_epoch: Callable[[GatewayConfig], Awaitable[None]]
    ) -> None:
        stopping = change.sources_removed + change.sources_changed
        await cancel_and_wait([self._source_tasks.pop(n) for n in stopping])
        await self.sink.settle()  # what the stopped sources handed over is stored under the old epoch
        if not change.empty:
            await begin_epoch(new)
        running = {}
        for s in self.sources:
            if s.name in stopping:
                s.status.state = SourceState.STOPPED
            else:
                running[s.name] = s
        for cfg in new.sources:
            if cfg.name not in running:
                running[cfg.name] = make_source(cfg)
                self._start_source(running[cfg.name])
        self.sources = [running[cfg.name] for cfg in new.sources]

    async def _apply_destinations(self, new: GatewayConfig, change: ConfigDiff, buffer: Buffer) -> None:
        stopping = change.destinations_removed + change.destinations_changed
        await cancel_and_wait([t for n in stopping if (t := self._publisher_tasks.pop(n, None))])
        for name in change.destinations_removed:
            buffer.remove_destination(name)  # its cursor goes: what only it needed can be deleted
        running = {p.name: p for p in self.publishers if p.name not in stopping}
        for d in new.publisher.destinations:
            if d.name in change.destinations_added:
                buffer.add_destination(d.name)  # starts at the head, not at the oldest record
            if d.name not in running:
                running[d.name] = self._new_publisher(d, new.publisher.mqtt.iot_core_flow_control)
                self._start_publisher(running[d.name])
        self.publishers = [running[d.name] for d in new.publisher.destinations]
