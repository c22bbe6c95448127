"""A minimal HTTP CONNECT proxy on loopback (RFC 9110 §9.3.6), as plants put in front of the internet.

``HttpConnectProxy(credentials=("user", "pw"))`` listens on ``127.0.0.1:<free port>``; each client sends
``CONNECT host:port HTTP/1.1`` (with ``Proxy-Authorization: Basic …`` when credentials are set), gets
``200 Connection established`` and then a byte tunnel to the target, or ``407`` (wrong or missing
credentials) or ``403`` (a target that is not loopback: tests never leave 127.0.0.0/8). ``requests``
records every (target, authorised) seen. One thread per tunnel; ``close()`` stops the listener.
"""

from __future__ import annotations

import base64
import ipaddress
import select
import socket
import socketserver
import threading
from typing import Self

_CHUNK = 64 * 1024


class HttpConnectProxy:
    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self.credentials = credentials
        self.requests: list[tuple[str, bool]] = []
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-proxy", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 16384:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        request, *header_lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        method, target, _ = request.split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines if ":" in h)}
        authorised = self._authorised(headers.get("proxy-authorization"))
        self.requests.append((target, authorised))
        host, _, port = target.rpartition(":")
        if not authorised:
            client.sendall(b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="p"\r\n\r\n')
            return
        if method != "CONNECT" or not ipaddress.ip_address(host.strip("[]")).is_loopback:
            client.sendall(b"HTTP/1.1 403 Forbidden\r\n\r\n")
            return
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5) as upstream:
            upstream.settimeout(None)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            _relay(client, upstream)

    def _authorised(self, header: str | None) -> bool:
        if self.credentials is None:
            return True
        expected = base64.b64encode(":".join(self.credentials).encode()).decode()
        return header == f"Basic {expected}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _relay(a: socket.socket, b: socket.socket) -> None:
    peers = {a: b, b: a}
    while True:
        readable, _, _ = select.select(list(peers), [], [], 60)
        if not readable:
            continue
        for sock in readable:
            try:
                data = sock.recv(_CHUNK)
            except OSError:
                return
            if not data:
                return
            peers[sock].sendall(data)
