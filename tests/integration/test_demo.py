"""`make demo` works: simulators, broker, shadow service, gateway and live view, with points reaching the
consumer and the shadow commands it prints answering while it runs."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from simulators.process import stop_process


def wait_for_shadow_commands(demo: subprocess.Popen[bytes], out: Path, timeout_s: float = 60) -> dict[str, list[str]]:
    """The ``set`` and ``get`` command lines the demo prints at startup, once it has printed them."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and demo.poll() is None:
        lines = [shlex.split(line) for line in out.read_text().splitlines() if " -m simulators.shadow " in line]
        commands = {words[3]: words for words in lines if words[3] in {"set", "get"}}
        if len(commands) == 2:
            return commands
        time.sleep(0.2)
    msg = f"no shadow commands printed (demo exit code {demo.poll()}): {out.read_text()[-2000:]}"
    raise AssertionError(msg)


def reported_status(demo: subprocess.Popen[bytes], get: list[str], version: int | None) -> dict[str, Any]:
    """The gateway's ``config_status`` read with the printed ``get`` command, once it reports ``version``."""
    deadline, last = time.monotonic() + 30, ""
    while time.monotonic() < deadline and demo.poll() is None:
        done = subprocess.run(get, capture_output=True, text=True, timeout=30, check=False)
        last = done.stdout + done.stderr
        if done.returncode == 0:  # 1 (404) until the gateway has reported once
            status: dict[str, Any] = json.loads(done.stdout)["state"].get("reported", {}).get("config_status", {})
            if status and status.get("version") == version:
                return status
        time.sleep(0.3)
    msg = f"no config_status for version {version} in the shadow (demo exit code {demo.poll()}): {last[-2000:]}"
    raise AssertionError(msg)


def test_demo_shows_points_flowing_and_follows_its_shadow(tmp_path: Path) -> None:
    out, err = tmp_path / "demo.out", tmp_path / "demo.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        demo = subprocess.Popen(
            [sys.executable, "-m", "simulators.demo", "--duration", "12", "--dir", str(tmp_path / "demo")],
            stdout=stdout,
            stderr=stderr,
        )
    try:
        commands = wait_for_shadow_commands(demo, out)
        # Nothing desired yet: the gateway reports what it runs, with no shadow version.
        assert reported_status(demo, commands["get"], None)["status"] == "applied"
        done = subprocess.run(commands["set"], capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["state"] == {"desired": {"heartbeat": {"interval_s": 10}}}
        status = reported_status(demo, commands["get"], json.loads(done.stdout)["version"])
        assert (status["status"], status["changes"]) == ("applied", "status intervals changed")
        demo.wait(timeout=120)
    finally:
        stop_process(demo)
    assert demo.returncode == 0, out.read_text()[-2000:] + err.read_text()[-2000:]
    last = out.read_text().rsplit("edge-gateway demo", 1)[-1]
    assert re.search(r"press\s+connected", last), last
    assert re.search(r"boiler\s+connected", last), last
    assert re.search(r"buffer\s+\d+ record\(s\) held", last), last
    received = re.search(r"cloud\s+received (\d+) points in (\d+) messages", last)
    assert received is not None, last
    assert int(received.group(1)) > 100
    assert (tmp_path / "demo" / "gateway.yaml").exists()
    assert "READY shadow service" in (tmp_path / "demo" / "shadow.log").read_text()
