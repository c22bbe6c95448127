"""What the MQTT transport offers in its TLS ClientHello, captured by a plain TCP server on loopback.

The server accepts the transport's connection, reads the first TLS record (awscrt's ClientHello fits in one)
and closes. The guarantee (docs/security.md): no protocol below TLS 1.2 is offered and every cipher
suite is an AEAD suite with forward secrecy; ALPN ``x-amzn-mqtt-ca`` is still offered on port 443.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from edge_gateway.config.model import MqttSettings
from edge_gateway.publish.transport.mqtt import MqttTransport
from simulators.pki import Pki
from tests.support import THING

TLS_1_2 = 0x0303
TLS_1_3 = 0x0304
# Accepted cipher suites (IANA codes): AEAD only, and in TLS 1.2 only with an ephemeral key exchange.
AEAD_SUITES = {
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0xC02B: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    0xC02C: "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    0xC02F: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    0xC030: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    0xCCA8: "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    0xCCA9: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    0x009E: "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
    0x009F: "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
    0xCCAA: "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
}
SIGNALS = {0x00FF, 0x5600}  # TLS_EMPTY_RENEGOTIATION_INFO_SCSV, TLS_FALLBACK_SCSV: not cipher suites
_EXT_ALPN = 0x0010
_EXT_SUPPORTED_VERSIONS = 0x002B
_HELLO_TIMEOUT_S = 10.0


def is_grease(value: int) -> bool:
    """RFC 8701 values (0x0A0A, 0x1A1A, ...): offered to keep servers tolerant, never negotiated."""
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


@dataclass(frozen=True, slots=True)
class ClientHello:
    legacy_version: int
    cipher_suites: list[int]
    supported_versions: list[int] | None  # None: no supported_versions extension
    alpn: list[str]


def _u16s(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 2]) for i in range(0, len(data) - 1, 2)]


def parse_client_hello(record: bytes) -> ClientHello:
    """The fields of a ClientHello in one TLS record (RFC 8446 4.1.2); ValueError if it is not one."""
    if record[:1] != b"\x16" or record[5:6] != b"\x01":
        raise ValueError(f"not a TLS handshake record with a ClientHello: {record[:8].hex()}")
    hello = record[9 : 9 + int.from_bytes(record[6:9])]
    legacy_version = int.from_bytes(hello[0:2])
    pos = 2 + 32  # legacy_version, random
    pos += 1 + hello[pos]  # legacy_session_id
    suites_len = int.from_bytes(hello[pos : pos + 2])
    suites = _u16s(hello[pos + 2 : pos + 2 + suites_len])
    pos += 2 + suites_len
    pos += 1 + hello[pos]  # legacy_compression_methods
    end = pos + 2 + int.from_bytes(hello[pos : pos + 2])
    pos += 2
    versions: list[int] | None = None
    alpn: list[str] = []
    while pos + 4 <= end:
        ext_type, ext_len = int.from_bytes(hello[pos : pos + 2]), int.from_bytes(hello[pos + 2 : pos + 4])
        data = hello[pos + 4 : pos + 4 + ext_len]
        pos += 4 + ext_len
        if ext_type == _EXT_SUPPORTED_VERSIONS:
            versions = _u16s(data[1 : 1 + data[0]])
        elif ext_type == _EXT_ALPN:
            i = 2
            while i < len(data):
                alpn.append(data[i + 1 : i + 1 + data[i]].decode("ascii", "replace"))
                i += 1 + data[i]
    if pos != end or end != len(hello):
        raise ValueError(f"malformed ClientHello extensions: stopped at {pos} of {end} ({len(hello)} bytes)")
    return ClientHello(legacy_version, suites, versions, alpn)


class HelloCatcher:
    """A TCP server that keeps the first TLS record of each connection and then closes it."""

    def __init__(self) -> None:
        self.records: asyncio.Queue[bytes] = asyncio.Queue()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            header = await reader.readexactly(5)
            self.records.put_nowait(header + await reader.readexactly(int.from_bytes(header[3:5])))
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def serving(host: str, port: int) -> AsyncIterator[tuple[HelloCatcher, int]]:
    catcher = HelloCatcher()
    server = await asyncio.start_server(catcher.handle, host, port)
    try:
        yield catcher, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def hello_of_transport(pki: Pki, host: str, port: int) -> ClientHello:
    """Start the real transport against ``host:port`` and parse the first ClientHello it sends."""
    async with serving(host, port) as (catcher, bound):
        settings = MqttSettings(
            endpoint=host,
            port=bound,
            ca_file=pki.ca_file,
            cert_file=pki.directory / f"{THING}.pem",
            key_file=pki.directory / f"{THING}.key",
            keep_alive_s=5,
            ping_timeout_ms=1000,
            reconnect_min_s=0.5,
            reconnect_max_s=1.0,
        )
        transport = MqttTransport(settings, f"{THING}-gateway")
        await transport.start()
        try:
            async with asyncio.timeout(_HELLO_TIMEOUT_S):
                record = await catcher.records.get()
        finally:
            await transport.stop()
    return parse_client_hello(record)


def assert_tls_1_2_plus_aead_only(hello: ClientHello) -> None:
    assert hello.legacy_version >= TLS_1_2, f"legacy_version {hello.legacy_version:#06x} is below TLS 1.2"
    # Without supported_versions a ClientHello cannot say which versions below legacy_version it accepts.
    assert hello.supported_versions is not None, "no supported_versions extension"
    offered = [v for v in hello.supported_versions if not is_grease(v)]
    assert offered, "supported_versions lists no version"
    below = [f"{v:#06x}" for v in offered if v < TLS_1_2]
    assert not below, f"versions below TLS 1.2 offered: {below}"
    suites = [s for s in hello.cipher_suites if not is_grease(s) and s not in SIGNALS]
    assert suites, "no cipher suite offered"
    weak = [f"{s:#06x}" for s in suites if s not in AEAD_SUITES]
    assert not weak, f"non-AEAD (CBC, static RSA, ...) cipher suites offered: {weak}"


async def test_the_client_hello_offers_only_tls_1_2_and_up_with_aead_suites(pki: Pki) -> None:
    hello = await hello_of_transport(pki, "127.0.0.1", 0)
    assert_tls_1_2_plus_aead_only(hello)
    assert TLS_1_3 in (hello.supported_versions or [])
    assert hello.alpn == []  # not on a port other than 443 (tests/integration/test_mqtt_refusals.py)


async def test_on_port_443_the_client_hello_also_offers_the_iot_core_alpn(pki: Pki) -> None:
    # Any address of 127.0.0.0/8 is loopback: a random one keeps clear of anything already on 127.0.0.1:443.
    host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    try:
        hello = await hello_of_transport(pki, host, 443)
    except PermissionError:
        pytest.skip("binding port 443 needs root or CAP_NET_BIND_SERVICE")
    assert hello.alpn == ["x-amzn-mqtt-ca"]
    assert_tls_1_2_plus_aead_only(hello)


def test_the_checks_catch_what_awscrt_default_used_to_offer() -> None:
    """The assertions themselves fail on a TLS 1.0-1.3 ClientHello with CBC suites (awscrt's DEFAULT)."""
    old_versions = ClientHello(TLS_1_2, [0x1301, 0xC02F], [TLS_1_3, TLS_1_2, 0x0302, 0x0301], [])
    with pytest.raises(AssertionError, match=re.escape("versions below TLS 1.2 offered: ['0x0302', '0x0301']")):
        assert_tls_1_2_plus_aead_only(old_versions)
    cbc = ClientHello(TLS_1_2, [0x1301, 0xC02F, 0xC013, 0x002F], [TLS_1_3, TLS_1_2], [])
    with pytest.raises(AssertionError, match=re.escape("cipher suites offered: ['0xc013', '0x002f']")):
        assert_tls_1_2_plus_aead_only(cbc)
    no_extension = ClientHello(TLS_1_2, [0xC02F], None, [])
    with pytest.raises(AssertionError, match="no supported_versions"):
        assert_tls_1_2_plus_aead_only(no_extension)
    assert is_grease(0x0A0A)
    assert is_grease(0xFAFA)
    assert not is_grease(0x0A1A)
