"""Runs one OpcUaReader in a process of its own, so that its peak memory is measured alone
(tests/integration/test_opcua_limits.py).

stdin: ``{"config": <OpcUaSource document>, "bad": [aliases], "good": [aliases], "timeout_s": N}``.
Reads until every ``bad`` alias has had a BAD reading and every ``good`` alias a GOOD one after the last
of those (or until the timeout), then prints one JSON line: the readings (alias, quality, status), the
peak RSS (VmHWM, kB) before the reader started and at the end, the reconnect count and errors_by_kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_gateway.model import Quality, Reading
from edge_gateway.sources.opcua.config import OpcUaSource
from edge_gateway.sources.opcua.reader import OpcUaReader


def peak_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    msg = "no VmHWM in /proc/self/status: this test needs Linux"
    raise RuntimeError(msg)


async def main() -> int:
    job: dict[str, Any] = json.loads(sys.stdin.read())
    reader = OpcUaReader(OpcUaSource.model_validate(job["config"]))
    readings: list[Reading] = []
    done = asyncio.Event()

    def finished() -> bool:
        last_bad = -1
        for alias in job["bad"]:
            bad = [i for i, r in enumerate(readings) if r.point == alias and r.quality is Quality.BAD]
            if not bad:
                return False
            last_bad = max(last_bad, bad[0])
        return all(
            any(r.point == alias and r.quality is Quality.GOOD for r in readings[last_bad + 1 :])
            for alias in job["good"]
        )

    async def sink(batch: Sequence[Reading]) -> None:
        readings.extend(batch)
        if finished():
            done.set()

    before = peak_rss_kb()
    task = asyncio.create_task(reader.run(sink), name="source:opcua:limits-child")
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(job["timeout_s"]):
            await done.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    result = {
        "readings": [[r.point, r.quality.name, None if r.status is None else str(r.status)] for r in readings],
        "peak_rss_kb_before": before,
        "peak_rss_kb_after": peak_rss_kb(),
        "reconnects": reader.status.reconnects,
        "errors_by_kind": reader.status.errors_by_kind,
        "finished": done.is_set(),
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
