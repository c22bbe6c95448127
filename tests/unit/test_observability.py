"""Clock jumps, the shadow health summary and its rate limit, the status table and the metrics mapping."""

from __future__ import annotations

import copy
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from edge_gateway.observe.health import HealthReporter, summary
from edge_gateway.observe.metrics import StatusCollector
from edge_gateway.observe.status import render
from edge_gateway.util.clock import ClockWatch, kernel_clock

NO_DROPS = {"full": 0, "expired": 0, "corrupt": 0, "io_error": 0}


class FakeClocks:
    """A wall clock and a monotonic clock the test moves: the wall one can jump."""

    def __init__(self) -> None:
        self.wall = 1_800_000_000 * 10**9
        self.mono = 5 * 10**9

    def tick(self, seconds: float, *, wall_jump_s: float = 0.0) -> None:
        self.mono += int(seconds * 1e9)
        self.wall += int((seconds + wall_jump_s) * 1e9)


def test_clock_jumps_forward_and_back_are_counted_with_their_size_and_drift_is_not() -> None:
    clocks = FakeClocks()
    watch = ClockWatch(wall_ns=lambda: clocks.wall, mono_ns=lambda: clocks.mono)
    clocks.tick(2.0, wall_jump_s=0.3)  # slewing NTP: not a jump
    assert watch.check() is None
    clocks.tick(2.0, wall_jump_s=3600.0)  # an RTC-less board learning the time
    assert watch.check() == 3600.0
    clocks.tick(1.0, wall_jump_s=-2.5)
    assert watch.check() == -2.5
    clocks.tick(1.0)
    assert watch.check() is None
    assert watch.jumps == 2
    assert watch.last_jump == {"at": round(clocks.wall / 1e9 - 1, 3), "by_s": -2.5}
    state = watch.state()
    assert state["jumps"] == 2
    assert set(state) == {"synchronised", "offset_ms", "max_error_ms", "jumps", "last_jump"}


def test_the_kernel_clock_state_is_read() -> None:
    clock = kernel_clock()  # Linux: adjtimex answers (read-only)
    assert clock is not None
    assert isinstance(clock.synchronised, bool)
    # adjtimex's maxerror is in microseconds, capped at 16 s (NTP_PHASE_LIMIT): in ms it is 0..16,000, and a
    # value left in microseconds exceeds that whenever the clock is unsynchronised (maxerror at its cap).
    assert isinstance(clock.max_error_ms, float)
    assert 0 <= clock.max_error_ms <= 16_000


def status_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "v": 2,
        "time": 1800000000.5,
        "gateway": {
            "thing": "line1",
            "version": "0.1.0",
            "pid": 42,
            "uptime_s": 120.0,
            "client_id": "line1-gateway",
            "config": {"hash": "sha256:ab", "source": "shadow", "shadow_version": 7},
        },
        "host": {"cpu_percent": 3.5, "rss_mb": 80.0, "disk_free_mb": 1000.0, "load_1m": 0.2, "temperature_c": None},
        "clock": {"synchronised": True, "offset_ms": 0.2, "max_error_ms": 5.0, "jumps": 0, "last_jump": None},
        "mqtt": {"connected": True, "last_error": None},
        "sources": {
            "press": {
                "state": "connected",
                "readings": 1000,
                "bad_readings": 2,
                "errors": 2,
                "errors_by_kind": {"bad_node": 2},
                "reconnects": 0,
                "last_good_age_s": 0.1,
                "last_error": None,
                "points_per_s": 30.0,
            }
        },
        "buffer": {
            "records": 50,
            "bytes": 4096,
            "segments": 1,
            "appended": 1000,
            "last_seq": 1000,
            "unacked": {"cloud": 50},
            "dropped": dict(NO_DROPS),
            "oldest_unsent_age_s": {"cloud": 0.5},
        },
        "destinations": {
            "cloud": {
                "messages": 20,
                "points": 950,
                "payload_bytes": 20000,
                "failures": 1,
                "retries": 1,
                "rejected_points": 0,
                "unsendable_points": 0,
                "dead_lettered": 0,
                "in_flight": 1,
                "backlog": 50,
                "oldest_unsent_age_s": 0.5,
                "points_per_s": 30.0,
                "drain_eta_s": 0.0,
                "last_error": None,
            }
        },
        "dead_letter": {"path": "/var/dl.jsonl", "files": 0},
        "shadow": None,
    }
    for path, value in changes.items():
        node = doc
        keys = path.split("__")
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return doc


def test_health_summary_names_each_problem() -> None:
    assert summary(status_doc())["state"] == "ok"
    assert summary(status_doc())["problems"] == []
    bad = status_doc(
        sources__press__state="reconnecting",
        mqtt__connected=False,
        buffer__oldest_unsent_age_s={"cloud": 7200.0},
        buffer__dropped=NO_DROPS | {"full": 3},
        destinations__cloud__dead_lettered=2,
        clock__synchronised=False,
    )
    health = summary(bad)
    assert health["state"] == "degraded"
    assert health["problems"] == [
        "source press reconnecting",
        "cloud connection down",
        "backlog hours old",
        "readings dropped",
        "messages dead-lettered",
        "clock not synchronised",
    ]
    assert health["backlog"] == "hours"
    assert health["dropped"] == 3
    assert health["config_hash"] == "sha256:ab"


async def test_health_goes_to_the_shadow_only_on_material_change_and_at_most_at_the_rate() -> None:
    sent: list[dict[str, Any]] = []
    now = [0.0]

    async def report(body: dict[str, Any]) -> bool:
        sent.append(copy.deepcopy(body))
        return True

    reporter = HealthReporter(report, min_interval_s=300, clock=lambda: now[0])
    assert await reporter.consider(status_doc())
    now[0] = 10.0
    more = status_doc(time=1800000010.5, buffer__dropped=NO_DROPS)
    assert not await reporter.consider(more)  # nothing material: counts and time only
    now[0] = 20.0
    failing = status_doc(sources__press__state="failing")
    assert not await reporter.consider(failing)  # material, but too soon
    now[0] = 400.0
    assert await reporter.consider(failing)
    assert sent[1]["problems"] == ["source press failing"]
    now[0] = 800.0
    without = status_doc()
    del without["sources"]["press"]
    without["sources"]["oven"] = status_doc()["sources"]["press"]
    assert await reporter.consider(without)
    assert sent[2]["sources"] == {"press": None, "oven": "connected"}  # a removed source is nulled
    assert reporter.reports == 3


async def test_an_undelivered_health_report_is_tried_again_at_the_next_heartbeat() -> None:
    answers = [False, True]

    async def report(_body: dict[str, Any]) -> bool:
        return answers.pop(0)

    reporter = HealthReporter(report, min_interval_s=300, clock=lambda: 0.0)
    assert not await reporter.consider(status_doc())
    assert await reporter.consider(status_doc())


def test_status_table_shows_backlog_age_eta_and_clock_jumps() -> None:
    doc = status_doc(
        destinations__cloud__backlog=540000,
        destinations__cloud__oldest_unsent_age_s=7300.0,
        destinations__cloud__drain_eta_s=None,
        clock__synchronised=False,
        clock__jumps=1,
        clock__last_jump={"at": 1800000000.0, "by_s": -2.5},
        sources__press__state="reconnecting",
        sources__press__last_error="connect failed: refused",
    )
    table = render(doc)
    assert "config  shadow (shadow version 7)  sha256:ab" in table
    assert "CLOCK NOT SYNCHRONISED" in table
    assert "JUMPS 1 (last -2.500 s)" in table
    assert "  last error: connect failed: refused" in table
    row = next(line for line in table.splitlines() if line.startswith("cloud "))
    assert row.split() == ["cloud", "30.0", "950", "540000", "2.0h", "stalled", "1", "0", "1"]


def test_metrics_follow_the_status_document() -> None:
    doc = status_doc(sources__press__state="failing", buffer__dropped=NO_DROPS | {"expired": 4})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(lambda: doc))
    text = generate_latest(registry).decode()
    lines = set(text.splitlines())
    assert 'edge_gateway_source_up{source="press"} 0.0' in lines
    assert 'edge_gateway_source_state{source="press",state="failing"} 1.0' in lines
    assert 'edge_gateway_source_state{source="press",state="connected"} 0.0' in lines
    assert 'edge_gateway_source_errors_total{kind="bad_node",source="press"} 2.0' in lines
    assert 'edge_gateway_buffer_dropped_total{reason="expired"} 4.0' in lines
    assert 'edge_gateway_destination_points_total{destination="cloud"} 950.0' in lines
    assert 'edge_gateway_destination_oldest_unsent_age_seconds{destination="cloud"} 0.5' in lines
    assert "edge_gateway_clock_synchronised 1.0" in lines
    assert "edge_gateway_process_rss_bytes 8e+07" in lines
    assert not [line for line in lines if line.startswith("edge_gateway_host_temperature")]
    empty = CollectorRegistry(auto_describe=False)
    empty.register(StatusCollector(lambda: None))
    assert generate_latest(empty) == b""  # nothing before the first snapshot
