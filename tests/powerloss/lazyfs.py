"""LazyFS in Python: a FUSE file system that keeps, when the power goes, only what was synced (lazyfs_model.py).

Run as ``python -m tests.powerloss.lazyfs MOUNT [--seed-dir DIR]`` (``harness.PowerLossFS`` does it): FUSE in the
main thread, single-threaded; a control thread reads commands from stdin. Modelled on LazyFS (jepsen-io/lazyfs).

Persistence model (what POSIX and Linux promise, no more):
- Every inode has a *current* state, which readers see, and a *durable* state, which a power cut leaves. A file's
  durable content changes only at fsync/fdatasync of that file; a directory's durable entries ({name: inode})
  only at fsync of that directory (an ``O_DIRECTORY`` descriptor: FUSE ``fsyncdir``): durable := current.
  Nothing else makes anything durable: not close, flush or release, nor a sync of another file or directory.
- So a name created, renamed, unlinked or made by mkdir is durable only once its directory is fsynced (a rename
  across directories is two changes, one per directory): a new file whose data was fsynced in a directory that
  was not is gone after a cut; an unlinked file comes back, with its durable content.
- Between syncs each inode keeps its changes in order: writes (offset, bytes) and truncates for a file; entry
  changes (a name set, a name removed, a rename within the directory as one change) for a directory. Replayed
  on the durable state they give the current one.
- ``cut MODE SEED OUT`` (stdin): the power goes. Every later operation fails with EIO; what the disk holds is
  written into OUT as plain files and directories, walked from the root through durable entries (a file gets
  its inode's durable content, maybe empty); then unmount and exit. ``drop``: every unsynced change is lost.
  ``random``: per file a random prefix of its unsynced changes is kept, the last kept write maybe torn at a
  random byte; per directory a random prefix of its unsynced entry changes. Both are states a disk may hold.
- ``arm N`` (stdin): the power goes just before the N-th fsync or fsyncdir from now: it and every later operation
  fail with EIO, so the writer can claim nothing after it; the next ``cut`` writes the state of that moment.
  Between two syncs the writer can claim nothing new, and whatever state the disk may hold at any moment in
  between is one ``random`` mode may leave just before the second: so cutting just before syncs covers every
  crash point. Timed cuts rarely land between a write and its fsync; armed ones always do.
- ``--seed-dir``: the tree in it is loaded at mount as already durable (the previous cut's disk).
- Memory: content is held in memory, at most ``CAPACITY`` bytes (current and durable content and unsynced
  writes; ENOSPC beyond); an inode no name, durable name, recorded change or open handle refers to is freed.
  Hard links, symbolic links and device nodes are not modelled (their operations are not implemented).

stdout, one line each: ``ready`` once mounted; ``armed``; ``frozen`` when an armed cut fires; after ``cut``:
``done <files> <dirs> <errors> <ops> <unsynced files> <unsynced dirs>`` (errors: unexpected exceptions in the
model; the unsynced counts are taken at the cut) or ``error <text>``. End of stdin (the test process is gone):
unmount and exit, so no mount is left behind.
"""

from __future__ import annotations

import argparse
import errno
import functools
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import mfusepy as fuse  # type: ignore[import-untyped]

from tests.powerloss.lazyfs_model import BLOCK, CAPACITY, Change, Entry, Model, fs_error

_log = logging.getLogger("lazyfs")

STAT_KEYS: tuple[str, ...] = ("st_mode", "st_ino", "st_nlink", "st_size", "st_uid", "st_gid", "st_blocks")
STAT_KEYS += ("st_blksize", "st_atime", "st_mtime", "st_ctime")
STATFS_KEYS: tuple[str, ...] = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree")
STATFS_KEYS += ("f_favail", "f_namemax")
# hard_remove: an unlinked open file stays ours (no .fuse_hidden rename); use_ino: st_ino is ours. No attribute or
# entry caching in the kernel: every stat and lookup asks the model (a cached size was seen to lag behind writes).
FUSE_OPTIONS = {"hard_remove": True, "use_ino": True, "attr_timeout": 0, "entry_timeout": 0, "negative_timeout": 0}
# ``arm N`` cuts the power just before the N-th of these.
SYNCS = frozenset({"fsync", "fsyncdir"})


P = ParamSpec("P")
S = TypeVar("S", bound=Model)
R = TypeVar("R")


def _op(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """A FUSE operation: under the model's lock, refused once the power is cut, unexpected errors counted."""

    syncs = method.__name__ in SYNCS

    @functools.wraps(method)
    def run(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with self.mutex:
            if syncs and not self.frozen:
                self.ops += 1
                if self.ops == self.freeze_at:  # the power goes just before this operation
                    self.frozen = True
                    _say("frozen")
            if self.frozen:
                raise fuse.FuseOSError(errno.EIO)
            try:
                return method(self, *args, **kwargs)
            except OSError:
                raise
            except Exception:
                self.errors += 1
                _log.exception("lazyfs: %s%r failed", method.__name__, args)
                raise

    return run


class LazyFS(Model):
    """The FUSE operations (mfusepy) on the model; paths are resolved through the current entries at each call."""

    use_ns = True  # times in nanoseconds (mfusepy)

    def __init__(self) -> None:
        super().__init__()
        self.on_ready: Callable[[], None] = lambda: None

    def init(self, path: str) -> None:
        self.on_ready()

    @_op
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        node = self.lookup(path, fh)
        size = BLOCK if node.is_dir else len(node.data)
        values = (node.mode, node.ino, node.nlink, size, node.uid, node.gid, (size + 511) // 512, BLOCK, *node.times_ns)
        return dict(zip(STAT_KEYS, values, strict=True))

    @_op
    def access(self, path: str, amode: int) -> int:
        self.lookup(path)
        return 0

    @_op
    def opendir(self, path: str) -> int:
        node = self.lookup(path)
        if not node.is_dir:
            raise fs_error(errno.ENOTDIR)
        return self.open_handle(node)

    @_op
    def readdir(self, path: str | None, fh: int) -> list[tuple[str, dict[str, int], int]]:
        # With use_ino the kernel passes our inode numbers on; glibc skips an entry numbered 0.
        node = self.lookup(path, fh)
        listing = [(".", node), ("..", node), *((name, self.inodes[ino]) for name, ino in node.entries.items())]
        return [(name, {"st_ino": n.ino, "st_mode": n.mode}, 0) for name, n in listing]

    def releasedir(self, path: str | None, fh: int) -> int:
        with self.mutex:
            self.handles.pop(fh, None)
            self.garbage = True
            self.collect()
        return 0

    @_op
    def mkdir(self, path: str, mode: int) -> int:
        parent, name = self.parent_of(path)
        if name in parent.entries:
            raise fs_error(errno.EEXIST)
        node = self.new_inode(stat.S_IFDIR | stat.S_IMODE(mode))
        node.nlink = 2
        self.add_entry(parent, name, node)
        return 0

    @_op
    def rmdir(self, path: str) -> int:
        parent, name = self.parent_of(path)
        node = self.lookup(path)
        if not node.is_dir:
            raise fs_error(errno.ENOTDIR)
        if node.entries:
            raise fs_error(errno.ENOTEMPTY)
        self.remove_entry(parent, name, node)
        self.collect()
        return 0

    @_op
    def create(self, path: str, mode: int, flags: int = 0) -> int:
        parent, name = self.parent_of(path)
        if name in parent.entries:
            raise fs_error(errno.EEXIST)
        node = self.new_inode(stat.S_IFREG | stat.S_IMODE(mode))
        self.add_entry(parent, name, node)
        return self.open_handle(node)

    @_op
    def open(self, path: str, flags: int) -> int:
        node = self.lookup(path)
        if flags & os.O_TRUNC and not node.is_dir and node.data:
            self.change(node, Change(0, None))
        return self.open_handle(node)

    @_op
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        node = self.lookup(path, fh)
        node.times_ns[0] = time.time_ns()
        return bytes(node.data[offset : offset + size])

    @_op
    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        self.change(self.lookup(path, fh), Change(offset, bytes(data)))
        return len(data)

    @_op
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        node = self.lookup(path, fh)
        if node.is_dir:
            raise fs_error(errno.EISDIR)
        self.change(node, Change(length, None))
        return 0

    def flush(self, path: str | None, fh: int) -> int:
        return 0  # close() makes nothing durable

    def release(self, path: str | None, fh: int) -> int:
        with self.mutex:
            self.handles.pop(fh, None)
            self.garbage = True
            self.collect()
        return 0

    @_op
    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        self.sync_file(self.lookup(path, fh))
        return 0

    @_op
    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        self.sync_dir(self.lookup(path, fh))
        return 0

    @_op
    def unlink(self, path: str) -> int:
        parent, name = self.parent_of(path)
        node = self.lookup(path)
        if node.is_dir:
            raise fs_error(errno.EISDIR)
        self.remove_entry(parent, name, node)
        self.collect()
        return 0

    @_op
    def rename(self, old: str, new: str) -> int:
        src, old_name = self.parent_of(old)
        dst, new_name = self.parent_of(new)
        node = self.lookup(old)
        target_ino = dst.entries.get(new_name)
        if target_ino == node.ino:
            return 0
        if target_ino is not None:
            target = self.inodes[target_ino]
            if target.is_dir != node.is_dir:
                raise fs_error(errno.EISDIR if target.is_dir else errno.ENOTDIR)
            if target.is_dir and target.entries:
                raise fs_error(errno.ENOTEMPTY)
            self.unref(dst, target)
        del src.entries[old_name]
        dst.entries[new_name] = node.ino
        if src is dst:  # one change: a journal commits a rename within a directory whole
            src.entry_changes.append(Entry(old_name, new_name, node.ino))
        else:
            src.entry_changes.append(Entry(old_name, None, 0))
            dst.entry_changes.append(Entry(None, new_name, node.ino))
            if node.is_dir:
                src.nlink -= 1
                dst.nlink += 1
        src.touch()
        dst.touch()
        node.times_ns[2] = time.time_ns()
        self.collect()
        return 0

    @_op
    def chmod(self, path: str | None, mode: int) -> int:
        node = self.lookup(path)
        node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(mode)
        node.times_ns[2] = time.time_ns()
        return 0

    @_op
    def chown(self, path: str | None, uid: int, gid: int) -> int:
        node = self.lookup(path)
        unchanged = (-1, 0xFFFFFFFF)
        node.uid = node.uid if uid in unchanged else uid
        node.gid = node.gid if gid in unchanged else gid
        return 0

    @_op
    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        node = self.lookup(path)
        now = time.time_ns()
        node.times_ns[:2] = list(times) if times is not None else [now, now]
        node.times_ns[2] = now
        return 0

    @_op
    def statfs(self, path: str) -> dict[str, int]:
        free, files = (CAPACITY - self.used) // BLOCK, (1 << 20) - len(self.inodes)
        values = (BLOCK, BLOCK, CAPACITY // BLOCK, free, free, 1 << 20, files, files, 255)
        return dict(zip(STATFS_KEYS, values, strict=True))


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _unmount(mount: str) -> None:
    subprocess.run(["fusermount3", "-u", "-z", mount], check=False, capture_output=True)


def _control(fs: LazyFS, mount: str, loop_done: threading.Event) -> None:
    for line in sys.stdin:
        parts = line.rstrip("\n").split(" ", 3)
        if parts[0] == "arm" and len(parts) == 2:
            with fs.mutex:
                fs.freeze_at = fs.ops + int(parts[1])
            _say("armed")
            continue
        if parts[0] == "cut" and len(parts) == 4:
            try:
                report = fs.cut(parts[1], int(parts[2]), Path(parts[3]))
            except Exception as exc:
                _log.exception("lazyfs: the cut failed")
                _say(f"error {exc!r}")
            else:
                _say("done " + " ".join(map(str, report)))
            break
        _say(f"error unknown command {line.strip()!r}")
    _unmount(mount)
    if not loop_done.wait(10):
        os._exit(0)  # something still holds the mount: ending the process ends the connection


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("mount")
    parser.add_argument("--seed-dir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    fs = LazyFS()
    if args.seed_dir is not None:
        fs.load(args.seed_dir)
    fs.on_ready = lambda: _say("ready")
    loop_done = threading.Event()
    threading.Thread(target=_control, args=(fs, args.mount, loop_done), name="lazyfs:control", daemon=True).start()
    try:
        fuse.FUSE(fs, args.mount, foreground=True, nothreads=True, fsname="lazyfs", **FUSE_OPTIONS)
    finally:
        loop_done.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
