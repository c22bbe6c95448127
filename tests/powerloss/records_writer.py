"""Power-cut writer for the gateway's other durable files: it writes until the power goes, saying what is durable.

Run as ``python -m tests.powerloss.records_writer DIR KIND SEED`` with KIND one of:

- ``audit``: appends ``test.entry`` entries (``n`` counting on from the last one on disk) to the audit trail
  in ``DIR/audit``, with 4 KiB files (rotations often) or 1 MiB ones (a first file long before any rotation);
- ``deadletter``: writes batches of entries to ``DIR/dead-letter.jsonl`` with 64 KiB files (rotations;
  up to 100 old files are kept, more than a test fills, so every entry written stays findable);
- ``saved``: saves the last-good shadow configuration (``AppliedConfig``) to ``DIR/applied-config.json``,
  version counting up, documents of varying size;
- ``epochs``: starts provenance epochs (``Epochs.start``) in ``DIR/provenance-epochs.json``.

One line per event on stdout, flushed; only whole lines count:

    O <last>      opened; numbering continues after ``last`` (what this writer found on disk)
    W <n>         about to write n (printed before the call: an upper bound for what may be on disk)
    D <n>         the call that wrote n returned: n is durable
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from edge_gateway.control.saved import AppliedConfig
from edge_gateway.gxp.audit import AuditTrail
from edge_gateway.gxp.provenance import Epochs
from edge_gateway.publish.deadletter import DeadLetterFile

AUDIT_EVENT = "test.entry"
DEADLETTER = "dead-letter.jsonl"
SAVED = "applied-config.json"
EPOCHS = "provenance-epochs.json"


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def epoch_hash(n: int) -> str:
    return f"{n:064x}"


def saved_doc(n: int) -> AppliedConfig:
    # Sizes from a few bytes to several pages, so a torn write can cut a page or a word.
    pad = "p" * (n * 7919 % 9000)
    return AppliedConfig(n, {"sources": [], "pad": pad}, f"{n:064x}", None)


def deadletter_entry(n: int) -> dict[str, object]:
    return {"kind": "reading", "dest": "cloud", "reason": "test", "n": n, "pad": "d" * (n * 31 % 300)}


def last_deadletter(directory: Path) -> int:
    last = 0
    for path in directory.glob(DEADLETTER + "*"):
        for line in path.read_bytes().splitlines():
            try:
                last = max(last, int(json.loads(line)["n"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn line (the test checks that no durable entry is among them)
    return last


def run(directory: Path, kind: str, rng: random.Random) -> None:
    if kind == "audit":
        # Small files (rotations often) or big ones (a first file that lives long before any rotation).
        trail = AuditTrail(directory / "audit", max_file_bytes=rng.choice([4096, 1 << 20]))
        last = max((int(e.fields.get("n", 0)) for e in trail.entries() if e.event == AUDIT_EVENT), default=0)
        say(f"O {last}")
        for n in range(last + 1, 1 << 62):
            say(f"W {n}")
            trail.append(AUDIT_EVENT, n=n, pad="a" * rng.randint(0, 400))
            say(f"D {n}")
    elif kind == "deadletter":
        dl = DeadLetterFile(directory / DEADLETTER, max_file_bytes=65_536, max_files=100)
        n = last_deadletter(directory)
        say(f"O {n}")
        while True:
            batch = [deadletter_entry(v) for v in range(n + 1, n + 1 + rng.randint(1, 8))]
            n += len(batch)
            say(f"W {n}")
            dl.write(batch)
            if dl.stats.failed:
                msg = f"dead-letter write failed: {dl.stats}"
                raise SystemExit(msg)
            say(f"D {n}")
    elif kind == "saved":
        found = AppliedConfig.load(directory / SAVED)
        last = found.version if found is not None else 0
        say(f"O {last}")
        for n in range(last + 1, 1 << 62):
            say(f"W {n}")
            saved_doc(n).save(directory / SAVED)
            say(f"D {n}")
    elif kind == "epochs":
        epochs = Epochs(directory / EPOCHS)
        current = epochs.current
        last = int(current, 16) if current is not None else 0
        say(f"O {last}")
        for n in range(last + 1, 1 << 62):
            say(f"W {n}")
            epochs.start(n * 10, epoch_hash(n))
            epochs.prune((n - 20) * 10)  # bounded, and pruning rewrites the file too
            say(f"D {n}")
    else:
        msg = f"unknown kind {kind!r}: audit, deadletter, saved or epochs"
        raise SystemExit(msg)


if __name__ == "__main__":
    run(Path(sys.argv[1]), sys.argv[2], random.Random(int(sys.argv[3])))
