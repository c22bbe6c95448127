"""``verify(directory)``: check a whole audit trail directory and name the first broken entry.

Every line of every file, oldest first: a valid entry in canonical form whose hash matches its content,
``seq`` one more than the entry before and ``prev`` equal to that entry's hash. Only the newest file may
end in an incomplete line (a torn tail: reported, not counted, not an error). The first entry present may
be later than seq 1 when older files were archived away (``starts_midway``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_gateway.gxp.audit_format import GENESIS, AuditEntry, claimed_seq, trail_files


@dataclass(frozen=True, slots=True)
class BrokenEntry:
    file: str
    line: int  # 1-based, within ``file``
    seq: int | None  # the seq the line claims, when it could be read
    reason: str

    def __str__(self) -> str:
        which = f"entry seq {self.seq}" if self.seq is not None else "entry"
        return f"{which} at {self.file} line {self.line}: {self.reason}"


@dataclass(frozen=True, slots=True)
class TornTail:
    file: str
    line: int
    bytes: int


@dataclass(slots=True)
class VerifyResult:
    ok: bool = True
    count: int = 0
    files: list[str] = field(default_factory=list)
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    # True when the first remaining entry is not seq 1: older files were archived (or deleted) away.
    starts_midway: bool = False
    first_prev: str | None = None
    broken: BrokenEntry | None = None
    torn_tail: TornTail | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "count": self.count,
            "files": self.files,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash,
            "starts_midway": self.starts_midway,
            "first_prev": self.first_prev,
            "broken": None
            if self.broken is None
            else {
                "file": self.broken.file,
                "line": self.broken.line,
                "seq": self.broken.seq,
                "reason": self.broken.reason,
            },
            "torn_tail": None
            if self.torn_tail is None
            else {"file": self.torn_tail.file, "line": self.torn_tail.line, "bytes": self.torn_tail.bytes},
        }


def verify(directory: Path) -> VerifyResult:
    """Check the whole chain: every entry's hash, seq order and link; stops at the first broken entry."""
    result = VerifyResult()
    files = trail_files(directory)
    result.files = [p.name for _, p in files]
    prev_hash: str | None = None
    prev_seq: int | None = None
    for n, (_, path) in enumerate(files):
        last_file = n == len(files) - 1
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.endswith(b"\n"):
                    if last_file:
                        result.torn_tail = TornTail(path.name, lineno, len(raw))
                        break
                    result.broken = BrokenEntry(
                        path.name, lineno, None, "incomplete line in a file that is not the last"
                    )
                    break
                broken = _check(raw[:-1], prev_hash, prev_seq, path.name, lineno)
                if isinstance(broken, BrokenEntry):
                    result.broken = broken
                    break
                entry = broken
                if prev_hash is None:
                    result.first_seq = entry.seq
                    result.first_prev = entry.prev
                    result.starts_midway = entry.seq != 1
                prev_hash, prev_seq = entry.hash, entry.seq
                result.count += 1
        if result.broken is not None:
            break
    result.ok = result.broken is None
    result.last_seq, result.last_hash = prev_seq, prev_hash
    return result


def _check(  # noqa: PLR0911 - one return per rule, each with its reason
    line: bytes, prev_hash: str | None, prev_seq: int | None, name: str, lineno: int
) -> AuditEntry | BrokenEntry:
    try:
        entry = AuditEntry.parse(line)
    except ValueError as exc:
        return BrokenEntry(name, lineno, claimed_seq(line), str(exc))
    if prev_hash is None:
        if entry.seq == 1 and entry.prev != GENESIS:
            return BrokenEntry(name, lineno, entry.seq, "the first entry (seq 1) must have the genesis prev hash")
        if entry.seq != 1 and entry.prev == GENESIS:
            return BrokenEntry(name, lineno, entry.seq, f"seq {entry.seq} has the genesis prev hash")
        if entry.seq < 1:
            return BrokenEntry(name, lineno, entry.seq, "seq must be >= 1")
        return entry
    if entry.seq != (prev_seq or 0) + 1:
        return BrokenEntry(name, lineno, entry.seq, f"seq {entry.seq} follows seq {prev_seq} (an entry is missing)")
    if entry.prev != prev_hash:
        return BrokenEntry(
            name, lineno, entry.seq, f"its prev hash does not match the hash of seq {prev_seq} (the chain is broken)"
        )
    return entry
