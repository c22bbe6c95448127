"""A server that refuses the client at the TLS level: the transport says why, backs off, and stays idle.

Each case runs a real awscrt client (``MqttTransport``) against a real server on loopback and checks:
never connected, ``status.last_error`` names the CRT error, one "cannot connect" warning however many
retries, and attempts spaced by the configured backoff (counted by the client and by the server): a
client that spins makes hundreds. Counts only; the CPU it costs while refused is measured by
``python -m bench.timings`` (``refused_cpu_share``), not asserted here.

awscrt's backoff with full jitter waits uniform[0, min(max, min * 2**n)] before attempt n + 1, so
``reconnect_min_s`` is not a floor: with 0.5 s / 2 s, about 7 attempts fit in 6 s. The bound below (20)
is far above that and far below what a loop without backoff makes (hundreds). The watch lasts 6 s and
until three attempts failed (on a loaded machine that may take longer: the bound grows with the watch,
as a slow machine makes fewer attempts per second, never more).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from awscrt import io, mqtt5

from edge_gateway.config.model import MqttSettings
from edge_gateway.publish.transport.mqtt import MqttTransport
from simulators.iot_core import MosquittoBroker
from simulators.pki import Pki, add_client, generate_pki
from tests.support import THING, mqtt_settings
from tests.tls_front import IOT_CORE_ALPN, AlpnGate, CrlMosquittoBroker, write_crl

WINDOW_S = 6.0
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.5, 2.0
MIN_ATTEMPTS = 3
MAX_ATTEMPTS = 20
FIRST_FAILURE_S = 3.0
GIVE_UP_S = 120.0  # only gives up waiting for MIN_ATTEMPTS failures (about 2 s on an idle machine)
POLL_S = 0.05
# s2n, awscrt's TLS on Linux, holds a handshake that failed on the client side for a random "blinding"
# delay of 10-30 s before the channel (and so the connect attempt) is reported failed.
BLINDING_MAX_S = 30.0
_LOGGER = "edge_gateway.publish.transport.mqtt"


@dataclass(frozen=True, slots=True)
class Refused:
    failures: int
    wall_s: float

    @property
    def max_failures(self) -> int:
        """What backoff allows over the watch: MAX_ATTEMPTS per started WINDOW_S."""
        return MAX_ATTEMPTS * math.ceil(self.wall_s / WINDOW_S)


class Transports:
    """Starts transports for a test and stops every one of them in teardown."""

    def __init__(self) -> None:
        self.started: list[MqttTransport] = []

    async def start(self, settings: MqttSettings, client_id: str = f"{THING}-gateway") -> MqttTransport:
        t = MqttTransport(settings, client_id)
        self.started.append(t)
        await t.start()
        return t


@pytest.fixture
async def transports() -> AsyncIterator[Transports]:
    ts = Transports()
    yield ts
    for t in ts.started:
        await t.stop()


@pytest.fixture(autouse=True)
def _capture_transport_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=_LOGGER)


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(POLL_S)


def cannot_connect_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == _LOGGER and r.levelno == logging.WARNING and "cannot connect" in r.getMessage()
    ]


async def refused_for_a_while(t: MqttTransport, window_s: float = WINDOW_S) -> Refused:
    """Watch a started transport for ``window_s`` and until MIN_ATTEMPTS failed: it must never connect."""
    t0 = time.monotonic()
    async with asyncio.timeout(GIVE_UP_S):
        while time.monotonic() - t0 < window_s or t.status.connection_failures < MIN_ATTEMPTS:
            assert not t.status.connected
            await asyncio.sleep(POLL_S)
    return Refused(t.status.connection_failures, time.monotonic() - t0)


def assert_refused_with_backoff(
    t: MqttTransport, refused: Refused, caplog: pytest.LogCaptureFixture, error_name: str
) -> None:
    assert t.status.connects == 0
    assert not t.connected
    assert error_name in (t.status.last_error or "")
    assert MIN_ATTEMPTS <= refused.failures <= refused.max_failures, refused
    assert_warned_once(caplog, f"{t.settings.endpoint}:{t.settings.port}", error_name)


def assert_warned_once(caplog: pytest.LogCaptureFixture, endpoint: str, error_name: str) -> None:
    warnings = cannot_connect_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"mqtt: cannot connect to {endpoint}: {error_name}"), warnings


async def test_a_server_certificate_from_an_untrusted_ca_is_refused_without_spinning(
    pki: Pki, broker: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture, transports: Transports
) -> None:
    """The client does not trust the broker: a TLS failure, reported only after s2n's blinding delay.

    Backoff of 20 s: the next attempt, which stop() would have to wait out (blinding again), stays clear
    of the end of the test.
    """
    other = generate_pki(tmp_path / "other-ca", thing_name="unused")
    settings = mqtt_settings(pki, broker, ca_file=other.ca_file, reconnect_min_s=20.0, reconnect_max_s=20.0)
    t = await transports.start(settings)
    await asyncio.sleep(FIRST_FAILURE_S)
    assert not t.connected
    await wait_until(lambda: t.status.connection_failures >= 1, BLINDING_MAX_S + 30, "the TLS failure reported")
    assert t.status.connects == 0
    assert t.status.connection_failures == 1  # a second attempt cannot finish within another blinding delay
    assert "AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE" in (t.status.last_error or "")
    assert_warned_once(caplog, f"127.0.0.1:{broker.port}", "AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE")


async def test_a_revoked_client_certificate_is_refused_by_the_broker_with_backoff(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture, transports: Transports
) -> None:
    revoked_cert, _ = add_client(pki.directory, "revoked-gateway")
    crl = write_crl(pki, [revoked_cert], tmp_path / "crl.pem")
    with CrlMosquittoBroker(pki, tmp_path / "broker", crl_file=crl) as broker:
        # Control: the CRL is loaded and valid, and a certificate it does not list still gets in.
        good = await transports.start(mqtt_settings(pki, broker), "not-revoked")
        await good.wait_connected(10)
        await good.stop()
        caplog.clear()
        seen_before = broker.log_file.read_text().count("New connection from")

        settings = mqtt_settings(
            pki, broker, client="revoked-gateway", reconnect_min_s=RECONNECT_MIN_S, reconnect_max_s=RECONNECT_MAX_S
        )
        t = await transports.start(settings, "revoked-gateway")
        refused = await refused_for_a_while(t)
        # Mosquitto answers with the alert certificate_revoked (44); awscrt reports only a TLS read failure.
        assert_refused_with_backoff(t, refused, caplog, "AWS_IO_TLS_ERROR_READ_FAILURE")
        attempts = broker.log_file.read_text().count("New connection from") - seen_before
        assert refused.failures <= attempts <= refused.failures + 1  # + one attempt still under way


async def test_a_server_that_requires_alpn_refuses_the_transport_on_a_port_other_than_443(
    pki: Pki, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture, transports: Transports
) -> None:
    """Like IoT Core on 443 (ALPN x-amzn-mqtt-ca), on a free port: awscrt's builder offers ALPN on 443 only."""
    with AlpnGate(broker.port, IOT_CORE_ALPN) as gate:
        # Control: a client that offers the protocol goes through the gate to the broker.
        await connect_offering_alpn(pki, gate.port, IOT_CORE_ALPN)
        assert gate.offers == [[IOT_CORE_ALPN]]
        assert gate.refused == 0

        t = await transports.start(
            mqtt_settings(pki, broker, port=gate.port, reconnect_min_s=RECONNECT_MIN_S, reconnect_max_s=RECONNECT_MAX_S)
        )
        refused = await refused_for_a_while(t)
        # The gate's no_application_protocol alert (120) is reported as a failed negotiation.
        assert_refused_with_backoff(t, refused, caplog, "AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE")
        assert refused.failures <= gate.refused <= refused.failures + 1
        assert all(offer == [] for offer in gate.offers[1:])  # the transport offered no ALPN at all


async def connect_offering_alpn(pki: Pki, port: int, alpn: str) -> None:
    """Connect a bare awscrt MQTT 5 client that offers ``alpn`` (MqttTransport has no setting for it)."""
    tls = io.TlsContextOptions.create_client_with_mtls_from_path(
        str(pki.directory / f"{THING}.pem"), str(pki.directory / f"{THING}.key")
    )
    tls.override_default_trust_store_from_path(None, str(pki.ca_file))
    tls.alpn_list = [alpn]
    connected: concurrent.futures.Future[None] = concurrent.futures.Future()
    stopped: concurrent.futures.Future[None] = concurrent.futures.Future()

    def on_success(_data: Any) -> None:
        connected.set_result(None)

    def on_failure(data: Any) -> None:
        if not connected.done():
            connected.set_exception(AssertionError(f"control client with ALPN refused: {data.exception}"))

    client = mqtt5.Client(
        mqtt5.ClientOptions(
            host_name="127.0.0.1",
            port=port,
            tls_ctx=io.ClientTlsContext(tls),
            connect_options=mqtt5.ConnectPacket(client_id="alpn-control"),
            on_lifecycle_event_connection_success_fn=on_success,
            on_lifecycle_event_connection_failure_fn=on_failure,
            on_lifecycle_event_stopped_fn=lambda _data: stopped.set_result(None),
        )
    )
    client.start()
    try:
        await asyncio.wait_for(asyncio.wrap_future(connected), 10)
    finally:
        client.stop(mqtt5.DisconnectPacket(reason_code=mqtt5.DisconnectReasonCode.NORMAL_DISCONNECTION))
        await asyncio.wait_for(asyncio.wrap_future(stopped), 10)
