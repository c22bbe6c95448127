"""What the benchmarks share: process figures from /proc, a scratch directory, the results file, the table.

- ``cpu_seconds(pid)``: user + system CPU time of a process (all its threads) from ``/proc/<pid>/stat``;
  ``None`` (a process that is not running) counts as 0. ``rss_mb(pid)``: resident set size from
  ``/proc/<pid>/status`` (``"self"`` by default), ``default`` when the kernel reports none. Linux only.
- ``scratch_dir(name, parent)``: a temporary ``bench-<name>-*`` directory, removed afterwards; ``parent``
  (``--dir``) is created first when given, else the system's temporary directory is used.
- ``write_results(name, result)``: ``bench/results/<name>.json`` relative to the working directory (``make``
  runs from the project root), replaced whole. The figures, keys and file format are each benchmark's own:
  the ``indent``, trailing ``end`` and ``directory`` options exist so that no benchmark's file changes.
- ``print_table(rows)``: one ``name value`` line per row, names left-aligned to ``width`` (default: the
  longest name) and ``sep`` between the columns; values are printed as the caller formatted them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path("bench/results")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime


def rss_mb(pid: int | str = "self", *, default: float = 0.0) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return default


@contextmanager
def scratch_dir(name: str, parent: Path | None = None) -> Iterator[Path]:
    if parent:
        parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-", dir=parent) as tmp:
        yield Path(tmp)


def write_results(
    name: str, result: Mapping[str, object], *, directory: Path = RESULTS, indent: int = 1, end: str = ""
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(result, indent=indent) + end)
    return path


def print_table(rows: Iterable[tuple[str, str]], *, width: int | None = None, sep: str = " ") -> None:
    listed: Sequence[tuple[str, str]] = list(rows)
    if width is None:
        width = max((len(name) for name, _ in listed), default=0)
    for name, value in listed:
        print(f"{name:<{width}}{sep}{value}")
