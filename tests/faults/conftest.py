"""Fixtures of the fault tests: ``volume``, a small real file system that really fills up, and ``fill`` to fill it."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def mount_tmpfs(mount_point: Path, options: str) -> None:
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)], capture_output=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root / CAP_SYS_ADMIN): {result.stderr.decode().strip()}")


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs, unmounted in teardown (lazily, in case a failing test left a file open)."""
    mount_point = tmp_path / "vol"
    mount_tmpfs(mount_point, "size=512k")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(volume: Path, name: str = "filler") -> Path:
    """Write a file until the volume has not a byte left; delete it to give the space back."""
    filler = volume / name
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (b"\0" * 65536, b"\0" * 4096, b"\0"):
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return filler
