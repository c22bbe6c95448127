"""Free TCP ports on loopback for simulators, brokers and tests.

``free_port()`` binds 127.0.0.1:0, reads the port the kernel chose and closes the socket: the port is free
at that moment, not reserved, so the caller should bind it soon (another process may take it meanwhile).
"""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
