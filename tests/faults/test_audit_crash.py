"""SIGKILL a process appending to the audit trail at random moments, again and again, then check the trail.

This file is also the writer: ``python tests/faults/test_audit_crash.py DIR SEED`` opens the trail (which
cuts and notes a torn tail), prints ``O <last_seq>``, then appends ``test.tick`` events numbered after the
highest ``n`` already in the trail, printing ``A <n>`` after each append returns (it is durable then).

After each kill the test checks: ``verify`` passes; every ``n`` whose append returned is in the trail;
each ``n`` appears once, in order (the writer never appends an event twice: it resumes after what the
trail holds). Every third run the newest file is also cut inside its last line, as a power loss that tore
the last write would leave it (a SIGKILL between two pages of one ``write`` can do the same): ``verify``
reports the torn tail without counting it, and the next open cuts it and records an
``audit.torn_tail_removed`` entry whose SHA-256 is that of the cut bytes.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KILLS = 12
MAX_FILE_BYTES = 8192


def writer(directory: Path, seed: int) -> None:
    from edge_gateway.gxp.audit import AuditTrail  # noqa: PLC0415 - only in the child

    rng = random.Random(seed)
    trail = AuditTrail(directory, max_file_bytes=MAX_FILE_BYTES, max_files=None)
    n = max((e.fields["n"] for e in trail.entries() if e.event == "test.tick"), default=0)
    sys.stdout.write(f"O {trail.last_seq}\n")
    sys.stdout.flush()
    while True:
        n += 1
        trail.append("test.tick", n=n, pad="x" * rng.randint(0, 2000))
        sys.stdout.write(f"A {n}\n")
        sys.stdout.flush()


def run_and_kill(directory: Path, out: Path, seed: int) -> int:
    """Start the writer, kill it at a random moment after it opened; the highest n it said was durable."""
    rng = random.Random(seed)
    with out.open("w") as stdout:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__)), str(directory), str(seed)],
            stdout=stdout,
            stderr=subprocess.PIPE,
            cwd=REPO,
        )
    try:
        deadline = time.monotonic() + 20
        while not out.read_text().startswith("O ") and proc.poll() is None:
            assert time.monotonic() < deadline, "writer did not open the trail within 20 s"
            time.sleep(0.002)
        time.sleep(rng.uniform(0.005, 0.15))
        assert proc.poll() is None, f"writer exited by itself: {proc.stderr.read().decode() if proc.stderr else ''}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    durable = 0
    for line in out.read_text().splitlines(keepends=True):
        if line.endswith("\n") and line.startswith("A "):
            durable = int(line.split()[1])
    return durable


@pytest.mark.slow
def test_sigkill_during_appends_never_breaks_the_chain_and_records_each_event_once(tmp_path: Path) -> None:
    from edge_gateway.gxp.audit import TORN_TAIL_REMOVED, AuditTrail, read_entries, trail_files, verify  # noqa: PLC0415

    directory = tmp_path / "audit"
    rng = random.Random(1129)
    torn: list[tuple[int, str]] = []  # (n cut away or 0 for another event, sha256 of the cut bytes)
    for i in range(KILLS):
        durable = run_and_kill(directory, tmp_path / f"out{i}.txt", rng.randrange(1 << 30))
        result = verify(directory)
        assert result.ok, result.broken
        ticks = [e.fields["n"] for e in read_entries(directory) if e.event == "test.tick"]
        assert ticks == sorted(set(ticks)), "an event was recorded twice or out of order"
        lost = {n for n, _ in torn}
        assert set(range(1, durable + 1)) - lost <= set(ticks), "an append that returned is missing"
        _, newest = trail_files(directory)[-1]
        data = newest.read_bytes()
        if result.torn_tail is not None:
            # SIGKILL can cut a write() between two pages: a torn line whose append never returned.
            tail = data[data.rfind(b"\n") + 1 :]
            assert result.torn_tail.bytes == len(tail)
            torn.append((0, hashlib.sha256(tail).hexdigest()))
        elif i % 3 == 2 and data:
            start = data.rfind(b"\n", 0, len(data) - 1) + 1
            cut_at = rng.randrange(start + 1, len(data) - 1)
            last = json.loads(data[start:])
            newest.write_bytes(data[:cut_at])
            torn.append((last["fields"].get("n", 0), hashlib.sha256(data[start:cut_at]).hexdigest()))
            result = verify(directory)
            assert result.ok
            assert result.torn_tail is not None
            assert result.torn_tail.bytes == cut_at - start
    # One last open (as the gateway's next start) and append: everything still verifies.
    with AuditTrail(directory, max_file_bytes=MAX_FILE_BYTES, max_files=None) as trail:
        trail.append("gateway.started", version="test")
    result = verify(directory)
    assert (result.ok, result.torn_tail) == (True, None)
    assert len(result.files) > 1  # rotation happened during the kills
    entries = list(read_entries(directory))
    notes = [e.fields["sha256"] for e in entries if e.event == TORN_TAIL_REMOVED]
    assert notes == [h for _, h in torn]
    ticks = [e.fields["n"] for e in entries if e.event == "test.tick"]
    assert ticks == sorted(set(ticks))
    assert result.count == len(entries)


if __name__ == "__main__":
    writer(Path(sys.argv[1]), int(sys.argv[2]))
