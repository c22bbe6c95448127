"""NetPath, the fault-injecting TCP relay, proven with real sockets: an echo server, then Mosquitto with mTLS."""

from __future__ import annotations

import asyncio
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from edge_gateway.publish.transport.mqtt import MqttTransport
from simulators.iot_core import MosquittoBroker
from simulators.pki import Pki
from tests.netpath import NetPath
from tests.support import THING, mqtt_settings

# How long "nothing arrives" is watched for: a negative observation, so it bounds the test time, not a wait.
SILENCE_S = 0.3
DEADLINE_S = 5.0


class _Echo(socketserver.BaseRequestHandler):
    server: EchoServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(DEADLINE_S * 4)  # a wedged test must not hang the teardown forever
        with self.server.lock:
            self.server.active += 1
        try:
            while data := sock.recv(65536):
                with self.server.lock:
                    self.server.received += len(data)
                sock.sendall(data)
        except OSError:
            pass
        finally:
            with self.server.lock:
                self.server.active -= 1


class EchoServer(socketserver.ThreadingTCPServer):
    """Echoes every byte back; counts bytes received and connections open (each on its own thread)."""

    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.lock = threading.Lock()
        self.received = 0
        self.active = 0

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="echo")
    thread.start()
    yield server
    server.shutdown()
    server.server_close()  # joins the handler threads
    thread.join()


@pytest.fixture
def path(echo: EchoServer) -> Iterator[NetPath]:
    with NetPath("127.0.0.1", echo.port) as p:
        yield p


def connect(p: NetPath) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", p.port), timeout=DEADLINE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, f"EOF after {len(out)} of {n} bytes"
        out += chunk
    return bytes(out)


def round_trip(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload


def assert_closed_by_path(sock: socket.socket) -> None:
    """The relay closed this connection: the next read sees a reset or EOF, not the socket's timeout
    (a path that went silent instead raises TimeoutError here)."""
    try:
        sock.sendall(b"anyone?")
        data = sock.recv(1024)
    except (ConnectionResetError, BrokenPipeError):
        data = b""
    assert data == b"", f"the connection still relays: got {data!r}"


def assert_silent(sock: socket.socket) -> None:
    """Nothing arrives for SILENCE_S, and that is silence, not EOF: the read times out."""
    sock.settimeout(SILENCE_S)
    with pytest.raises(TimeoutError):
        sock.recv(1024)
    sock.settimeout(DEADLINE_S)


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def netpath_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("netpath")]


def test_bytes_round_trip_and_are_counted(path: NetPath, echo: EchoServer) -> None:
    payload = bytes(range(256)) * 400  # 100 KiB: several relay chunks, both ways
    with connect(path) as a, connect(path) as b:
        round_trip(a, payload)
        round_trip(b, b"hello")
    assert path.connections_accepted == 2
    # Counted before being written on, so final once the client has read everything.
    assert path.bytes_up == path.bytes_down == len(payload) + 5
    assert echo.received == len(payload) + 5
    wait_until(lambda: path.open_connections == 0 and echo.active == 0, "both connections closed end to end")


def test_a_client_half_close_passes_through(path: NetPath) -> None:
    with connect(path) as sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)  # FIN: the echo server answers, then closes its side
        assert recv_exactly(sock, 10) == b"last words"
        assert sock.recv(1024) == b""


def test_cut_resets_both_sides_and_refuses_new_connections_until_restore(path: NetPath, echo: EchoServer) -> None:
    with connect(path) as sock:
        round_trip(sock, b"before")
        path.cut()
        assert_closed_by_path(sock)
    wait_until(lambda: echo.active == 0, "the server side of the cut connection to close")
    assert path.open_connections == 0

    # The kernel completes the handshake, the relay then resets it: before or after connect() returns.
    try:
        refused = connect(path)
    except ConnectionResetError:
        pass
    else:
        with refused:
            assert_closed_by_path(refused)
    assert echo.received == len(b"before")  # nothing sent during the cut reached the server

    path.restore()
    with connect(path) as sock:
        round_trip(sock, b"after")
    assert path.connections_accepted == 3


def test_stall_holds_bytes_both_ways_on_open_connections_and_restore_delivers_them(
    path: NetPath, echo: EchoServer
) -> None:
    with connect(path) as old:
        round_trip(old, b"before")
        path.stall()
        old.sendall(b"held up")
        with connect(path) as new:  # accepted during the stall: open, and just as silent
            new.sendall(b"held up too")
            assert_silent(old)
            assert_silent(new)
            assert echo.received == len(b"before")  # the request never reached the server
            assert (path.bytes_up, path.bytes_down) == (6, 6)

            path.restore()
            assert recv_exactly(old, 7) == b"held up"
            assert recv_exactly(new, 11) == b"held up too"

            path.stall()
            new.shutdown(socket.SHUT_WR)  # nor does a FIN cross a stalled path
            assert_silent(new)
            assert echo.active == 2
            path.restore()
            assert new.recv(1024) == b""  # the FIN went through; the server closed in turn
        round_trip(old, b"still relaying")


def test_close_stops_the_thread_and_the_listener(echo: EchoServer) -> None:
    before = netpath_threads()
    p = NetPath("127.0.0.1", echo.port)
    assert len(netpath_threads()) == len(before) + 1
    sock = connect(p)
    round_trip(sock, b"x")
    p.stall()  # a relay task blocked on the stall must not keep close() waiting
    p.close()
    assert netpath_threads() == before
    with sock:
        assert_closed_by_path(sock)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", p.port), timeout=DEADLINE_S).close()
    p.close()  # idempotent


def test_relays_to_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback only"):
        NetPath("192.0.2.1", 8883)


async def test_mqtt_transport_sees_a_cut_and_reconnects_after_restore(pki: Pki, broker: MosquittoBroker) -> None:
    with NetPath("127.0.0.1", broker.port) as p:
        transport = MqttTransport(mqtt_settings(pki, broker, port=p.port), f"{THING}-netpath")
        await transport.start()
        try:
            await transport.wait_connected(10)
            assert await transport.publish("dt/netpath/a", b"up") == 16  # no subscriber: still a success
            accepted = p.connections_accepted

            p.cut()
            await _until(lambda: not transport.connected, "the transport to notice the cut")
            assert transport.status.disconnects == 1
            # awscrt keeps retrying (0.2..1 s backoff); the relay resets every attempt.
            await _until(lambda: p.connections_accepted >= accepted + 2, "two refused reconnect attempts")
            assert not transport.connected

            p.restore()
            await transport.wait_connected(10)
            assert transport.status.connects == 2
            assert await transport.publish("dt/netpath/a", b"back") == 16
        finally:
            await transport.stop()


async def _until(predicate: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
