"""`make demo` works: simulators, broker, gateway and live view, with points reaching the consumer."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_demo_shows_points_flowing_and_the_buffer(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "simulators.demo", "--duration", "8", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    last = result.stdout.rsplit("edge-gateway demo", 1)[-1]
    assert re.search(r"press\s+connected", last), last
    assert re.search(r"boiler\s+connected", last), last
    assert re.search(r"buffer\s+\d+ record\(s\) held", last), last
    received = re.search(r"cloud\s+received (\d+) points in (\d+) messages", last)
    assert received is not None, last
    assert int(received.group(1)) > 100
    assert (tmp_path / "demo" / "gateway.yaml").exists()
