"""Tests of the power-loss model itself (lazyfs.py through harness.py): it loses what a power cut may lose.

Each test writes through a real FUSE mount, cuts the power and reads the directory the cut left:
- a file's bytes survive only with an fsync of that file (fdatasync too); close does not count, and neither
  does an fsync of another file;
- a name (create, rename, unlink, mkdir) survives only with an fsync of its directory: a new file whose data
  was fsynced but whose directory was not is gone; a rename without it leaves the old name and content; an
  unlinked file comes back;
- the seed directory is durable from the start; a victim process is killed before the power goes;
- ``random`` mode keeps prefixes only: of each file's unsynced writes (the last maybe torn) and of each
  directory's unsynced entry changes, never a later change without every earlier one;
- an armed cut freezes the disk just before the chosen sync (it and every later operation fail with EIO);
- the harness leaves no mount behind when the test fails inside it, and without FUSE a CI run fails, not skips.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.powerloss import harness
from tests.powerloss.harness import PowerLossFS, fuse_available

pytestmark = pytest.mark.usefixtures("needs_fuse")


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, *, sync: bool, datasync: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        if sync:
            (os.fdatasync if datasync else os.fsync)(fd)
    finally:
        os.close(fd)


def tree(directory: Path) -> dict[str, bytes | None]:
    """Every path under ``directory``: file content, or None for a directory."""
    found: dict[str, bytes | None] = {}
    for path in sorted(directory.rglob("*")):
        found[str(path.relative_to(directory))] = None if path.is_dir() else path.read_bytes()
    return found


def power_cut(tmp_path: Path, work: Callable[[Path], None], seed_dir: Path | None = None) -> dict[str, bytes | None]:
    """Mount (seeded), run ``work`` on the mount in this process, cut in drop mode; what the disk holds."""
    out = tmp_path / "out"
    with PowerLossFS(tmp_path / "mnt", seed_dir) as fs:
        work(fs.mount)
        fs.cut(None, out)
    return tree(out)


def test_fuse_is_available_here() -> None:
    assert fuse_available()


def test_file_data_survives_only_with_an_fsync_of_that_file(tmp_path: Path) -> None:
    def work(m: Path) -> None:
        write_file(m / "fsynced", b"kept", sync=True)
        write_file(m / "fdatasynced", b"kept too", sync=True, datasync=True)
        write_file(m / "closed", b"lost", sync=False)
        with (m / "fsynced").open("ab") as f:
            f.write(b" and more, never synced")
        fsync_path(m)  # all four names are durable; only synced bytes are

    assert power_cut(tmp_path, work) == {"fsynced": b"kept", "fdatasynced": b"kept too", "closed": b""}


def test_a_new_file_needs_an_fsync_of_its_directory(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    (seed / "d").mkdir(parents=True)
    (seed / "old").write_bytes(b"from the seed")

    def work(m: Path) -> None:
        write_file(m / "no-dirsync", b"data synced", sync=True)
        write_file(m / "d" / "with-dirsync", b"data synced", sync=True)
        fsync_path(m / "d")
        (m / "newdir").mkdir()  # never made durable: neither it nor what is in it survives
        write_file(m / "newdir" / "f", b"x", sync=True)
        fsync_path(m / "newdir")

    assert power_cut(tmp_path, work, seed) == {"d": None, "d/with-dirsync": b"data synced", "old": b"from the seed"}


def test_rename_and_unlink_need_an_fsync_of_the_directory(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    (seed / "a").mkdir(parents=True)
    (seed / "b").mkdir()
    for name in ("target", "renamed", "unlinked", "a/moved"):
        (seed / name).write_bytes(f"old {name}".encode())

    def work(m: Path) -> None:
        write_file(m / "target.tmp", b"new target", sync=True)
        (m / "target.tmp").replace(m / "target")  # write-temp, fsync, rename... but no fsync of the directory
        (m / "renamed").rename(m / "renamed-2")
        (m / "unlinked").unlink()
        (m / "a" / "moved").rename(m / "b" / "moved")
        fsync_path(m / "b")  # the new name in b is durable; its removal from a is not

    assert power_cut(tmp_path, work, seed) == {
        "a": None,
        "a/moved": b"old a/moved",
        "b": None,
        "b/moved": b"old a/moved",
        "renamed": b"old renamed",
        "target": b"old target",
        "unlinked": b"old unlinked",
    }


def test_rename_with_an_fsync_of_the_directory_is_durable(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "target").write_bytes(b"old")
    (seed / "gone").write_bytes(b"gone")

    def work(m: Path) -> None:
        write_file(m / "target.tmp", b"new", sync=True)
        (m / "target.tmp").replace(m / "target")
        (m / "gone").unlink()
        fsync_path(m)

    assert power_cut(tmp_path, work, seed) == {"target": b"new"}


VICTIM = textwrap.dedent(
    """
    import os, sys, time
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    dfd = os.open(os.path.dirname(sys.argv[1]), os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    for i in range(1, 1 << 30):
        os.write(fd, b"%d\\n" % i)
        if i % 100 == 0:
            os.fdatasync(fd)
            print(i, flush=True)
    """
)


def test_a_killed_writer_keeps_what_it_synced_and_nothing_after(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with (
        PowerLossFS(tmp_path / "mnt") as fs,
        subprocess.Popen([sys.executable, "-c", VICTIM, str(fs.mount / "log")], stdout=subprocess.PIPE) as victim,
    ):
        assert victim.stdout is not None
        synced = [int(victim.stdout.readline()) for _ in range(5)][-1]
        fs.cut(victim, out)  # kills it mid-loop, then cuts
        assert victim.returncode == -9
        synced = max([synced, *(int(x) for x in victim.stdout.read().split())])
    lines = (out / "log").read_bytes().splitlines()
    assert len(lines) % 100 == 0, "only whole synced batches survive a drop-mode cut"
    assert lines == [b"%d" % i for i in range(1, len(lines) + 1)]
    assert len(lines) >= synced


# ---- random mode: prefixes only -------------------------------------------------------------------------------

CHUNKS = 12


def chunk(i: int) -> bytes:
    return bytes([65 + i]) * (100 + 37 * i)


def states(writes: list[tuple[int, bytes]], base: bytes) -> set[bytes]:
    """Every content a prefix of ``writes`` may leave on ``base``, the last kept write torn anywhere."""
    found, buf = {base}, bytearray(base)
    for offset, data in writes:
        for torn in range(len(data) + 1):
            b = bytearray(buf)
            b[offset : offset + torn] = data[:torn]
            found.add(bytes(b))
        buf[offset : offset + len(data)] = data
    return found


@pytest.mark.parametrize("seed", range(6))
def test_random_mode_keeps_prefixes_of_unsynced_changes_only(tmp_path: Path, seed: int) -> None:
    writes: list[tuple[int, bytes]] = []
    offset = 0
    for i in range(CHUNKS):  # appends, then overwrites inside what was written
        writes.append((offset, chunk(i)))
        offset += len(chunk(i))
    writes += [(50, b"x" * 300), (0, b"y" * 10), (offset - 5, b"z" * 20)]
    out = tmp_path / "out"
    with PowerLossFS(tmp_path / "mnt", mode="random", seed=seed) as fs:
        m = fs.mount
        (m / "d").mkdir()
        write_file(m / "f", b"base", sync=True)
        fsync_path(m / "d")
        fsync_path(m)
        fd = os.open(m / "f", os.O_WRONLY)
        for at, data in writes:
            os.pwrite(fd, data, at)
        os.close(fd)
        d = m / "d"
        model: set[str] = set()
        allowed = [frozenset(model)]  # the entry sets a prefix of d's changes leaves
        for i in range(CHUNKS):  # entry changes in d, in order: creates, some renames and unlinks
            write_file(d / f"n{i:02}", b"n", sync=True)
            model.add(f"n{i:02}")
            allowed.append(frozenset(model))
            if i % 3 == 2 and f"n{i - 1:02}" in model:
                (d / f"n{i - 1:02}").rename(d / f"r{i - 1:02}")
                model = (model - {f"n{i - 1:02}"}) | {f"r{i - 1:02}"}
                allowed.append(frozenset(model))
            if i % 4 == 3:
                (d / f"n{i:02}").unlink()
                model.remove(f"n{i:02}")
                allowed.append(frozenset(model))
        fs.cut(None, out)
    assert (out / "f").read_bytes() in states(writes, b"base")
    assert frozenset(p.name for p in (out / "d").iterdir()) in allowed


def test_random_mode_over_many_seeds_keeps_only_prefixes_and_varies(tmp_path: Path) -> None:
    """The same check on the model in this process, over many seeds: every state is allowed; many occur."""
    from tests.powerloss.lazyfs import LazyFS  # noqa: PLC0415 - needs libfuse, present when FUSE is

    writes = [(i * 10, bytes([65 + i]) * 10) for i in range(8)]
    seen: set[bytes] = set()
    for seed in range(200):
        fs = LazyFS()
        fs.mkdir("/d", 0o755)
        fh = fs.create("/d/f", 0o600, 0)
        fs.fsyncdir("/d", 0, fs.opendir("/d"))
        fs.fsyncdir("/", 0, fs.opendir("/"))
        for at, data in writes:
            fs.write(None, data, at, fh)
        out = tmp_path / f"out-{seed}"
        fs.cut("random", seed, out)
        content = (out / "d" / "f").read_bytes()
        assert content in states(writes, b""), f"seed {seed}: {content!r} is no prefix"
        seen.add(content)
    assert len(seen) > 20, "random mode hardly varies what it keeps"


def test_an_armed_cut_freezes_the_disk_just_before_a_sync(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with PowerLossFS(tmp_path / "mnt") as fs:
        m = fs.mount
        write_file(m / "first", b"synced", sync=True)  # sync 1
        fs.arm(2)  # the power goes before the 2nd sync from now
        write_file(m / "second", b"synced too", sync=True)  # sync 1 from now
        with pytest.raises(OSError, match="Input/output error"):
            fsync_path(m)  # sync 2: refused, as is everything after it
        assert fs.wait_frozen(10)
        with pytest.raises(OSError, match="Input/output error"):
            write_file(m / "third", b"never", sync=False)
        report = fs.cut(None, out)
    assert report.unsynced_dirs == 1  # the root's three new names, none synced
    assert tree(out) == {}


def test_no_mount_is_left_behind_when_the_test_fails_inside(tmp_path: Path) -> None:
    mount = tmp_path / "mnt"
    held: list[int] = []

    def fail_inside() -> None:
        with PowerLossFS(mount) as fs:
            held.append(os.open(fs.mount / "held", os.O_WRONLY | os.O_CREAT, 0o600))  # needs a lazy unmount
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert not harness.mounted(mount)
    with contextlib.suppress(OSError):  # the file system is gone: ENOTCONN
        os.close(held[0])


def test_without_fuse_a_ci_run_fails_instead_of_skipping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "fuse_missing", lambda: "no /dev/fuse here")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true forbids skipping them: no /dev/fuse here"):
        harness.require_fuse()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="need FUSE: no /dev/fuse here"):
        harness.require_fuse()
