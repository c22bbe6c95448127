"""Fixtures of the power-loss tests: ``needs_fuse`` skips (or, with CI=true, fails) without FUSE, and fails a test
that leaves a mount behind under its temporary directory (after unmounting it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.powerloss.harness import mount_points, require_fuse, unmount


def _mounts_under(directory: Path) -> list[Path]:
    prefix = str(directory.absolute())
    return [Path(p) for p in mount_points() if p == prefix or p.startswith(prefix + "/")]


@pytest.fixture
def needs_fuse(tmp_path: Path) -> Iterator[None]:
    require_fuse()
    yield
    left = _mounts_under(tmp_path)
    for mount in left:
        unmount(mount)
    assert not left, f"the test left mounts behind (now unmounted): {left}"
