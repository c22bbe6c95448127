"""Helpers shared by the integration and fault tests: real processes on loopback, never mocks."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from edge_gateway.buffer.base import Buffer
from edge_gateway.config.model import DestinationBase, MqttSettings
from edge_gateway.model import Quality, Reading
from edge_gateway.publish.deadletter import DeadLetterFile
from edge_gateway.publish.encode.encoder import encoder_for
from edge_gateway.publish.publisher import Publisher
from edge_gateway.publish.transport.mqtt import MqttTransport
from simulators.iot_core import MosquittoBroker, loopback_mqtt_settings
from simulators.pki import Pki
from simulators.process import stop_process

THING = "test-gateway"
COUNTERS = ("press.counter", "boiler.counter")
# The Modbus counter is sampled by polling (every 50 ms): ticking 5x slower than that keeps every value
# observable even when a busy 2-core CI machine delays a poll.
MODBUS_TICK_MS = 250
# "#" does not match topics starting with "$" (the Basic Ingest topics $aws/rules/...): they are listed apart.
ALLOW_ALL_ACL = (
    "user test-consumer\ntopic readwrite #\ntopic readwrite $aws/#\n\n"
    "user test-gateway\ntopic readwrite #\ntopic readwrite $aws/#\n\n"
    "user shadow-service\ntopic readwrite $aws/things/#\n\n"
    "user shadow-cli\ntopic readwrite $aws/things/#\n"
)
# Refuses the gateway's data (PUBACK 135) but still lets its presence through, as the tests watch it.
DENY_GATEWAY_ACL = (
    "user test-consumer\ntopic readwrite #\ntopic readwrite $aws/#\n\n"
    f"user test-gateway\ntopic write dt/{THING}/status\n"
)


def mqtt_settings(pki: Pki, broker: MosquittoBroker, *, client: str = THING, **overrides: Any) -> MqttSettings:
    return loopback_mqtt_settings(pki, broker, client, **({"ack_timeout_s": 5} | overrides))


def report_lines(path: Path) -> Iterator[tuple[str, str]]:
    """A killed writer's report, line by line, as (kind, rest): only whole lines (the kill may cut the last)."""
    for line in path.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            return
        kind, _, rest = line.rstrip("\n").partition(" ")
        yield kind, rest


class Collected:
    """The sink every reader test hands its reader (a real ``Sink``, not a recorder of calls): keeps each
    call's readings as one batch (for Modbus, one poll), in order. ``delay_s`` makes each call take that
    long (a slow buffer); ``on_poll(n)`` runs inside the n-th call, before the delay."""

    def __init__(self, delay_s: float = 0.0, on_poll: Callable[[int], None] | None = None) -> None:
        self.batches: list[list[Reading]] = []
        self.readings: list[Reading] = []
        self.delay_s = delay_s
        self.on_poll = on_poll

    async def __call__(self, readings: Sequence[Reading]) -> None:
        self.batches.append(list(readings))
        self.readings.extend(readings)
        if self.on_poll is not None:
            self.on_poll(len(self.batches))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)

    @property
    def polls(self) -> list[list[Reading]]:
        return self.batches

    @property
    def calls(self) -> int:
        return len(self.batches)

    def of(self, alias: str, quality: Quality | None = Quality.GOOD) -> list[Reading]:
        """The readings of one alias, of one quality (None: any), in order."""
        return [r for r in self.readings if r.point == alias and (quality is None or r.quality is quality)]

    def values(self, alias: str) -> list[Any]:
        """The values of the GOOD readings of one alias, in order."""
        return [r.value for r in self.of(alias)]

    good = values

    def bad(self, alias: str) -> list[Reading]:
        return self.of(alias, Quality.BAD)

    async def wait(self, predicate: Callable[[], object], timeout_s: float = 30, what: str = "the condition") -> None:
        """Wait for ``predicate``; the timeout only gives up (see ``until``)."""
        try:
            await until(predicate, timeout_s)
        except TimeoutError:
            waited_s = max(timeout_s, GIVE_UP_MIN_S)
            msg = f"{what}: not within {waited_s} s; got {len(self.readings)} readings in {self.calls} calls"
            raise AssertionError(msg) from None


# A wait only gives up: it is never a bound on speed, so never shorter than this on a loaded machine.
GIVE_UP_MIN_S = 30.0


async def until(predicate: Callable[[], object], timeout_s: float = GIVE_UP_MIN_S) -> None:
    """Poll ``predicate`` until it holds; TimeoutError after ``timeout_s`` or GIVE_UP_MIN_S, the longer."""
    async with asyncio.timeout(max(timeout_s, GIVE_UP_MIN_S)):
        while not predicate():
            await asyncio.sleep(0.02)


# Starts a coroutine as a task the test fixture stops at teardown (conftest ``start_task``).
Starter = Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]


def is_data(topic: str) -> bool:
    """A data message, not the gateway's status or audit trail (which share the ``dt/<thing>/`` prefix)."""
    return not topic.endswith(("/status", "/audit"))


class Consumer:
    """Subscribes like a cloud rule would and keeps every message it receives, in arrival order."""

    def __init__(self, transport: MqttTransport) -> None:
        self.transport = transport
        self.messages: list[tuple[str, bytes]] = []
        self._arrived = asyncio.Event()

    def _on_message(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))
        self._arrived.set()

    async def subscribe(self, topic_filter: str) -> None:
        await self.transport.subscribe(topic_filter, self._on_message)

    def docs(self) -> list[dict[str, Any]]:
        """The data messages (not the gateway's presence on its status topic)."""
        return [json.loads(p) for t, p in self.messages if is_data(t)]

    def status_docs(self, kind: str) -> list[dict[str, Any]]:
        """The gateway's messages on its status topic of one kind (presence or heartbeat), in arrival order."""
        docs = [json.loads(p) for t, p in self.messages if t.endswith("/status")]
        return [d for d in docs if d["kind"] == kind]

    def presence(self) -> list[str]:
        """The gateway's presence states (online, offline, stopped), in arrival order."""
        return [d["state"] for d in self.status_docs("presence")]

    def values(self, alias: str) -> list[Any]:
        """Every value received for one alias, in arrival order (duplicates included)."""
        out: list[Any] = []
        for doc in self.docs():
            out.extend(entry[1] for entry in doc["p"].get(alias, []))
        return out

    def points(self, alias: str) -> list[tuple[int, Any]]:
        """(timestamp ms, value) of every reading received for one alias, in arrival order."""
        out: list[tuple[int, Any]] = []
        for doc in self.docs():
            out.extend((doc["t0"] + entry[0], entry[1]) for entry in doc["p"].get(alias, []))
        return out

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self._arrived.clear()
                try:
                    async with asyncio.timeout(0.5):
                        await self._arrived.wait()
                except TimeoutError:
                    pass


@contextlib.asynccontextmanager
async def running_publisher(
    dest: DestinationBase, buffer: Buffer, pki: Pki, broker: MosquittoBroker, dead_letter: Path, *, flow_control: bool
) -> AsyncIterator[Publisher]:
    """A Publisher draining ``buffer`` to the broker over its own transport; stopped (and the buffer closed) on exit."""
    transport = MqttTransport(mqtt_settings(pki, broker, iot_core_flow_control=flow_control), f"{THING}-gateway")
    await transport.start()
    await transport.wait_connected(10)
    publisher = Publisher(
        dest,
        buffer,
        transport,
        encoder=encoder_for(dest, THING),
        dead_letter=DeadLetterFile(dead_letter),
        flow_control=flow_control,
    )
    running = asyncio.create_task(publisher.run())
    try:
        yield publisher
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await transport.stop()
        await buffer.close()


@dataclasses.dataclass(frozen=True, slots=True)
class PlcProcesses:
    """Both PLC simulators as subprocesses; a test may stop one (``stop_process``) to make its PLC vanish."""

    ports: tuple[int, int]  # (OPC UA, Modbus)
    procs: dict[str, subprocess.Popen[str]]  # "press" (OPC UA) and "boiler" (Modbus), as gateway_config names them


def start_sim(module: str, port: int, tick_ms: int = 100) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--port", str(port), "--tick-ms", str(tick_ms)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("READY"), f"{module} did not start: {line!r}"
    return proc


def gateway_config(
    directory: Path, pki: Pki, broker: MosquittoBroker, *, opcua_port: int, modbus_port: int
) -> dict[str, Any]:
    """A config document for the gateway against both simulators and the local broker."""
    settings = mqtt_settings(pki, broker)
    return {
        "gateway": {"thing_name": THING, "data_dir": str(directory / "var")},
        "buffer": {"max_bytes": 64 << 20, "segment_bytes": 1 << 20},
        "sources": [
            {
                "type": "opcua",
                "name": "press",
                "endpoint": f"opc.tcp://127.0.0.1:{opcua_port}",
                "publishing_interval_ms": 100,
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 1.0,
                "nodes": [
                    {"alias": "press.counter", "node_id": "ns=2;s=Line1.Counter"},
                    {"alias": "press.temperature", "node_id": "ns=2;s=Line1.Temperature"},
                    {"alias": "press.state", "node_id": "ns=2;s=Line1.State"},
                ],
            },
            {
                "type": "modbus",
                "name": "boiler",
                "host": "127.0.0.1",
                "port": modbus_port,
                "poll_interval_ms": 50,
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 1.0,
                "points": [
                    {"alias": "boiler.counter", "address": 0, "data_type": "uint32"},
                    {"alias": "boiler.temperature", "address": 2, "data_type": "int16", "scale": 0.1},
                    {
                        "alias": "boiler.flow",
                        "table": "input",
                        "address": 2,
                        "data_type": "float32",
                        "word_order": "little",
                    },
                ],
            },
        ],
        "publisher": {
            "mqtt": json.loads(settings.model_dump_json()),
            "destinations": [
                {
                    "type": "iotcore",
                    "name": "cloud",
                    "topic": "dt/{thing}/{source}",
                    "max_latency_ms": 200,
                    # The fault tests quiesce the gateway with an ACL refusal (135): here it is retried,
                    # not dead-lettered (the default), so nothing is set aside while the broker is paused.
                    "dead_letter_codes": [144, 149, 153],
                }
            ],
        },
        "status": {"interval_s": 0.5},
    }


class GatewayProcess:
    """The gateway as a user runs it: `python -m edge_gateway run --config FILE`, with ``environ`` added to
    the environment (e.g. what the Greengrass nucleus sets for a component)."""

    def __init__(self, config: dict[str, Any], directory: Path, environ: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.environ = environ or {}
        self.config_path = directory / "gateway.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.status_path = Path(config["gateway"]["data_dir"]) / "status.json"
        self.buffer_path = Path(config["gateway"]["data_dir"]) / "buffer"
        self.log_path = directory / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_gateway", "run", "--config", str(self.config_path)],
                stdout=log,
                stderr=log,
                env=os.environ | self.environ | {"PYTHONUNBUFFERED": "1"},
            )

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.status_path.read_text()))
        except (OSError, ValueError):
            return {}

    def wait_status(self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            doc = self.status()
            if doc and predicate(doc):
                return doc
            assert self.proc is not None
            assert self.proc.poll() is None, f"gateway exited: {self.log()[-3000:]}"
            time.sleep(0.1)
        msg = f"gateway status never matched; last: {self.status()}\nlog:\n{self.log()[-3000:]}"
        raise AssertionError(msg)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> int:
        if self.proc is None:
            return 0
        stop_process(self.proc)
        return int(self.proc.returncode)
