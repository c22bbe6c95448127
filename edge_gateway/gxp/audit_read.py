"""Reading a stored audit trail directory, oldest entry first, without the writer's lock.

``read_entries`` reads lazily, file by file, and may run while a writer appends (it sees whatever lines
were complete when it reached them). An incomplete last line is not an entry and is skipped; a complete
line that is not a valid entry raises ``AuditError`` naming file and line. Hash links are not checked
here: that is ``audit_verify.verify``'s job.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edge_gateway.gxp.audit_format import AuditEntry, AuditError, claimed_seq, trail_files

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def read_entries(
    directory: Path, since: datetime | None = None, *, after_seq: int | None = None
) -> Iterator[AuditEntry]:
    since_ns = None if since is None else (since - _EPOCH) // timedelta(microseconds=1) * 1000
    files = trail_files(directory)
    start = 0
    if after_seq is not None:
        # Skip whole files whose successor starts at or before the first wanted seq.
        for i in range(1, len(files)):
            first = _first_seq(files[i][1])
            if first is not None and first <= after_seq + 1:
                start = i
    for _, path in files[start:]:
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.endswith(b"\n"):
                    break
                try:
                    entry = AuditEntry.parse(raw[:-1])
                except ValueError as exc:
                    msg = f"audit trail {path.name} line {lineno}: {exc}; run `edge-gateway audit verify`"
                    raise AuditError(msg) from exc
                if after_seq is not None and entry.seq <= after_seq:
                    continue
                if since_ns is not None and entry.time_ns < since_ns:
                    continue
                yield entry


def _first_seq(path: Path) -> int | None:
    with path.open("rb") as f:
        line = f.readline()
    return claimed_seq(line) if line.endswith(b"\n") else None
