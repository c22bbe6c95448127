"""Optional Prometheus endpoint: ``GET http://<metrics.host>:<metrics.port>/metrics`` (off by default).

The figures are the newest status snapshot (status.py), so the endpoint, the status file and the heartbeat
never disagree; a scrape costs no work on the event loop (prometheus_client serves from its own thread and
reads the snapshot, which the loop replaces whole). Metric names (prefix ``edge_gateway_``):

- ``up_seconds``, ``info{version,thing,client_id,config_hash}`` (always 1), ``mqtt_connected``,
  ``clock_synchronised`` (absent when unknown), ``clock_jumps_total``, ``clock_offset_seconds``,
  ``process_cpu_percent``, ``process_rss_bytes``, ``disk_free_bytes``;
- per source (label ``source``): ``source_up`` (1 when connected), ``source_state{state}`` (1 for the
  current one), ``source_readings_total``, ``source_bad_readings_total``, ``source_errors_total{kind}``,
  ``source_reconnects_total``, ``source_last_good_age_seconds``, ``source_points_per_second``;
- buffer: ``buffer_records``, ``buffer_bytes``, ``buffer_segments``, ``buffer_last_seq``,
  ``buffer_dropped_total{reason}``;
- per destination (label ``destination``): ``destination_points_total`` (acknowledged),
  ``destination_messages_total``, ``destination_payload_bytes_total``, ``destination_retries_total``,
  ``destination_dead_lettered_total``, ``destination_in_flight``, ``destination_backlog_records``,
  ``destination_oldest_unsent_age_seconds``, ``destination_points_per_second``,
  ``destination_drain_eta_seconds`` (absent while the backlog does not shrink).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from edge_gateway.config.model import MetricsSettings

_log = logging.getLogger(__name__)

_P = "edge_gateway_"
_MB = 1_000_000
_SOURCE_STATES = ("starting", "connected", "failing", "reconnecting", "stopped")


def _gauge(name: str, doc: str, value: float | None, labels: dict[str, str] | None = None) -> Iterator[Metric]:
    if value is None:
        return
    family = GaugeMetricFamily(_P + name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), float(value))
    yield family


def _per(
    kind: type[GaugeMetricFamily | CounterMetricFamily],
    name: str,
    doc: str,
    rows: tuple[str, dict[str, Any]],
    value: Callable[[Any], float | None],
) -> Metric:
    """One metric family with a row per key of ``rows`` = (label name, {key: row})."""
    label, by_key = rows
    family = kind(_P + name, doc, labels=[label])
    for key, row in by_key.items():
        v = value(row)
        if v is not None:
            family.add_metric([key], float(v))
    return family


class StatusCollector(Collector):
    """Prometheus metrics from whatever status document ``latest`` returns (None: nothing yet)."""

    def __init__(self, latest: Callable[[], dict[str, Any] | None]) -> None:
        self.latest = latest

    def collect(self) -> Iterator[Metric]:
        doc = self.latest()
        if doc is None:
            return
        yield from self._gateway(doc)
        yield from self._sources(doc["sources"])
        yield from self._buffer(doc["buffer"])
        yield from self._destinations(doc["destinations"])

    def _gateway(self, doc: dict[str, Any]) -> Iterator[Metric]:
        gw, host, clock = doc["gateway"], doc["host"], doc["clock"]
        info = GaugeMetricFamily(
            _P + "info", "Gateway identity", labels=["version", "thing", "client_id", "config_hash"]
        )
        info.add_metric([gw["version"], gw["thing"], gw["client_id"], gw["config"]["hash"]], 1.0)
        yield info
        yield from _gauge("up_seconds", "Seconds since the gateway started", gw["uptime_s"])
        yield from _gauge("mqtt_connected", "1 while the cloud connection is up", float(bool(doc["mqtt"]["connected"])))
        synced = clock["synchronised"]
        yield from _gauge("clock_synchronised", "1 when the kernel says NTP synchronised the clock", synced)
        yield CounterMetricFamily(_P + "clock_jumps", "Wall-clock jumps detected", value=clock["jumps"])
        offset = clock["offset_ms"]
        yield from _gauge(
            "clock_offset_seconds", "Offset NTP is still correcting", None if offset is None else offset / 1000
        )
        yield from _gauge("process_cpu_percent", "Gateway CPU, % of one core", host["cpu_percent"])
        rss = host["rss_mb"]
        yield from _gauge("process_rss_bytes", "Resident memory", None if rss is None else rss * _MB)
        yield from _gauge("disk_free_bytes", "Free space on the buffer's volume", host["disk_free_mb"] * _MB)

    def _sources(self, sources: dict[str, Any]) -> Iterator[Metric]:
        gauge, counter, rows = GaugeMetricFamily, CounterMetricFamily, ("source", sources)
        yield _per(gauge, "source_up", "1 when the source is connected", rows, lambda s: s["state"] == "connected")
        state = GaugeMetricFamily(_P + "source_state", "1 for the source's current state", labels=["source", "state"])
        errors = CounterMetricFamily(_P + "source_errors", "Source errors by kind", labels=["source", "kind"])
        for name, s in sources.items():
            for st in _SOURCE_STATES:
                state.add_metric([name, st], float(s["state"] == st))
            for kind, n in s["errors_by_kind"].items():
                errors.add_metric([name, kind], float(n))
        yield state
        yield errors
        yield _per(counter, "source_readings", "Readings collected", rows, lambda s: s["readings"])
        yield _per(counter, "source_bad_readings", "BAD readings", rows, lambda s: s["bad_readings"])
        yield _per(counter, "source_reconnects", "Reconnects", rows, lambda s: s["reconnects"])
        yield _per(
            gauge, "source_last_good_age_seconds", "Age of the last GOOD reading", rows, lambda s: s["last_good_age_s"]
        )
        yield _per(gauge, "source_points_per_second", "Collection rate", rows, lambda s: s["points_per_s"])

    def _buffer(self, buf: dict[str, Any]) -> Iterator[Metric]:
        yield from _gauge("buffer_records", "Records held (not yet acknowledged everywhere)", buf["records"])
        yield from _gauge("buffer_bytes", "Bytes on disk", buf["bytes"])
        yield from _gauge("buffer_segments", "Segment files", buf["segments"])
        yield from _gauge("buffer_last_seq", "Last sequence number given", buf["last_seq"])
        dropped = CounterMetricFamily(_P + "buffer_dropped", "Readings dropped, by reason", labels=["reason"])
        for reason, n in buf["dropped"].items():
            dropped.add_metric([reason], float(n))
        yield dropped

    def _destinations(self, dests: dict[str, Any]) -> Iterator[Metric]:
        gauge, counter = GaugeMetricFamily, CounterMetricFamily
        rows: list[tuple[type[GaugeMetricFamily | CounterMetricFamily], str, str, str]] = [
            (counter, "destination_points", "Points acknowledged by the broker", "points"),
            (counter, "destination_messages", "Messages acknowledged", "messages"),
            (counter, "destination_payload_bytes", "Payload bytes acknowledged", "payload_bytes"),
            (counter, "destination_retries", "Publish attempts that failed and were retried", "retries"),
            (counter, "destination_dead_lettered", "Points set aside in the dead-letter file", "dead_lettered"),
            (gauge, "destination_in_flight", "Messages awaiting their PUBACK", "in_flight"),
            (gauge, "destination_backlog_records", "Records not yet acknowledged", "backlog"),
            (gauge, "destination_oldest_unsent_age_seconds", "Age of the oldest unsent reading", "oldest_unsent_age_s"),
            (gauge, "destination_points_per_second", "Delivery rate", "points_per_s"),
            (gauge, "destination_drain_eta_seconds", "Estimated time to drain the backlog", "drain_eta_s"),
        ]
        for kind, name, doc, key in rows:
            yield _per(kind, name, doc, ("destination", dests), lambda d, k=key: d.get(k))  # type: ignore[misc]


class MetricsServer:
    """The HTTP endpoint, on prometheus_client's own thread; ``stop()`` closes the socket."""

    def __init__(self, settings: MetricsSettings, latest: Callable[[], dict[str, Any] | None]) -> None:
        self.settings = settings
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(latest))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        s = self.settings
        self._server, self._thread = start_http_server(s.port, addr=s.host, registry=self.registry)
        _log.info("Prometheus metrics at http://%s:%d/metrics", s.host, s.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
