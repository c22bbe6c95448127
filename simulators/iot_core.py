"""Local stand-in for AWS IoT Core: Mosquitto with mutual TLS (the test PKI it needs is ``simulators.pki``).

- ``MosquittoBroker`` writes a config in its directory and runs ``mosquitto`` on a loopback port:
  mTLS required, the client certificate CN is the username, MQTT 5, ``max_packet_size 131072`` like
  IoT Core's 128 KB limit. ``stop()`` then ``start()`` reuses the same port (outage tests).
- ``mosquitto_binary()`` finds the executable, or raises FileNotFoundError saying to run ``make setup``.

Run alone: ``python -m simulators.iot_core --port 8883 --dir var/broker [--thing demo-gateway]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from edge_gateway.config.model import MqttSettings
from simulators.pki import Pki, generate_pki
from simulators.ports import free_port


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if found is None:
        msg = "mosquitto is not installed: run `make setup` (it installs the Debian package)"
        raise FileNotFoundError(msg)
    return found


class MosquittoBroker:
    def __init__(
        self,
        pki: Pki,
        directory: Path,
        port: int | None = None,
        *,
        acl_file: Path | None = None,
        persistent: bool = False,
    ) -> None:
        self.pki = pki
        # Persistent: sessions and their queued messages survive a broker restart (saved on SIGTERM), so a
        # consumer misses nothing published while it was still reconnecting.
        self.persistent = persistent
        self.directory = directory
        self.port = port or free_port()
        self.acl_file = acl_file
        self.log_file = directory / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def ca_file(self) -> Path:
        return self.pki.ca_file

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def freeze(self) -> None:
        """SIGSTOP the broker: connections stay open but nothing answers (a half-open path)."""
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGCONT)

    def _write_config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [
            "per_listener_settings false",
            *(
                ["persistence true", f"persistence_location {self.directory}/", "autosave_interval 1"]
                if self.persistent
                else ["persistence false"]
            ),
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            f"listener {self.port} 127.0.0.1",
            "protocol mqtt",
            f"cafile {self.pki.ca_file}",
            f"certfile {self.pki.server_cert}",
            f"keyfile {self.pki.server_key}",
            "require_certificate true",
            "use_identity_as_username true",
            "allow_anonymous false",
            "max_packet_size 131072",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
        ]
        if os.geteuid() == 0:
            lines.insert(0, "user root")  # else mosquitto drops to user `mosquitto` before reading keys
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        conf = self.directory / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, timeout_s: float = 10.0) -> None:
        if self.running:
            return
        conf = self._write_config()
        log = self.log_file.open("ab")
        self._proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                msg = f"mosquitto exited with {self._proc.returncode}: {self.log_file.read_text()[-2000:]}"
                raise RuntimeError(msg)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        msg = f"mosquitto did not listen on 127.0.0.1:{self.port} within {timeout_s} s"
        raise RuntimeError(msg)

    def set_acl(self, text: str) -> None:
        """Replace the ACL file; a running broker reloads it (SIGHUP) without dropping connections."""
        if self.acl_file is None:
            self.acl_file = self.directory / "acl"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.acl_file.write_text(text)
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)  # a frozen broker handles SIGTERM only once it runs again
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Mosquitto with mutual TLS, standing in for AWS IoT Core")
    parser.add_argument("--port", type=int, default=8883)
    parser.add_argument("--dir", type=Path, default=Path("var/broker"))
    parser.add_argument("--thing", default="demo-gateway")
    args = parser.parse_args(argv)
    pki = generate_pki(args.dir / "pki", thing_name=args.thing)
    broker = MosquittoBroker(pki, args.dir, args.port)
    broker.start()
    print(f"READY mqtts://127.0.0.1:{broker.port}", flush=True)
    print(f"ca={pki.ca_file} cert={pki.client_cert} key={pki.client_key} log={broker.log_file}", flush=True)
    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop and broker.running:
        time.sleep(0.2)
    if not stop:
        print(f"mosquitto exited: {broker.log_file.read_text()[-2000:]}", file=sys.stderr, flush=True)
        return 1
    broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())


def loopback_mqtt_settings(pki: Pki, broker: MosquittoBroker, client: str, **overrides: object) -> MqttSettings:
    """The gateway's MQTT settings for ``broker`` on 127.0.0.1 with ``client``'s certificate from ``pki``: short
    keep-alive, ping timeout and reconnect delays (a test or a benchmark notices a dead path in seconds), IoT
    Core flow control off unless ``overrides`` turn it on."""
    values: dict[str, object] = {
        "endpoint": "127.0.0.1",
        "port": broker.port,
        "ca_file": pki.ca_file,
        "cert_file": pki.directory / f"{client}.pem",
        "key_file": pki.directory / f"{client}.key",
        "keep_alive_s": 5,
        "ping_timeout_ms": 1000,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 1.0,
        "iot_core_flow_control": False,
    }
    return MqttSettings.model_validate(values | overrides)
