"""The gateway process: builds the stages from the config and runs them in one TaskGroup.

Start order: buffer (recovery) → publishers (they wait for the connection), buffer maintenance, status →
sources → MQTT transport. Sources never wait for the cloud side: a transport whose certificate, key or CA
cannot be used starts "not connected", says why in the status, and rebuilds its client when the files are
fixed (task ``mqtt:files``, publish/transport/mqtt.py).
Stop order (SIGTERM/SIGINT): sources first (nothing new is collected), publishers get
``_DRAIN_GRACE_S`` to finish what is in flight, then the MQTT client stops cleanly (no Last Will), then the
buffer flushes its ledger. Greengrass kills after 5 s, so the whole stop stays well under that.

Every long-lived task is created in that TaskGroup, named, and restarted with backoff when it crashes on a
bug (util/tasks.py ``restarting``); it never takes the process or the other tasks down. What runs is built
by runtime/wiring.py; a new configuration is applied by diff in runtime/reconfigure.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from edge_gateway.config.diff import ConfigDiff, config_hash, diff
from edge_gateway.config.model import DestinationConfig, GatewayConfig
from edge_gateway.control.desired import AppliedConfig
from edge_gateway.control.shadow import ShadowAgent
from edge_gateway.gxp.audit import AuditError
from edge_gateway.gxp.provenance import Epochs, declarations
from edge_gateway.gxp.recorder import AuditRecorder
from edge_gateway.observe.health import HealthReporter
from edge_gateway.observe.metrics import MetricsServer
from edge_gateway.observe.presence import Presence
from edge_gateway.observe.status import StatusReporter, atomic_write, clock_synchronised
from edge_gateway.publish.deadletter import DeadLetterFile
from edge_gateway.publish.encode.encoder import encoder_for
from edge_gateway.publish.publisher import Publisher
from edge_gateway.publish.transport.mqtt import MqttTransport
from edge_gateway.runtime.reconfigure import Stages
from edge_gateway.runtime.sink import BufferSink
from edge_gateway.runtime.wiring import make_buffer, make_transport
from edge_gateway.sources.base import Source
from edge_gateway.util.tasks import cancel_and_wait, restarting

_log = logging.getLogger(__name__)

_DRAIN_GRACE_S = 2.0
_MAINTAIN_INTERVAL_S = 1.0
_CERTIFICATE_CHECK_ROUNDS = 60  # maintenance rounds between checks of certificates and trust lists


class Gateway:
    def __init__(
        self, config: GatewayConfig, *, local: GatewayConfig | None = None, applied: AppliedConfig | None = None
    ) -> None:
        """``config`` is what runs now: the local file, or the saved shadow config ``applied`` on top of it
        (``shadow_config.boot_config``); ``local`` is the file alone, the base of every shadow document."""
        self.config = config
        self.local = local or config
        self.applied = applied
        self.thing = config.gateway.thing_name
        self.buffer = make_buffer(config)
        self.status = StatusReporter(self, config.status_path, config.status.interval_s)
        self.presence = Presence(
            config.status_topic,
            self.thing,
            config.client_id,
            heartbeat_s=config.heartbeat.interval_s,
            snapshot=self.status.fresh,
            on_delivered=self._heartbeat_delivered,
        )
        self.transport = make_transport(config, self.presence.will)
        self.presence.attach(self.transport)
        self.audit_error: str | None = None
        self.audit = self._open_audit(config)
        self.epochs = Epochs(config.gateway.data_dir / "provenance-epochs.json")
        dl = config.publisher.dead_letter
        self.dead_letter = DeadLetterFile(
            config.dead_letter_path, max_file_bytes=dl.max_file_bytes, max_files=dl.max_files
        )
        self.stages = Stages(config, sink=BufferSink(self.buffer), new_publisher=self._publisher)
        self.transport.on_connect(self._connection_restored)
        self.shadow: ShadowAgent | None = ShadowAgent(self) if config.shadow.enabled else None
        self.health = HealthReporter(self._report_health, min_interval_s=config.heartbeat.shadow_min_interval_s)
        self.metrics = MetricsServer(config.metrics, lambda: self.status.latest) if config.metrics.enabled else None
        self._background: set[asyncio.Task[Any]] = set()
        self._apply_lock = asyncio.Lock()
        self._hashed: GatewayConfig | None = None
        self._hash = ""

    @property
    def sources(self) -> list[Source]:
        return self.stages.sources

    @property
    def publishers(self) -> list[Publisher]:
        return self.stages.publishers

    def _publisher(self, d: DestinationConfig, flow_control: bool) -> Publisher:
        return Publisher(
            d,
            self.buffer,
            self.transport,
            encoder=encoder_for(d, self.thing),
            dead_letter=self.dead_letter,
            flow_control=flow_control,
            gate=self.presence.wait_announced,
            epochs=self.epochs,
        )

    def _open_audit(self, config: GatewayConfig) -> AuditRecorder | None:
        if not config.audit.enabled:
            return None
        try:
            return AuditRecorder(config, self._publish_after_status)
        except (AuditError, OSError) as exc:
            # The data must keep flowing; the operator must see this (log, status) and look at the trail.
            _log.error(
                "audit trail %s cannot be opened, the gateway runs WITHOUT an audit trail: %s "
                "(run `edge-gateway audit verify` and see docs/gxp.md)",
                config.audit_path,
                exc,
            )
            self.audit_error = str(exc)
            return None

    @property
    def config_hash(self) -> str:
        """The running config's hash, computed once per config (the status asks at every snapshot)."""
        if self._hashed is not self.config:
            self._hashed, self._hash = self.config, config_hash(self.config)
        return self._hash

    async def _publish_after_status(self, topic: str, payload: bytes) -> int:
        """Publish once this connection's fresh status went out (the audit backlog queues like data)."""
        await self.presence.wait_announced()
        return await self.transport.publish(topic, payload)

    def audit_status(self) -> dict[str, Any]:
        """The ``audit`` section of the status (and so of every heartbeat): where the trail is, its chain
        head ``{seq, hash}`` (the anchor the cloud keeps), what is published, what failed, and a
        discontinuity found at start (gxp/audit_anchor.py), kept for the process's life."""
        if self.audit is None:
            return {"enabled": False, "error": self.audit_error, "head": None}  # error: it could not be opened
        trail = self.audit.trail
        return {
            "enabled": True,
            "error": None,
            "dir": str(self.audit.directory),
            "last_seq": trail.last_seq,
            "head": {"seq": trail.last_seq, "hash": trail.last_hash},
            "write_failures": self.audit.failures,
            "write_error": self.audit.write_error,
            "discontinuity": self.audit.discontinuity,
            **self.audit.publisher.status(),
            "acked_hash": self.audit.publisher.acked_hash,
        }

    async def _begin_epoch(self, config: GatewayConfig) -> None:
        """Readings appended from now on were collected under ``config`` (provenance.py)."""
        digest, first = config_hash(config), self.buffer.stats().last_seq + 1
        new = await asyncio.to_thread(self.epochs.start, first, digest)
        if new and self.audit is not None:
            await self.audit.declare(declarations(config, digest, first))

    def _heartbeat_delivered(self, payload: bytes, status: dict[str, Any]) -> None:
        """Keep the last acknowledged heartbeat on disk (``edge-gateway status --last-heartbeat``) and let the
        shadow's health summary follow it."""
        task = asyncio.get_running_loop().create_task(self._after_heartbeat(payload, status), name="heartbeat:after")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _after_heartbeat(self, payload: bytes, status: dict[str, Any]) -> None:
        try:
            await asyncio.to_thread(atomic_write, self.config.last_heartbeat_path, payload)
        except OSError as exc:
            _log.warning("cannot write %s: %s", self.config.last_heartbeat_path, exc)
        if self.shadow is not None and self.config.heartbeat.shadow_report:
            await self.health.consider(status)

    async def _report_health(self, health: dict[str, Any]) -> bool:
        return self.shadow is not None and await self.shadow.report_health(health)

    def _connection_restored(self) -> None:
        for p in self.publishers:
            p.connection_restored()

    async def apply(self, new: GatewayConfig) -> ConfigDiff:
        """Switch to ``new`` (already validated) by diff (runtime/reconfigure.py)."""
        async with self._apply_lock:
            change = diff(self.config, new)
            await self.stages.apply(
                new, change, buffer=self.buffer, transport=self.transport, begin_epoch=self._begin_epoch
            )
            if change.status_changed:
                self.status.interval_s = new.status.interval_s
                self.presence.heartbeat_s = new.heartbeat.interval_s
                self.health.min_interval_s = new.heartbeat.shadow_min_interval_s
            self.config = new
            if not change.empty:
                _log.info("configuration changed: %s", change.describe())
            return change

    async def _starting(self) -> None:
        if self.audit is not None:
            await self.audit.started(self.config, shadow_version=self.applied.version if self.applied else None)
        await self._audit_quarantines()  # found by the buffer's recovery, before anything else ran
        await self._begin_epoch(self.config)
        if clock_synchronised() is False:
            _log.warning(
                "the system clock is not synchronised (no NTP?): TLS certificate checks and reading timestamps "
                "depend on it; the status shows it until it is"
            )
        self._start_metrics()

    async def run(self, stop: asyncio.Event) -> None:
        await self._starting()
        _log.info(
            "gateway %s started: %d source(s), %d destination(s), buffer %s",
            self.thing,
            len(self.sources),
            len(self.publishers),
            self.config.buffer_path if self.config.buffer.type == "disk" else "in memory",
        )
        try:
            async with asyncio.TaskGroup() as tg:
                self.stages.start_publishers(tg)
                back = [
                    tg.create_task(self._maintain(), name="buffer:maintain"),
                    tg.create_task(self.status.run(), name="status"),
                    tg.create_task(self.presence.run(self.transport), name="heartbeat"),
                ]
                if isinstance(self.transport, MqttTransport):  # rebuilds its client when the files change
                    back.append(tg.create_task(restarting("mqtt:files", self.transport.watch_files), name="mqtt:files"))
                if self.audit is not None:
                    back.append(tg.create_task(restarting("audit", self.audit.publisher.run), name="audit"))
                if self.shadow is not None:
                    back.append(tg.create_task(restarting("shadow", self.shadow.run), name="shadow"))
                self.stages.start_sources()
                # Last: sources collect whatever happens to the cloud side (the MQTT transport never raises for
                # missing or bad files; it reports them in the status and retries, mqtt.py).
                await self.transport.start()
                await stop.wait()
                _log.info("stopping: sources first, then publishers (%.0f s grace)", _DRAIN_GRACE_S)
                async with self._apply_lock:  # no configuration change half done
                    if self.shadow is not None:
                        await cancel_and_wait(back[-1:])
                    await self.stages.stop_sources()
                    await self._drain(_DRAIN_GRACE_S)
                    await self._audit_quarantines()
                    if self.audit is not None:
                        await self.audit.stopped("stop requested (SIGTERM/SIGINT)")
                    await self.stages.stop_publishers()
                    await cancel_and_wait(back)
        finally:
            self.stages.detach()
            await self.status.fresh()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.transport.stop(final=self.presence.stopped), 3.0)
            await cancel_and_wait(self._background)
            if self.metrics is not None:
                self.metrics.stop()
            try:
                await self.buffer.close()  # on a full volume it logs that its ledger waits for the next start
            finally:
                if self.audit is not None:
                    await self._audit_quarantines()  # found by a publisher's last reads
                    self.audit.close()
            _log.info("gateway %s stopped", self.thing)

    def _start_metrics(self) -> None:
        if self.metrics is None:
            return
        try:
            self.metrics.start()
        except OSError as exc:  # e.g. the port is taken: the gateway's job is the data, it runs on without
            m = self.config.metrics
            _log.error("Prometheus metrics not served: cannot listen on %s:%d: %s", m.host, m.port, exc)
            self.metrics = None

    async def _audit_quarantines(self) -> None:
        """Each quarantine of the buffer since the last call becomes a ``buffer.quarantined`` entry (docs/gxp.md)."""
        for found in self.buffer.take_quarantined():  # taken also without a trail: they must not pile up
            if self.audit is not None:
                await self.audit.buffer_quarantined(found)

    async def _drain(self, grace_s: float) -> None:
        """Give in-flight publishes a moment to get their PUBACKs so the next start re-sends less."""
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(p.status.in_flight for p in self.publishers):  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    async def _maintain(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(_MAINTAIN_INTERVAL_S)
            try:
                await self.buffer.maintain()
            except OSError as exc:
                _log.warning("buffer maintenance failed (retrying in %.0f s): %s", _MAINTAIN_INTERVAL_S, exc)
            stats = self.buffer.stats()
            rounds += 1
            await self._audit_quarantines()
            if self.audit is not None and rounds % _CERTIFICATE_CHECK_ROUNDS == 0:
                await self.audit.check_certificates(self.config)
            oldest = stats.last_seq - stats.records + 1
            await asyncio.to_thread(self.epochs.prune, oldest)
