"""The power-loss harness for tests: mount lazyfs.py, let a process write through it, cut the power, read what is left.

    with PowerLossFS(mount, seed_dir=previous, mode="random", seed=7) as fs:  # previous: the disk at boot
        writer = subprocess.Popen([... str(mount) ...])
        ...
        report = fs.cut(writer, out)  # kill -9 and reap the writer, then the power goes

``cut`` first SIGKILLs and reaps the victim (so every request it made has been answered and none can follow),
then has the daemon write the durable state into ``out`` (``drop``: everything unsynced lost; ``random``:
random prefixes of the unsynced changes, see lazyfs.py), unmount and exit. On any exception, and on leaving
the ``with`` block, the mount is lazily unmounted (``fusermount3 -u -z``) and the daemon killed: no mount is
ever left behind. The daemon's log goes to ``<mount>.log``; a model error in it fails the cut.

``arm(n)`` before the victim runs makes the power go just before its n-th fsync or fsyncdir (``wait_frozen`` tells
when): the cuts that matter, with unsynced changes at stake, instead of the idle moments a timer mostly hits.

``require_fuse()``: skip when FUSE cannot be used here (no /dev/fuse, fusermount3, libfuse3 or mfusepy),
with the reason; with ``CI=true`` in the environment it fails instead, so CI never skips silently.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib.util
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import pytest

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0  # only gives up waiting
CUT_TIMEOUT_S = 60.0

Mode = Literal["drop", "random"]


def fuse_missing() -> str | None:
    """Why FUSE cannot be used here, or None when it can."""
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is missing or not accessible (run as root, or in a container with --device /dev/fuse)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian package fuse3)"
    if ctypes.util.find_library("fuse3") is None:
        return "libfuse3 is not installed (Debian package libfuse3-3)"
    if importlib.util.find_spec("mfusepy") is None:
        return "the Python package mfusepy is not installed"
    return None


def fuse_available() -> bool:
    return fuse_missing() is None


def require_fuse() -> None:
    """Skip the calling test without FUSE, saying why; with CI=true, fail instead."""
    why = fuse_missing()
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"power-loss tests need FUSE and CI=true forbids skipping them: {why}")
    pytest.skip(f"power-loss tests need FUSE: {why}")


def mount_points() -> list[str]:
    """What is mounted, from /proc/self/mounts (no stat: a frozen or dead FUSE mount answers EIO or ENOTCONN)."""
    lines = Path("/proc/self/mounts").read_text().splitlines()
    return [line.split()[1].replace("\\040", " ") for line in lines]


def mounted(path: Path) -> bool:
    return str(path.absolute()) in mount_points()


def unmount(mount: Path) -> None:
    """Detach ``mount`` if something is mounted there (lazily: works even while a process holds it)."""
    if mounted(mount):
        subprocess.run(["fusermount3", "-u", "-z", str(mount)], check=False, capture_output=True)


@dataclass(frozen=True, slots=True)
class CutReport:
    files: int  # written by the cut
    dirs: int
    ops: int  # fsync and fsyncdir calls before the power went
    unsynced_files: int  # files and directories with changes a sync had not made durable
    unsynced_dirs: int


class HarnessError(RuntimeError):
    pass


class PowerLossFS:
    """A lazyfs mount at ``mount`` (created if missing), seeded with ``seed_dir``'s tree as durable."""

    def __init__(self, mount: Path, seed_dir: Path | None = None, mode: Mode = "drop", seed: int = 0) -> None:
        self.mount = mount
        self.seed_dir = seed_dir
        self.mode: Mode = mode  # of the cut, unless cut() is told otherwise
        self.seed = seed
        self.log = mount.with_name(mount.name + ".log")
        self._proc: subprocess.Popen[bytes] | None = None
        self._pending = b""
        self.frozen = False  # an armed cut fired

    def __enter__(self) -> Self:
        self.mount.mkdir(parents=True, exist_ok=True)
        if mounted(self.mount):
            raise HarnessError(f"{self.mount} is already a mount point: a previous run left it; fusermount3 -u -z it")
        cmd = [sys.executable, "-m", "tests.powerloss.lazyfs", str(self.mount)]
        if self.seed_dir is not None:
            cmd += ["--seed-dir", str(self.seed_dir)]
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=REPO)
        try:
            line = self._read_line(START_TIMEOUT_S)
            if line != "ready" or not mounted(self.mount):
                raise HarnessError(f"lazyfs did not mount {self.mount}: said {line!r}; see {self.log}")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def arm(self, op: int) -> None:
        """Cut the power just before the ``op``-th fsync or fsyncdir from now (``op`` >= 1): it and every later
        operation fail with EIO; ``cut`` then writes the state of that moment (lazyfs.py: why that covers every
        crash point)."""
        self._send(f"arm {op}")
        if (line := self._read_line(START_TIMEOUT_S)) != "armed":
            raise HarnessError(f"lazyfs did not arm: said {line!r}; see {self.log}")

    def wait_frozen(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for an armed cut to fire; whether it did."""
        if not self.frozen:
            with contextlib.suppress(TimeoutError):
                self._read_line(timeout_s, until_frozen=True)  # "frozen" is the only line that comes by itself
        return self.frozen

    def cut(
        self, victim: subprocess.Popen[bytes] | None, out: Path, *, mode: Mode | None = None, seed: int | None = None
    ) -> CutReport:
        """The power goes: kill -9 ``victim`` and reap it, then write what the disk holds into ``out`` (empty or
        missing) and unmount. ``mode`` and ``seed`` default to the constructor's."""
        mode = self.mode if mode is None else mode
        seed = self.seed if seed is None else seed
        try:
            if victim is not None:
                if victim.poll() is None:
                    victim.send_signal(signal.SIGKILL)
                victim.wait()
            self._send(f"cut {mode} {seed} {out}")
            line = self._read_line(CUT_TIMEOUT_S)
            kind, _, rest = line.partition(" ")
            if kind != "done":
                raise HarnessError(f"lazyfs could not cut the power: {line!r}; see {self.log}")
            files, dirs, errors, ops, unsynced_files, unsynced_dirs = (int(x) for x in rest.split())
            if errors:
                raise HarnessError(f"lazyfs hit {errors} internal error(s) before the cut; see {self.log}")
            self._running().wait(CUT_TIMEOUT_S)
            return CutReport(files, dirs, ops, unsynced_files, unsynced_dirs)
        finally:
            self.close()

    def close(self) -> None:
        """Unmount (lazily) and stop the daemon, whatever state it is in."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            unmount(self.mount)  # the daemon's loop ends when its mount goes
            try:
                proc.wait(1)  # a lazily unmounted file system still held open keeps it serving: end it
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None and proc.stdin is not None:
            proc.stdin.close()
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        unmount(self.mount)  # a daemon killed mid-way leaves a dead mount ("transport endpoint not connected")

    def _running(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            raise HarnessError(f"lazyfs is not running at {self.mount}; see {self.log}")
        return self._proc

    def _send(self, command: str) -> None:
        proc = self._running()
        assert proc.stdin is not None
        proc.stdin.write(command.encode() + b"\n")
        proc.stdin.flush()

    def _read_line(self, timeout_s: float, *, until_frozen: bool = False) -> str:
        """The daemon's next line, "frozen" noted (and passed over, unless ``until_frozen``); TimeoutError after
        ``timeout_s``."""
        proc = self._running()
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while True:
            while b"\n" not in self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"lazyfs said nothing within {timeout_s} s; see {self.log}")
                if select.select([fd], [], [], left)[0]:
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        raise HarnessError(f"lazyfs exited ({proc.wait()}); see {self.log}")
                    self._pending += chunk
            line, _, self._pending = self._pending.partition(b"\n")
            if line != b"frozen":
                return line.decode()
            self.frozen = True
            if until_frozen:
                return "frozen"


@dataclass(frozen=True, slots=True)
class Cycle:
    """One boot-write-cut cycle of a writer process (``power_cycle``)."""

    out: Path  # what the cut left: the next boot's disk
    log: Path  # the writer's stdout (its reports of what is durable); stderr beside it as .err
    report: CutReport
    exited: int | None  # the writer's exit status if it ended before the cut (only an armed cut may do that)
    frozen: bool  # an armed cut fired


def power_cycle(
    fs: PowerLossFS,
    cmd: list[str],
    *,
    out: Path,
    log: Path,
    arm: int | None,
    ready: str | None,
    pause_s: float,
) -> Cycle:
    """Run ``cmd`` (its stdout to ``log``) on the mounted ``fs`` and cut the power: just before the ``arm``-th sync
    if given (waiting up to ``pause_s`` for it), else after ``pause_s``, counted from the first line starting with
    ``ready`` when given (so cuts can land after start-up), else from the start. A writer that ends by itself
    before an unarmed cut fails the test with its stderr."""
    if arm is not None:
        fs.arm(arm)
    with log.open("w") as stdout, log.with_suffix(".err").open("w") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, cwd=REPO)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S * 2  # only gives up waiting
        while ready is not None and not log.read_text().startswith(ready) and proc.poll() is None and not fs.frozen:
            assert time.monotonic() < deadline, f"the writer did not say {ready!r} within {START_TIMEOUT_S * 2} s"
            fs.wait_frozen(0.002) if arm is not None else time.sleep(0.002)
        fs.wait_frozen(pause_s) if arm is not None else time.sleep(pause_s)
        exited = proc.poll()
        report = fs.cut(proc, out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if exited is not None and not fs.frozen:
        pytest.fail(f"the writer exited by itself ({exited}): {log.with_suffix('.err').read_text()[-2000:]}")
    return Cycle(out, log, report, exited, fs.frozen)
