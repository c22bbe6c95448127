"""The gateway's other durable files under power cuts: the audit trail, the dead-letter file, the saved shadow
configuration and the provenance epochs.

Each case runs ``CUTS`` power cuts on one directory (what a cut leaves is the next boot's disk, so damage
accumulates), with ``tests/powerloss/records_writer.py`` writing through a lazyfs mount until the power goes
(``drop`` or ``random`` mode, after a random 20-250 ms or just before a random state-changing operation). Then
this process opens what the cut left, as the gateway would at boot, and checks:

- ``audit``: the trail opens (a torn last line is cut and noted), its hash chain verifies, and the ``test.entry``
  entries are exactly 1..k, in order, with k at least every n whose append returned (an entry reported durable is
  there; none is there twice);
- ``deadletter``: every entry whose ``write`` returned is there exactly once; a line torn by the cut is a line of
  its own, never glued to the next entry (the next boot's first write closes it);
- ``saved``: the saved configuration is the last one whose save returned or the one being saved: old or new,
  never missing, empty or torn (nothing set aside as unreadable);
- ``epochs``: likewise the provenance epochs, never unreadable (an unreadable file would lose the ``cfg`` of
  every reading still in the buffer).
"""

from __future__ import annotations

import json
import logging
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_gateway.control.saved import AppliedConfig
from edge_gateway.gxp.audit import AuditTrail
from edge_gateway.gxp.audit_verify import verify
from edge_gateway.gxp.provenance import Epochs
from tests.powerloss.harness import Mode, PowerLossFS, power_cycle
from tests.powerloss.records_writer import AUDIT_EVENT, DEADLETTER, EPOCHS, SAVED, epoch_hash
from tests.support import report_lines

pytestmark = pytest.mark.usefixtures("needs_fuse")

CUTS = 15  # per kind: 60 in all
MAX_OP = 300
DATA = Path("data")  # inside the mount; the writer creates it (its entry must be made durable too)


@dataclass
class Run:
    opened_at: int | None = None  # what the writer found on disk at boot; None if cut before
    written: int = 0  # the highest n a write was started for (an upper bound)
    durable: int = 0  # the highest n whose write returned


def parse(out: Path) -> Run:
    run = Run()
    for kind, rest in report_lines(out):
        if kind == "O":
            run.opened_at = int(rest)
        elif kind == "W":
            run.written = max(run.written, int(rest))
        elif kind == "D":
            run.durable = max(run.durable, int(rest))
    return run


def power_cut(tmp_path: Path, disk: Path | None, i: int, kind: str, rng: random.Random) -> tuple[Run, Path]:
    """One cycle: boot from ``disk``, run the writer, cut; (what the writer said, what the cut left)."""
    out, log = tmp_path / f"disk-{i}", tmp_path / f"writer-{i}.out"
    armed, pause = rng.random() < 0.5, rng.uniform(0.02, 0.25)
    mode: Mode = "drop" if rng.random() < 0.5 else "random"
    with PowerLossFS(tmp_path / "mnt", seed_dir=disk, mode=mode, seed=rng.randrange(1 << 30)) as fs:
        cmd = [sys.executable, "-m", "tests.powerloss.records_writer", str(fs.mount / DATA), kind, str(i)]
        arm = rng.randint(1, MAX_OP) if armed else None
        power_cycle(fs, cmd, out=out, log=log, arm=arm, ready="O ", pause_s=pause)
    return parse(log), out


def check_audit(data: Path, durable: int, written: int) -> int:
    trail = AuditTrail(data / "audit", max_file_bytes=4096)  # recovery: a torn last line is cut and noted
    try:
        ns = [int(e.fields["n"]) for e in trail.entries() if e.event == AUDIT_EVENT]
    finally:
        trail.close()
    result = verify(data / "audit")
    assert result.ok, f"the audit chain does not verify after a power cut: {result.as_dict()}"
    assert ns == list(range(1, len(ns) + 1)), "audit entries missing, repeated or out of order"
    assert durable <= len(ns) <= written, f"{len(ns)} entries: {durable} were reported durable, {written} started"
    return len(ns)


def check_deadletter(data: Path, durable: int, written: int) -> int:
    ns: list[int] = []
    for path in sorted(data.glob(DEADLETTER + "*")):
        for line in path.read_bytes().splitlines():
            try:
                ns.append(int(json.loads(line)["n"]))
            except ValueError:
                # A line torn by the cut: it must hold no more than one entry's start (no entry glued to it).
                assert line.count(b'{"at"') <= 1, f"an entry was glued to a torn line in {path.name}: {line[:200]!r}"
    assert len(ns) == len(set(ns)), "a dead-letter entry is there twice"
    found = max(ns, default=0)
    assert set(range(1, durable + 1)) <= set(ns), f"entries reported durable are missing (up to {durable})"
    assert found <= written
    return found


def check_saved(data: Path, durable: int, written: int) -> int:
    saved = AppliedConfig.load(data / SAVED)
    assert not (data / SAVED).with_suffix(".unreadable").exists(), "the saved configuration was torn"
    version = saved.version if saved is not None else 0
    assert durable <= version <= written, f"saved version {version}: {durable} was durable, {written} started"
    if saved is not None:
        assert saved == AppliedConfig(version, saved.desired, f"{version:064x}", None)
    return version


def check_epochs(data: Path, durable: int, written: int, caplog: pytest.LogCaptureFixture) -> int:
    with caplog.at_level(logging.WARNING, logger="edge_gateway.gxp.provenance"):
        caplog.clear()
        epochs = Epochs(data / EPOCHS)
    assert not caplog.records, f"provenance epochs unreadable after a power cut: {caplog.text}"
    current = epochs.current
    n = int(current, 16) if current is not None else 0
    assert durable <= n <= written, f"epoch {n}: {durable} was durable, {written} started"
    if n:
        assert epochs.hash_for(n * 10) == epoch_hash(n)
    return n


@pytest.mark.parametrize("kind", ["audit", "deadletter", "saved", "epochs"])
def test_power_cuts_keep_every_record_reported_durable(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(f"records-{kind}")
    disk: Path | None = None
    durable = written = 0  # over all runs so far: what must be there, and what may be
    progressed = 0
    for i in range(CUTS):
        run, out = power_cut(tmp_path, disk, i, kind, rng)
        durable, written = max(durable, run.durable), max(written, run.written)
        data = out / DATA
        context = f"cut {i} ({kind})"
        if not data.exists():
            assert durable == 0, f"{context}: the data directory is gone with {durable} durable records"
            disk = out
            continue
        if kind == "audit":
            found = check_audit(data, durable, written)
        elif kind == "deadletter":
            found = check_deadletter(data, durable, written)
        elif kind == "saved":
            found = check_saved(data, durable, written)
        else:
            found = check_epochs(data, durable, written, caplog)
        progressed += found > (run.opened_at or 0)
        # The next boot continues from what is there now: the writer only ever counts up from it.
        durable, written = found, max(written, found)
        disk = out
    assert durable > 0, f"{kind}: no record ever became durable: the workload did not run"
    assert progressed >= CUTS // 3, f"{kind}: only {progressed} of {CUTS} runs got anything durable"
