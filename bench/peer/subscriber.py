"""The subscriber that counts what each gateway delivers, and the responder ThingsBoard waits for at start.

``Subscriber`` holds one MQTT connection (mutual TLS, its own certificate) to the benchmark's broker:

- it subscribes to our data topic and to ThingsBoard's ``v1/gateway/telemetry`` and decodes every message
  as it arrives: ours is JSON format v1 (``n`` points; each point's time ``t0 + dt`` ms), ThingsBoard's is
  ``{device: [{"ts": ms, "values": {key: value}}]}`` (one point per key; time ``ts``). Per message it keeps
  the arrival time, the side, the payload size, the point count and how many points carry each poll time
  (``Arrival``); latency is arrival minus poll time. A message it cannot decode is counted in
  ``undecodable``, never dropped silently;
- ``mark()`` returns a position in the arrivals; ``by_arrival(side, a, b, s)`` sums the messages of one side
  that arrived between two marks (what a saturated gateway delivers), ``by_poll(side, mark, t0, t1)`` the
  points whose poll time lies in ``[t0, t1)`` (a steady load: no edge effect from message boundaries, as
  long as those points have arrived, which the caller waits for);
- it answers ThingsBoard's ``getSessionLimits`` RPC (``v1/devices/me/rpc/request/<id>``) on
  ``v1/devices/me/rpc/response/<id>`` with no rate limits and ``maxPayloadSize`` 131,072 (the broker's packet
  limit, as a ThingsBoard server answers with its own); any other RPC gets ``{}``. ThingsBoard reports
  itself connected only once this answer (or a 5 s timeout per attempt) arrives.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from edge_gateway.config.model import MqttSettings
from edge_gateway.publish.transport.mqtt import MqttTransport

Side = Literal["ours", "peer"]
TB_TELEMETRY = "v1/gateway/telemetry"
TB_RPC_REQUEST = "v1/devices/me/rpc/request/"
TB_RPC_RESPONSE = "v1/devices/me/rpc/response/"
SESSION_LIMITS = {
    "maxPayloadSize": 131_072,
    "maxInflightMessages": 100,
    "rateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,", "telemetryDataPoints": "0:0,"},
    "gatewayRateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,", "telemetryDataPoints": "0:0,"},
}


@dataclass(slots=True)
class Arrival:
    at_ms: int
    side: Side
    payload_bytes: int
    points: int
    polls: Counter[int]  # poll time written in the payload (ms since the epoch) -> points with it


@dataclass(slots=True)
class Window:
    """What one side delivered: ``points`` counted either by arrival or by poll time (see ``Subscriber``)."""

    seconds: float
    messages: int = 0
    points: int = 0
    payload_bytes: int = 0
    latency_ms: Counter[int] = field(default_factory=Counter)

    @property
    def points_per_s(self) -> float:
        return self.points / self.seconds if self.seconds else 0.0

    def latency_s(self, q: float) -> float:
        """The ``q`` quantile of point latency (weighted by points), seconds; 0 without points."""
        total = sum(self.latency_ms.values())
        if not total:
            return 0.0
        rank, seen = q * total, 0
        for ms in sorted(self.latency_ms):
            seen += self.latency_ms[ms]
            if seen >= rank:
                return ms / 1000
        return max(self.latency_ms) / 1000


def _ours(doc: dict[str, Any]) -> tuple[int, Counter[int]]:
    t0, polls = int(doc["t0"]), Counter[int]()
    for entries in doc["p"].values():
        for entry in entries:
            polls[t0 + int(entry[0])] += 1
    return int(doc["n"]), polls


def _peer(doc: dict[str, Any]) -> tuple[int, Counter[int]]:
    points, polls = 0, Counter[int]()
    for groups in doc.values():
        for group in groups:
            n = len(group["values"])
            points += n
            polls[int(group["ts"])] += n
    return points, polls


class Subscriber:
    def __init__(self, settings: MqttSettings, client_id: str, our_topic: str) -> None:
        self.transport = MqttTransport(settings, client_id)
        self.our_topic = our_topic
        self.arrivals: list[Arrival] = []
        self.undecodable: Counter[Side] = Counter()
        self.samples: dict[Side, bytes] = {}  # the first data message of each side, for the record
        self.rpc_answered = 0
        self._replies: set[asyncio.Task[int]] = set()

    async def start(self) -> None:
        await self.transport.start()
        await self.transport.wait_connected(15)
        await self.transport.subscribe(self.our_topic, self._on_ours)
        await self.transport.subscribe(TB_TELEMETRY, self._on_peer)
        await self.transport.subscribe(TB_RPC_REQUEST + "+", self._on_rpc)

    async def stop(self) -> None:
        for task in list(self._replies):
            task.cancel()
        await self.transport.stop()

    def _on_ours(self, _topic: str, payload: bytes) -> None:
        self._count("ours", payload, _ours)

    def _on_peer(self, _topic: str, payload: bytes) -> None:
        self._count("peer", payload, _peer)

    def _count(self, side: Side, payload: bytes, decode: Any) -> None:  # noqa: ANN401 - one of the two above
        now_ms = round(time.time() * 1000)
        try:
            points, polls = decode(json.loads(payload))
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            self.undecodable[side] += 1
            return
        self.arrivals.append(Arrival(now_ms, side, len(payload), points, polls))
        self.samples.setdefault(side, payload)

    def _on_rpc(self, topic: str, payload: bytes) -> None:
        request_id = topic.removeprefix(TB_RPC_REQUEST)
        try:
            method = json.loads(payload).get("method")
        except (ValueError, AttributeError):
            method = None
        answer = SESSION_LIMITS if method == "getSessionLimits" else {}
        body = json.dumps(answer).encode()
        task = asyncio.get_running_loop().create_task(
            self.transport.publish(TB_RPC_RESPONSE + request_id, body), name=f"bench.peer:rpc-reply:{request_id}"
        )
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)
        self.rpc_answered += 1

    def mark(self) -> int:
        return len(self.arrivals)

    def points_since(self, side: Side, mark: int) -> int:
        return sum(a.points for a in self.arrivals[mark:] if a.side == side)

    def by_arrival(self, side: Side, start: int, end: int, seconds: float) -> Window:
        """Every point of the messages that arrived between marks ``start`` and ``end``."""
        w = Window(seconds)
        for a in self.arrivals[start:end]:
            if a.side == side:
                w.messages += 1
                w.points += a.points
                w.payload_bytes += a.payload_bytes
                w.latency_ms.update({a.at_ms - ts: n for ts, n in a.polls.items()})
        return w

    def by_poll(self, side: Side, since: int, t0_ms: int, t1_ms: int) -> Window:
        """The points polled in ``[t0_ms, t1_ms)`` (poll time in the payload) that arrived after mark ``since``;
        payload bytes in proportion to the points of each message that fall in the interval."""
        w = Window((t1_ms - t0_ms) / 1000)
        for a in self.arrivals[since:]:
            if a.side != side:
                continue
            inside = {ts: n for ts, n in a.polls.items() if t0_ms <= ts < t1_ms}
            if not inside:
                continue
            n_inside = sum(inside.values())
            w.messages += 1
            w.points += n_inside
            w.payload_bytes += round(a.payload_bytes * n_inside / a.points) if a.points else 0
            w.latency_ms.update({a.at_ms - ts: n for ts, n in inside.items()})
        return w

    def forget(self) -> None:
        """Drop what was counted (between runs): marks taken before are no longer valid."""
        self.arrivals.clear()
