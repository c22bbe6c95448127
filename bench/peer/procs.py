"""Processes of a peer run: start one pinned to a core, read its CPU and RSS with its descendants, stop it.

- ``spawn(args, cpu, log, env)``: ``taskset -c CPU args...`` (taskset execs the command, so the pid is the
  program's), stdout and stderr appended to ``log``, in its own session so a stop reaches nothing else.
- ``tree_cpu_seconds(pid)``: user + system time of the process and every live descendant, plus what its
  reaped children used (cutime + cstime); ``tree_rss_mb(pid)``: VmRSS summed over the same processes.
  Linux only (/proc). A process that is gone counts as 0.
- ``stop(proc, sig)``: ``sig`` to the process, up to 10 s to exit, then SIGKILL; never signals anything
  but the process it was given (its pid, not a name).
- ``wait_line(log, word, timeout_s, proc)``: until ``word`` appears in the log; fails early when the
  process exits, with the log's tail in the message.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_STOP_TIMEOUT_S = 10.0


def spawn(
    args: Sequence[str], cpu: int, log: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            ["taskset", "-c", str(cpu), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (children, grandchildren ...), from the parent pids in /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_cpu_seconds(pid: int) -> float:
    total = 0
    root = _stat(pid)
    if root is None:
        return 0.0
    total += int(root[11]) + int(root[12]) + int(root[13]) + int(root[14])  # utime stime cutime cstime
    for child in descendants(pid):
        if (fields := _stat(child)) is not None:
            total += int(fields[11]) + int(fields[12])
    return total / _CLK_TCK


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def tree_rss_mb(pid: int) -> float:
    return _rss_mb(pid) + sum(_rss_mb(child) for child in descendants(pid))


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_line(log: Path, word: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        if word in text:
            return
        if proc.poll() is not None or loop.time() > deadline:
            state = f"exited with {proc.returncode}" if proc.poll() is not None else f"not ready in {timeout_s} s"
            msg = f"{proc.args!r} {state}; last lines of {log}:\n{text[-3000:]}"
            raise RuntimeError(msg)
        await asyncio.sleep(0.1)
