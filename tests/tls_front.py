"""TLS-level refusals for tests: a revoked client certificate, and a front that requires an ALPN protocol.

- ``write_crl(pki, revoked, path)`` writes a PEM CRL, signed by the PKI's CA, that lists ``revoked``.
- ``CrlMosquittoBroker(pki, directory, crl_file=...)`` is the test broker with ``crlfile`` set: OpenSSL then
  checks the client certificate against the CRL and refuses a revoked one during the handshake.
- ``AlpnGate(upstream_port, alpn)`` listens on ``127.0.0.1:<free port>`` (see ``port``) and reads each
  client's ClientHello. If it offers ``alpn``, the connection is relayed byte for byte to the upstream
  port (Mosquitto does the mutual TLS, so the client's identity reaches the broker); if not, the gate
  answers as a strict server does (RFC 7301): a fatal ``no_application_protocol`` alert, then it closes.
  This is the part of AWS IoT Core on port 443 that matters here: it needs ALPN ``x-amzn-mqtt-ca``.
  Python's ``ssl`` cannot refuse a handshake for a missing ALPN (CPython's select callback answers
  "no ack" and the handshake goes on), hence the gate reads the ClientHello itself. The ClientHello MUST
  fit in one TLS record (awscrt's does). ``offers`` keeps, per accepted connection, the ALPN protocols
  offered (empty: none); ``refused`` counts the alerts sent. Threads are daemons; ``stop()`` closes the
  listener and every open connection.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import selectors
import socket
import threading
from pathlib import Path
from types import TracebackType
from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from simulators.iot_core import MosquittoBroker
from simulators.pki import Pki

IOT_CORE_ALPN = "x-amzn-mqtt-ca"
_TLS_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_EXT_ALPN = 0x0010
# A fatal (2) no_application_protocol (120) alert in a TLS 1.2-versioned record, as TLS 1.3 servers send it.
_ALERT_NO_APPLICATION_PROTOCOL = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 120])
_HELLO_TIMEOUT_S = 5.0
_CHUNK = 64 * 1024


def write_crl(pki: Pki, revoked: list[Path], path: Path) -> Path:
    """A CRL from the PKI's CA listing the certificates in ``revoked`` (PEM files), valid for a day."""
    ca = x509.load_pem_x509_certificate(pki.ca_file.read_bytes())
    ca_key = serialization.load_pem_private_key((pki.directory / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=1))
    )
    for cert_path in revoked:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - dt.timedelta(minutes=1))
            .build()
        )
        builder = builder.add_revoked_certificate(entry)
    path.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    path.chmod(0o644)
    return path


class CrlMosquittoBroker(MosquittoBroker):
    """The test broker, checking client certificates against ``crl_file`` (Mosquitto's ``crlfile``)."""

    def __init__(self, pki: Pki, directory: Path, *, crl_file: Path) -> None:
        super().__init__(pki, directory)
        self.crl_file = crl_file

    def _write_config(self) -> Path:
        # MosquittoBroker has no hook for extra lines: append to its config (the last listener's options).
        conf = super()._write_config()
        with conf.open("a") as f:
            f.write(f"crlfile {self.crl_file}\n")
        return conf


def offered_alpn(record: bytes) -> list[str]:
    """The ALPN protocols a ClientHello record offers (empty: no ALPN extension). ValueError if not one."""
    if record[:1] != bytes([_TLS_HANDSHAKE]) or record[5:6] != bytes([_CLIENT_HELLO]):
        raise ValueError(f"not a TLS ClientHello record: {record[:8].hex()}")
    try:
        return _alpn_extension(record)
    except IndexError:
        raise ValueError(f"truncated TLS ClientHello: {len(record)} bytes") from None


def _alpn_extension(record: bytes) -> list[str]:
    body = record[9:]  # record header (5), handshake type (1) and length (3)
    pos = 2 + 32  # legacy version, random
    pos += 1 + body[pos]  # session id
    pos += 2 + int.from_bytes(body[pos : pos + 2])  # cipher suites
    pos += 1 + body[pos]  # compression methods
    if pos + 2 > len(body):
        return []
    end = pos + 2 + int.from_bytes(body[pos : pos + 2])
    pos += 2
    while pos + 4 <= end:
        ext_type, ext_len = int.from_bytes(body[pos : pos + 2]), int.from_bytes(body[pos + 2 : pos + 4])
        data = body[pos + 4 : pos + 4 + ext_len]
        pos += 4 + ext_len
        if ext_type == _EXT_ALPN:
            names, i = [], 2  # protocol name list length (2), then (length (1), name) pairs
            while i < len(data):
                names.append(data[i + 1 : i + 1 + data[i]].decode("ascii", "replace"))
                i += 1 + data[i]
            return names
    return []


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("peer closed before the ClientHello was complete")
        data += chunk
    return data


class AlpnGate:
    def __init__(self, upstream_port: int, alpn: str = IOT_CORE_ALPN) -> None:
        self.upstream_port = upstream_port
        self.alpn = alpn
        self.offers: list[list[str]] = []
        self.refused = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._stopped = False
        self._thread = threading.Thread(target=self._accept_loop, name=f"alpn-gate:{self.port}", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopped:
                for key, _ in sel.select():
                    if key.fileobj is self._listener and not self._stopped:
                        conn, _addr = self._listener.accept()
                        self._track(conn)
                        threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.add(sock)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        sock.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(_HELLO_TIMEOUT_S)
            header = _recv_exactly(conn, 5)
            record = header + _recv_exactly(conn, int.from_bytes(header[3:5]))
            offers = offered_alpn(record)
        except (OSError, ValueError):
            self._close(conn)
            return
        with self._lock:
            self.offers.append(offers)
        if self.alpn not in offers:
            with self._lock:
                self.refused += 1
            with contextlib.suppress(OSError):
                conn.sendall(_ALERT_NO_APPLICATION_PROTOCOL)
                conn.shutdown(socket.SHUT_WR)
                conn.recv(_CHUNK)  # the client's close; closing with unread data would send RST instead
            self._close(conn)
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=_HELLO_TIMEOUT_S)
        except OSError:
            self._close(conn)
            return
        self._track(upstream)
        conn.settimeout(None)
        upstream.settimeout(None)
        with contextlib.suppress(OSError):
            upstream.sendall(record)
        threading.Thread(target=self._pipe, args=(upstream, conn), daemon=True).start()
        self._pipe(conn, upstream)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(_CHUNK):
                dst.sendall(chunk)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            self._close(src)

    def stop(self) -> None:
        self._stopped = True
        self._wake_w.send(b"x")
        self._thread.join(5)
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        with self._lock:
            socks, self._open = list(self._open), set()
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
