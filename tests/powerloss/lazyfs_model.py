"""The in-memory file system model behind lazyfs.py: what is current, what is durable, what a power cut leaves.

- Every inode has a *current* state, which readers see, and a *durable* state, which a power cut leaves. A file's
  durable content changes only at ``sync_file`` (fsync/fdatasync of that file); a directory's durable entries
  ({name: inode}) only at ``sync_dir`` (fsync of that directory): durable := current. Nothing else makes anything
  durable.
- Between syncs each inode keeps its changes in order: writes (offset, bytes) and truncates for a file; entry
  changes (a name set, a name removed, a rename within the directory as one change) for a directory. Replayed on
  the durable state they give the current one. A rename across directories is two changes, one per directory.
- ``cut`` writes what the disk holds into a directory, walked from the root through durable entries: ``drop``
  keeps no unsynced change; ``random`` keeps a random prefix of each inode's unsynced changes, the last kept write
  maybe torn at a random byte.
- Memory: at most ``CAPACITY`` bytes of content (current, durable, unsynced writes; ENOSPC beyond); an inode that
  no name, durable name, recorded change or open handle refers to is freed (``collect``).
- Errors are ``OSError`` with the errno a file system returns (mfusepy passes it to the kernel). Not thread-safe
  by itself: callers hold ``mutex``.
"""

from __future__ import annotations

import errno
import os
import random
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

CAPACITY = 1 << 30  # bytes of content held in memory (statfs reports what is left)
BLOCK = 4096
MODES = ("drop", "random")


def fs_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class Change(NamedTuple):
    """One unsynced change to a file: a write, or a truncate (``data`` None, ``offset`` the new length)."""

    offset: int
    data: bytes | None


class Entry(NamedTuple):
    """One unsynced change to a directory: ``old`` removed (if any), then ``new`` -> ``ino`` set (if any)."""

    old: str | None
    new: str | None
    ino: int


def apply_change(buf: bytearray, change: Change) -> None:
    if change.data is None:
        if change.offset < len(buf):
            del buf[change.offset :]
        else:
            buf.extend(bytes(change.offset - len(buf)))
        return
    if change.offset > len(buf):
        buf.extend(bytes(change.offset - len(buf)))  # a sparse write: the hole reads as zeros
    buf[change.offset : change.offset + len(change.data)] = change.data


def apply_entry(entries: dict[str, int], entry: Entry) -> None:
    if entry.old is not None:
        entries.pop(entry.old, None)
    if entry.new is not None:
        entries[entry.new] = entry.ino


@dataclass(eq=False, slots=True)
class Inode:
    ino: int
    mode: int
    uid: int = 0
    gid: int = 0
    nlink: int = 0
    data: bytearray = field(default_factory=bytearray)  # files: current content
    durable: bytearray = field(default_factory=bytearray)  # files: content at the last fsync
    changes: list[Change] = field(default_factory=list)  # files: since the last fsync
    entries: dict[str, int] = field(default_factory=dict)  # directories: current entries
    durable_entries: dict[str, int] = field(default_factory=dict)  # directories: at the last fsync
    entry_changes: list[Entry] = field(default_factory=list)  # directories: since the last fsync
    times_ns: list[int] = field(default_factory=lambda: [time.time_ns()] * 3)  # atime, mtime, ctime

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def cost(self) -> int:
        return len(self.data) + len(self.durable) + sum(len(c.data or b"") for c in self.changes)

    def touch(self) -> None:
        now = time.time_ns()
        self.times_ns[1] = self.times_ns[2] = now


class Model:
    """The inodes, the handles open on them, and the power switch (``frozen``, ``ops``, ``freeze_at``)."""

    def __init__(self) -> None:
        self.mutex = threading.RLock()
        self.inodes: dict[int, Inode] = {}
        self.handles: dict[int, int] = {}  # file handle -> inode number
        self.next_ino = 1
        self.next_fh = 1
        self.frozen = False
        self.ops = 0  # fsync and fsyncdir calls so far
        self.freeze_at = 0  # 0: never, else the operation the power goes before (``arm``)
        self.errors = 0
        self.used = 0  # sum of Inode.cost()
        self.garbage = False  # set when an inode may have become unreferenced
        self.root = self.new_inode(stat.S_IFDIR | 0o755)
        self.root.nlink = 2

    def new_inode(self, mode: int) -> Inode:
        node = Inode(self.next_ino, mode, os.getuid(), os.getgid())
        self.inodes[node.ino] = node
        self.next_ino += 1
        return node

    def lookup(self, path: str | None, fh: int | None = None) -> Inode:
        if fh is not None and fh in self.handles:
            return self.inodes[self.handles[fh]]
        if path is None:
            raise fs_error(errno.EBADF)
        node = self.root
        for part in path.split("/"):
            if not part:
                continue
            if not node.is_dir:
                raise fs_error(errno.ENOTDIR)
            ino = node.entries.get(part)
            if ino is None:
                raise fs_error(errno.ENOENT)
            node = self.inodes[ino]
        return node

    def parent_of(self, path: str) -> tuple[Inode, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self.lookup(head or "/")
        if not parent.is_dir:
            raise fs_error(errno.ENOTDIR)
        return parent, name

    def open_handle(self, node: Inode) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = node.ino
        return fh

    def add_entry(self, parent: Inode, name: str, node: Inode) -> None:
        parent.entries[name] = node.ino
        parent.entry_changes.append(Entry(None, name, node.ino))
        if node.is_dir:
            parent.nlink += 1
        else:
            node.nlink += 1
        parent.touch()

    def remove_entry(self, parent: Inode, name: str, node: Inode) -> None:
        del parent.entries[name]
        parent.entry_changes.append(Entry(name, None, 0))
        self.unref(parent, node)
        parent.touch()

    def unref(self, parent: Inode, node: Inode) -> None:
        if node.is_dir:
            parent.nlink -= 1
            node.nlink = 0
        else:
            node.nlink -= 1
        node.times_ns[2] = time.time_ns()
        self.garbage = True

    def change(self, node: Inode, change: Change) -> None:
        before = node.cost()
        grow = max(0, change.offset + len(change.data or b"") - len(node.data))
        if self.used + grow + 2 * len(change.data or b"") > CAPACITY:
            raise fs_error(errno.ENOSPC)
        apply_change(node.data, change)
        node.changes.append(change)
        node.touch()
        self.used += node.cost() - before

    def sync_file(self, node: Inode) -> None:
        before = node.cost()
        for change in node.changes:
            apply_change(node.durable, change)
        node.changes.clear()
        self.used += node.cost() - before

    def collect(self) -> None:
        """Free the inodes nothing refers to: no current or durable name, no recorded change, no handle."""
        if not self.garbage:
            return
        self.garbage = False
        seen = {self.root.ino, *self.handles.values()}
        todo = list(seen)
        while todo:
            node = self.inodes[todo.pop()]
            refs = [*node.entries.values(), *node.durable_entries.values(), *(e.ino for e in node.entry_changes)]
            for ino in refs:
                if ino and ino not in seen:
                    seen.add(ino)
                    todo.append(ino)
        for ino in [i for i in self.inodes if i not in seen]:
            self.used -= self.inodes.pop(ino).cost()

    def load(self, seed: Path) -> None:
        """Take the tree in ``seed`` as the durable state (as if it had been written and synced long ago)."""
        self._load_dir(self.root, seed)

    def _load_dir(self, parent: Inode, directory: Path) -> None:
        for path in sorted(directory.iterdir()):
            st = path.lstat()
            if stat.S_ISDIR(st.st_mode):
                node = self.new_inode(stat.S_IFDIR | stat.S_IMODE(st.st_mode))
                node.nlink = 2
                parent.nlink += 1
                self._load_dir(node, path)
            elif stat.S_ISREG(st.st_mode):
                node = self.new_inode(stat.S_IFREG | stat.S_IMODE(st.st_mode))
                node.nlink = 1
                node.data = bytearray(path.read_bytes())
                node.durable = bytearray(node.data)
                self.used += node.cost()
            else:
                continue  # only files and directories are modelled
            node.times_ns[:] = [st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns]
            parent.entries[path.name] = parent.durable_entries[path.name] = node.ino

    def cut(self, mode: str, seed: int, out: Path) -> tuple[int, ...]:
        """The power goes: freeze, write what the disk holds into ``out``; (files, directories) written, errors
        so far, operations so far, files and directories with unsynced changes."""
        if mode not in MODES:
            raise ValueError(f"cut mode {mode!r}: use one of {MODES}")
        with self.mutex:
            self.frozen = True
            out.mkdir(parents=True, exist_ok=True)
            if any(out.iterdir()):
                raise ValueError(f"{out} is not empty: a cut writes into an empty directory")
            files, dirs = Disk(self, mode, random.Random(seed)).write(self.root, out, ())
            unsynced = [n for n in self.inodes.values() if n.changes or n.entry_changes]
            unsynced_dirs = sum(n.is_dir for n in unsynced)
            return files, dirs, self.errors, self.ops, len(unsynced) - unsynced_dirs, unsynced_dirs

    def sync_dir(self, node: Inode) -> None:
        node.durable_entries = dict(node.entries)
        node.entry_changes.clear()
        self.garbage = True
        self.collect()


class Disk:
    """What the disk holds after the cut, inode by inode (each decided once, even when reached twice)."""

    def __init__(self, fs: Model, mode: str, rng: random.Random) -> None:
        self.fs, self.mode, self.rng = fs, mode, rng
        self.contents: dict[int, bytes] = {}
        self.listings: dict[int, dict[str, int]] = {}

    def _kept(self, count: int) -> int:
        return 0 if self.mode == "drop" else self.rng.randint(0, count)

    def content(self, node: Inode) -> bytes:
        if node.ino not in self.contents:
            buf = bytearray(node.durable)
            kept = node.changes[: self._kept(len(node.changes))]
            for i, change in enumerate(kept):
                last = change
                if i == len(kept) - 1 and change.data and self.rng.random() < 0.5:
                    last = Change(change.offset, change.data[: self.rng.randrange(len(change.data))])  # torn
                apply_change(buf, last)
            self.contents[node.ino] = bytes(buf)
        return self.contents[node.ino]

    def listing(self, node: Inode) -> dict[str, int]:
        if node.ino not in self.listings:
            entries = dict(node.durable_entries)
            for entry in node.entry_changes[: self._kept(len(node.entry_changes))]:
                apply_entry(entries, entry)
            self.listings[node.ino] = entries
        return self.listings[node.ino]

    def write(self, directory: Inode, out: Path, above: tuple[int, ...]) -> tuple[int, int]:
        files = dirs = 0
        for name, ino in sorted(self.listing(directory).items()):
            node = self.fs.inodes[ino]
            path = out / name
            if node.is_dir:
                if ino in above or ino == directory.ino:
                    continue  # a cycle left by half-persisted directory renames: written once only
                path.mkdir()
                f, d = self.write(node, path, (*above, directory.ino))
                files, dirs = files + f, dirs + d + 1
            else:
                path.write_bytes(self.content(node))
                files += 1
            path.chmod(stat.S_IMODE(node.mode))
        return files, dirs
