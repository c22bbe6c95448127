"""Start ThingsBoard IoT Gateway behind a loopback guard. Run by the peer's interpreter, never imported here:

    bench/.peer-venv/bin/python bench/peer/tb_launch.py CONFIG_DIR

Before the gateway's code is imported, every name lookup and every TCP/UDP connect of the process is
limited to 127.0.0.0/8, ::1 and ``localhost``: anything else fails at once (``socket.gaierror`` for a lookup,
``ConnectionRefusedError`` for a connect), so the update check it posts to its vendor at start and every
hour fails fast without a packet leaving the machine, and no DNS query is sent for it. A run-time ``pip
install`` runs in a child process, outside the guard: ``bench.peer`` starts this script with
``PIP_NO_INDEX=1`` so pip cannot reach any index either (and pins every package the connector asks for).

Then the gateway starts as its ``thingsboard-gateway`` console script does, from ``CONFIG_DIR/tb_gateway.json``
(logs to stdout, per the ``logs.json`` written there); it stops on SIGINT (its own handler) or SIGTERM
(turned into SIGINT here). The working directory should be ``CONFIG_DIR``.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
import signal
import socket
import sys
from typing import Any

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_real_getaddrinfo = socket.getaddrinfo
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_gethostbyname = socket.gethostbyname


def _is_loopback(host: object) -> bool:
    if host is None:
        return True  # getaddrinfo(None, port): the local wildcard/loopback, never a remote host
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    text = str(host).strip().lower().rstrip(".")
    if text in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(text.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _refuse(host: object) -> str:
    return f"bench.peer loopback guard: {host!r} is outside 127.0.0.0/8 and ::1; this benchmark stays on loopback"


def _getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401 - socket's own signature
    if not _is_loopback(host):
        raise socket.gaierror(socket.EAI_NONAME, _refuse(host))
    return _real_getaddrinfo(host, *args, **kwargs)


def _gethostbyname(host: str) -> str:
    if not _is_loopback(host):
        raise socket.gaierror(socket.EAI_NONAME, _refuse(host))
    return _real_gethostbyname(host)


def _check_address(sock: socket.socket, address: Any) -> None:  # noqa: ANN401
    if sock.family in {socket.AF_INET, socket.AF_INET6} and not _is_loopback(address[0]):
        raise ConnectionRefusedError(_refuse(address[0]))


def _connect(self: socket.socket, address: Any) -> None:  # noqa: ANN401
    _check_address(self, address)
    _real_connect(self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:  # noqa: ANN401
    _check_address(self, address)
    return _real_connect_ex(self, address)


def install_guard() -> None:
    socket.getaddrinfo = _getaddrinfo
    socket.gethostbyname = _gethostbyname
    socket.socket.connect = _connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign,assignment]


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    install_guard()
    config_dir = os.path.abspath(sys.argv[1])  # noqa: PTH100 - the gateway wants a string with a separator
    os.environ["TB_GW_CONFIG_DIR"] = config_dir + os.sep
    os.chdir(config_dir)
    os.makedirs("logs", exist_ok=True)  # noqa: PTH103
    signal.signal(signal.SIGTERM, lambda _sig, _frame: os.kill(os.getpid(), signal.SIGINT))
    gateway = importlib.import_module("thingsboard_gateway.tb_gateway")
    print("READY thingsboard-gateway starting", flush=True)
    gateway.daemon()
    return 0


if __name__ == "__main__":
    sys.exit(main())
