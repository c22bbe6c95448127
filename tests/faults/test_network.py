"""Network faults between the gateway and the cloud: every collected counter value still arrives.

Each scenario runs the real gateway process against both PLC simulators and Mosquitto (the IoT Core
stand-in), with a consumer subscribed to ``dt/#`` directly on the broker. The faults: a minute-long
broker outage, a broker restarted again and again, the path to the broker cut (RST) or stalled (silence,
no FIN: a half-open connection) through a ``NetPath`` relay, and the gateway killed with SIGKILL while
it drains a backlog.

Every scenario proves: no counter value is missing between the first and the last one received; the
status tells what happened (disconnects, a backlog that grew, nothing dropped); and a reading that
arrives twice is a re-send: the message carrying the later copy covers a buffer seq range that overlaps
the range of a message that carried it before. A reading is (alias, timestamp, value): the Modbus counter
is polled faster than it ticks, so equal *values* from different polls are separate readings, not copies.

Where the broker is stopped, ``stop_broker``/``restore_broker`` quiesce the gateway first, so Mosquitto
never drops a publish it already acknowledged (IoT Core would not). A cut or stalled path needs no such
care: the broker stays up and forwards everything it acknowledged; what the path loses is PUBACKs, and
the gateway re-sends those messages (duplicates, never gaps).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from edge_gateway.buffer.disk import DiskBuffer
from simulators.iot_core import MosquittoBroker
from simulators.pki import Pki
from tests.faults.test_outages import gaps, restore_broker, stop_broker
from tests.netpath import NetPath
from tests.support import COUNTERS, Consumer, GatewayProcess, gateway_config, is_data, mqtt_settings

pytestmark = pytest.mark.slow

LONG_OUTAGE_S = 60
RESTART_PAUSES_S = (1, 3, 5, 2, 4)
CUT_S = 10
DRAIN_OUTAGE_S = 12
# Below this many unacked records the gateway keeps up again: at the test load (~90 points/s,
# max_latency_ms 200) a healthy gateway holds a few dozen.
KEEPING_UP = 200
# A drain may first wait out the publisher's retry backoff (capped at 60 s), grown by the PUBACK 135
# refusals the quiesce around a broker stop causes.
DRAIN_TIMEOUT_S = 90
NO_DROPS = {"full": 0, "expired": 0, "corrupt": 0, "io_error": 0}

Reading = tuple[str, int, Any]  # (alias, timestamp ms, value): one reading of a counter


class Received:
    """What the consumer got for the counters; each message is parsed once, as ``update()`` finds it."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.values: dict[str, set[int]] = {a: set() for a in COUNTERS}
        self.readings = 0  # counter readings received, copies included
        self.duplicates: list[Reading] = []  # every copy after the first, in arrival order
        self.unexplained: list[tuple[Reading, tuple[int, int]]] = []  # copies that are not a re-sent range
        self._ranges: dict[Reading, list[tuple[int, int]]] = {}
        self._parsed = 0

    def update(self) -> Self:
        messages = self.consumer.messages
        while self._parsed < len(messages):
            topic, payload = messages[self._parsed]
            self._parsed += 1
            if is_data(topic):
                self._add(json.loads(payload))
        return self

    def _add(self, doc: dict[str, Any]) -> None:
        first, last = (int(s) for s in doc["seq"])
        for alias in COUNTERS:
            for entry in doc["p"].get(alias, []):
                reading: Reading = (alias, int(doc["t0"]) + int(entry[0]), entry[1])
                self.readings += 1
                if entry[1] is not None:
                    self.values[alias].add(int(entry[1]))
                ranges = self._ranges.setdefault(reading, [])
                if ranges:
                    self.duplicates.append(reading)
                    if not any(a <= last and first <= b for a, b in ranges):
                        self.unexplained.append((reading, (first, last)))
                ranges.append((first, last))

    def sorted(self, alias: str) -> list[int]:
        return sorted(self.values[alias])

    def line(self) -> str:
        spans = ", ".join(f"{a} {min(v)}..{max(v)} ({len(v)} values)" for a, v in self.values.items() if v)
        return f"{spans}; {len(self.duplicates)} duplicate reading(s) of {self.readings}"


def assert_complete(received: Received, fault: str) -> None:
    for alias in COUNTERS:
        values = received.update().sorted(alias)
        assert values, f"{alias}: nothing received"
        assert not gaps(values), f"{alias}: missing {gaps(values)[:10]} across {fault}"
    assert not received.unexplained, f"copies that are not re-sends of a seq range: {received.unexplained[:5]}"


async def until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``predicate`` (cheaply, a few times a second) until it holds; False at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.25)
    return True


async def until_status(
    gateway: GatewayProcess, predicate: Callable[[dict[str, Any]], bool], timeout_s: float, what: str
) -> dict[str, Any]:
    """The first status snapshot that satisfies ``predicate``; polls without blocking the event loop."""
    deadline = time.monotonic() + timeout_s
    while True:
        doc = gateway.status()
        if doc and predicate(doc):
            return doc
        assert gateway.proc is not None
        assert gateway.proc.poll() is None, f"gateway exited: {gateway.log()[-3000:]}"
        if time.monotonic() > deadline:
            msg = f"no status within {timeout_s} s showed {what}; last: {doc}\nlog:\n{gateway.log()[-3000:]}"
            raise AssertionError(msg)
        await asyncio.sleep(0.1)


def unacked(status: dict[str, Any]) -> int:
    return int(status["buffer"]["unacked"]["cloud"])


def keeping_up(status: dict[str, Any]) -> bool:
    return bool(
        status["mqtt"]["connected"]
        and status["destinations"]["cloud"]["backlog_split_seq"] is None
        and unacked(status) < KEEPING_UP
    )


def connected_again(connects: int) -> Callable[[dict[str, Any]], bool]:
    return lambda s: bool(s["mqtt"]["connected"] and s["mqtt"]["connects"] > connects)


async def started(gateway: GatewayProcess, consumer: Consumer) -> Received:
    received = Received(consumer)
    await consumer.subscribe("dt/#")
    gateway.start()
    flowing = await until(lambda: all(len(v) >= 10 for v in received.update().values.values()), 30)
    assert flowing, f"no data flowing: {received.line()}\nlog:\n{gateway.log()[-3000:]}"
    return received


async def caught_up(received: Received, hole_after: dict[str, int] | None = None, timeout_s: float = 60) -> None:
    """Wait until each counter is well past where it stood and nothing is missing.

    Retried messages may land after newer ones (at-least-once, not in order across failures), so the wait
    is for the absence of gaps, not for one value. ``hole_after``: values above these may be missing up to
    the first one above them that arrived (what the PLCs counted while no gateway ran). On timeout it
    returns; the caller's assertions say what is missing."""
    start = {a: max(received.update().values[a]) for a in COUNTERS}

    def complete(alias: str) -> bool:
        values = received.sorted(alias)
        if values[-1] <= start[alias] + 20:
            return False
        if hole_after is None:
            return not gaps(values)
        cut = hole_after[alias]
        return not gaps([v for v in values if v <= cut]) and not gaps([v for v in values if v > cut])

    def done() -> bool:
        received.update()
        return all(complete(a) for a in COUNTERS)

    await until(done, timeout_s)


@pytest.fixture
def path(broker: MosquittoBroker) -> Iterator[NetPath]:
    with NetPath("127.0.0.1", broker.port) as p:
        yield p


@pytest.fixture
def routed_gateway(
    tmp_path: Path, pki: Pki, broker: MosquittoBroker, plcs: tuple[int, int], path: NetPath
) -> Iterator[GatewayProcess]:
    """The gateway reaching the broker through ``path``; the consumer still connects directly."""
    config = gateway_config(tmp_path, pki, broker, opcua_port=plcs[0], modbus_port=plcs[1])
    config["publisher"]["mqtt"]["port"] = path.port
    gw = GatewayProcess(config, tmp_path)
    yield gw
    gw.stop()


async def test_a_minute_long_broker_outage_loses_nothing_and_the_backlog_drains(
    gateway: GatewayProcess, broker: MosquittoBroker, consumer: Consumer
) -> None:
    received = await started(gateway, consumer)
    before = gateway.status()

    await stop_broker(broker, consumer, gateway)
    stopped_at = time.monotonic()
    disconnected = await until_status(gateway, lambda s: not s["mqtt"]["connected"], 60, "the disconnect")
    await asyncio.sleep(max(0.0, LONG_OUTAGE_S - (time.monotonic() - stopped_at)))  # the outage itself
    during = gateway.status()
    # Collection went on while nothing could be sent (counted, not timed: ~90 points/s on an idle machine).
    assert unacked(during) > unacked(disconnected) > unacked(before) - 1
    assert {s["state"] for s in during["sources"].values()} == {"connected"}

    await restore_broker(broker, consumer)
    restored_at = time.monotonic()
    outage_s = restored_at - stopped_at
    await until_status(gateway, keeping_up, DRAIN_TIMEOUT_S, "the backlog drained")
    drain_s = time.monotonic() - restored_at
    await caught_up(received)

    assert_complete(received, f"a {outage_s:.0f} s broker outage")
    status = gateway.status()
    assert status["mqtt"]["disconnects"] >= 1
    assert status["buffer"]["dropped"] == NO_DROPS
    print(
        f"\nbroker stopped {outage_s:.1f} s: backlog {unacked(during)} records, drained in {drain_s:.1f} s; "
        f"{received.line()}"
    )


async def test_five_broker_restarts_in_a_minute_lose_nothing(
    gateway: GatewayProcess, broker: MosquittoBroker, consumer: Consumer
) -> None:
    received = await started(gateway, consumer)
    before = gateway.status()
    began = time.monotonic()
    down_s = 0.0
    peak = 0
    for pause_s in RESTART_PAUSES_S:
        connects = int(gateway.status()["mqtt"]["connects"])
        await stop_broker(broker, consumer, gateway)
        stopped_at = time.monotonic()
        await asyncio.sleep(pause_s)  # the broker is down
        peak = max(peak, unacked(gateway.status()))
        await restore_broker(broker, consumer)
        down_s += time.monotonic() - stopped_at
        await until_status(gateway, connected_again(connects), 20, "a reconnect")
    restarts_s = time.monotonic() - began
    restored_at = time.monotonic()
    await until_status(gateway, keeping_up, DRAIN_TIMEOUT_S, "the backlog drained")
    drain_s = time.monotonic() - restored_at
    await caught_up(received)

    assert_complete(received, f"{len(RESTART_PAUSES_S)} broker restarts")
    status = gateway.status()
    assert status["mqtt"]["disconnects"] >= len(RESTART_PAUSES_S)
    assert status["mqtt"]["connects"] >= len(RESTART_PAUSES_S) + 1
    assert peak > unacked(before)
    assert status["buffer"]["dropped"] == NO_DROPS
    print(
        f"\n{len(RESTART_PAUSES_S)} broker restarts in {restarts_s:.1f} s (down {down_s:.1f} s in all, "
        f"{status['mqtt']['disconnects']} disconnects, publish failures by code "
        f"{status['destinations']['cloud']['failures_by_code']}): peak backlog {peak} records, drained "
        f"{drain_s:.1f} s after the last; {received.line()}"
    )


async def test_a_cut_path_is_noticed_and_nothing_is_lost(
    routed_gateway: GatewayProcess, path: NetPath, consumer: Consumer
) -> None:
    gateway = routed_gateway
    received = await started(gateway, consumer)

    path.cut()
    cut_at, cut_mono = time.time(), time.monotonic()
    noticed = await until_status(gateway, lambda s: not s["mqtt"]["connected"], 60, "the cut noticed")
    await asyncio.sleep(max(0.0, CUT_S - (time.monotonic() - cut_mono)))  # the path stays cut
    during = gateway.status()
    assert not during["mqtt"]["connected"]
    assert unacked(during) > unacked(noticed)  # collection went on while cut (counted, not timed)

    oldest = during["destinations"]["cloud"]["oldest_unsent_age_s"]
    assert oldest is not None
    # The oldest unsent reading was taken before that snapshot noticed the cut: the backlog is the cut's.
    assert during["time"] - oldest <= noticed["time"], (during["time"], oldest, noticed["time"])
    assert during["destinations"]["cloud"]["drain_eta_s"] is None  # nothing drains while cut
    assert during["destinations"]["cloud"]["backlog"] == unacked(during)

    seen = len(consumer.messages)
    path.restore()
    restored_at, restored_wall = time.monotonic(), time.time()
    back = await until_status(gateway, lambda s: s["mqtt"]["connected"], 60, "a reconnect after the cut")
    reconnect_s = time.monotonic() - restored_at
    await until_status(gateway, keeping_up, DRAIN_TIMEOUT_S, "the backlog drained")
    drain_s = time.monotonic() - restored_at
    await caught_up(received)

    # Status first: after the reconnect, `online` and a fresh heartbeat came before the backlog; only
    # messages the client already held unacknowledged at the cut (its in-flight window) may precede them.
    after = [(t, json.loads(p)) for t, p in consumer.messages[seen:]]
    first_beat = next(i for i, (t, d) in enumerate(after) if t.endswith("/status") and d["kind"] == "heartbeat")
    assert [d["state"] for t, d in after[:first_beat] if t.endswith("/status")] == ["online"]
    held = [d for t, d in after[:first_beat] if is_data(t)]
    assert len(held) <= 16, f"{len(held)} data messages went out before the status"  # max_in_flight
    data_after = sum(1 for t, _ in after[first_beat:] if is_data(t))
    assert data_after > len(held)
    beat = after[first_beat][1]["status"]
    assert beat["time"] > restored_wall  # taken after the reconnect, not before the cut
    assert beat["destinations"]["cloud"]["backlog"] >= unacked(during) - len(held) * 1000
    assert beat["time"] - beat["destinations"]["cloud"]["oldest_unsent_age_s"] < restored_wall  # the outage's

    assert_complete(received, f"a {CUT_S} s cut")
    status = gateway.status()
    assert status["mqtt"]["disconnects"] >= 1
    assert back["mqtt"]["connects"] >= 2
    assert status["buffer"]["dropped"] == NO_DROPS
    print(
        f"\npath cut {CUT_S} s: noticed after {noticed['time'] - cut_at:.1f} s, reconnected {reconnect_s:.1f} s "
        f"after restore, backlog {unacked(during)} records drained in {drain_s:.1f} s; {received.line()}"
    )


async def test_a_stalled_path_is_noticed_by_the_keep_alive_ping_and_nothing_is_lost(
    routed_gateway: GatewayProcess, path: NetPath, consumer: Consumer, pki: Pki, broker: MosquittoBroker
) -> None:
    gateway = routed_gateway
    settings = mqtt_settings(pki, broker)  # what gateway_config put in the gateway's config
    # The client sends a PINGREQ at most keep-alive after its last packet and gives up ping-timeout later:
    # how long the path stays stalled (a pause, not a bound: the notice is waited for without one).
    notice_within_s = settings.keep_alive_s + settings.ping_timeout_ms / 1000 + 3
    received = await started(gateway, consumer)
    before = gateway.status()

    path.stall()
    stalled_at, stall_mono = time.time(), time.monotonic()
    noticed = await until_status(gateway, lambda s: not s["mqtt"]["connected"], 120, "the stall noticed")
    notice_s = noticed["time"] - stalled_at
    # Nothing but the unanswered PINGREQ can notice a silent path: the error says that is what did. The
    # time it takes is measured by `python -m bench.timings` (mqtt_frozen_notice_s), not asserted here.
    assert "PING_RESPONSE_TIMEOUT" in (noticed["mqtt"]["last_error"] or ""), noticed["mqtt"]
    await asyncio.sleep(max(0.0, notice_within_s + 2 - (time.monotonic() - stall_mono)))  # still silent
    during = gateway.status()
    stall_s = time.monotonic() - stall_mono
    assert unacked(during) > unacked(before)

    path.restore()
    restored_at = time.monotonic()
    await until_status(gateway, lambda s: s["mqtt"]["connected"], 30, "a reconnect after the stall")
    reconnect_s = time.monotonic() - restored_at
    await until_status(gateway, keeping_up, DRAIN_TIMEOUT_S, "the backlog drained")
    drain_s = time.monotonic() - restored_at
    await caught_up(received)

    assert_complete(received, f"a {stall_s:.0f} s stall")
    status = gateway.status()
    assert status["mqtt"]["disconnects"] >= 1
    assert status["buffer"]["dropped"] == NO_DROPS
    print(
        f"\npath stalled {stall_s:.1f} s: noticed after {notice_s:.1f} s (keep-alive {settings.keep_alive_s} s "
        f"+ ping timeout {settings.ping_timeout_ms} ms), reconnected {reconnect_s:.1f} s after restore, "
        f"backlog {unacked(during)} records drained in {drain_s:.1f} s; {received.line()}"
    )


async def test_kill_9_during_a_drain_resends_only_what_was_in_flight(
    tmp_path: Path, pki: Pki, broker: MosquittoBroker, plcs: tuple[int, int], consumer: Consumer
) -> None:
    config = gateway_config(tmp_path, pki, broker, opcua_port=plcs[0], modbus_port=plcs[1])
    # A drain that lasts seconds, to kill in: more points (static registers, read on every poll), small
    # messages, and awscrt's IoT Core flow control (100 publishes/s), as on the real endpoint.
    config["sources"][1]["points"] += [
        {"alias": f"boiler.load{i}", "address": 20 + i, "data_type": "uint16"} for i in range(60)
    ]
    config["publisher"]["destinations"][0]["max_message_bytes"] = 1024
    config["publisher"]["mqtt"]["iot_core_flow_control"] = True
    config["status"]["interval_s"] = 0.2
    gateway = GatewayProcess(config, tmp_path)

    try:
        received = await started(gateway, consumer)
        await stop_broker(broker, consumer, gateway)
        stopped_at = time.monotonic()
        await asyncio.sleep(DRAIN_OUTAGE_S)  # the backlog builds up
        peak = unacked(gateway.status())

        def draining(s: dict[str, Any]) -> bool:  # unacked going down, well above 0, messages in flight
            in_flight = s["destinations"]["cloud"]["in_flight"] > 0
            return bool(s["mqtt"]["connected"] and in_flight and peak * 0.3 < unacked(s) < peak * 0.9)

        await restore_broker(broker, consumer)
        restored_at = time.monotonic()
        outage_s = restored_at - stopped_at
        at_kill = await until_status(gateway, draining, DRAIN_TIMEOUT_S, "a drain under way")
        gateway.kill()
        killed_after_s = time.monotonic() - restored_at
    finally:
        gateway.stop()
    assert at_kill["mqtt"]["disconnects"] >= 1
    assert at_kill["buffer"]["dropped"] == NO_DROPS

    # What the reopened buffer hands out again: everything not durably acked when the process died (in
    # flight, or acked after the ledger was last written, at most a maintenance interval before).
    buffer = DiskBuffer(gateway.buffer_path, ["cloud"])
    reopened = buffer.stats()
    pending: set[Reading] = set()
    collected: dict[str, set[int]] = {a: set() for a in COUNTERS}
    again = 0
    while records := await buffer.read("cloud", 10_000, 0.1):
        again += len(records)
        for rec in records:
            r = rec.reading
            if r.point in collected and r.value is not None:
                pending.add((r.point, r.ts_ns // 1_000_000, r.value))
                collected[r.point].add(int(r.value))
    await buffer.close()
    assert all(collected.values()), "nothing was left to re-send: the kill came after the drain"
    before_restart = received.update().readings
    # Acks the dead process had made (status, just before the kill) and those its ledger kept.
    acked_at_kill = int(at_kill["buffer"]["last_seq"]) - unacked(at_kill)
    acked_durably = reopened.last_seq - reopened.unacked["cloud"]
    # The dead process's newest reading: pending on reopen, or already delivered by its live lane.
    last_collected = {a: max(collected[a] | received.values[a]) for a in COUNTERS}

    restarted_at = time.monotonic()
    try:
        gateway.start()
        assert gateway.proc is not None
        pid = gateway.proc.pid
        await until_status(gateway, lambda s: s["gateway"]["pid"] == pid, 30, "the new process")
        await until_status(gateway, keeping_up, DRAIN_TIMEOUT_S, "the backlog drained after the restart")
        drain_s = time.monotonic() - restarted_at
        await caught_up(received, hole_after=last_collected)
        status = gateway.status()
    finally:
        gateway.stop()

    for alias in COUNTERS:
        values = received.update().sorted(alias)
        # The PLCs kept counting while no gateway ran: that stretch was never collected, the one hole allowed.
        upto = [v for v in values if v <= last_collected[alias]]
        later = [v for v in values if v > last_collected[alias]]
        assert not gaps(upto), f"{alias}: lost {gaps(upto)[:10]} across kill -9"
        assert collected[alias] <= set(values)
        assert later, f"{alias}: nothing after the restart"
        assert not gaps(later), f"{alias}: lost {gaps(later)[:10]} after the restart"
    assert not received.unexplained, f"copies that are not re-sends of a seq range: {received.unexplained[:5]}"
    copies = set(received.duplicates)
    assert copies <= pending, f"copies of readings that were durably acked: {sorted(copies - pending)[:5]}"
    assert status["buffer"]["dropped"] == NO_DROPS
    print(
        f"\nkill -9 {killed_after_s:.1f} s into a drain (broker down {outage_s:.1f} s, backlog {peak} records, "
        f"{unacked(at_kill)} unacked and {at_kill['destinations']['cloud']['in_flight']} messages in flight "
        f"at the kill, {acked_at_kill} records acked of which {acked_durably} durably (ledger written every "
        f"second), {again} handed out again on reopen, {len(pending)} counter readings among them, "
        f"{before_restart} counter readings received before the restart): {len(copies)} counter reading(s) "
        f"received twice, all re-sent ranges; drained {drain_s:.1f} s after the restart; {received.line()}"
    )
