"""Fixtures of the fault tests: ``volume``, a small real file system that really fills up."""

from __future__ import annotations

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
