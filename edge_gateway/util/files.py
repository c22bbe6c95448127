"""The one place that creates the gateway's files: whole-file replaces, appends and directories.

Contract:
- Modes are set at creation, never widened afterwards: a file is created by ``os.open`` with its final mode
  (the umask can only narrow it) and then ``fchmod``-ed to exactly that mode before a byte is written, so
  there is no moment in which a private key or a state file is readable by others. Directories are created
  (parents too, unlike ``Path.mkdir(parents=True)``) with their mode; existing directories are left alone.
- Which mode (docs/security.md): ``OWNER_ONLY`` (0600) for secrets and state only the gateway
  reads (private keys, the buffer and its ledger, recorder and publish state), ``OWNER_GROUP`` (0640) for
  what an operator in the gateway's group reads (status, last heartbeat, audit trail, provenance epochs,
  saved shadow config, dead letters, IQ reports). Directories: ``DIR_OWNER_ONLY`` (0700: the buffer, the
  OPC UA certificate folders) / ``DIR_OWNER_GROUP`` (0750: the rest, and every parent created on the way).
  Nothing is ever world-readable or group-writable.
- ``write_durably`` / ``atomic_write`` replace ``path`` whole: the old content or the new, never a mix.
  They write ``<name>.tmp`` beside it, created with ``O_CREAT | O_EXCL | O_NOFOLLOW``: whatever already sits
  at the temp path (a crash's leftover, or a symbolic link planted there) is removed -- the link itself,
  never its target -- and the temp file is created afresh; if something appears there again in between,
  the write fails with ``FileExistsError`` naming the path. The rename then replaces ``path`` (a symbolic
  link at ``path`` is replaced, not followed). Writes to one path are serialised within the process.
  ``write_durably`` also fsyncs the file and the directory (survives a power loss); ``atomic_write`` does
  not (the status file, rewritten every few seconds).
- ``open_append`` opens a log-like file for appending (created with its mode, ``O_NOFOLLOW``): a symbolic
  link there is refused with an ``OSError`` that says what to do, never written through.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
from pathlib import Path
from typing import Any

_log = logging.getLogger(__name__)

OWNER_ONLY = 0o600
OWNER_GROUP = 0o640
DIR_OWNER_ONLY = 0o700
DIR_OWNER_GROUP = 0o750

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC

_locks_guard = threading.Lock()
_locks: dict[Path, threading.Lock] = {}


def ensure_dir(directory: Path, mode: int = DIR_OWNER_GROUP) -> None:
    """Create ``directory`` with ``mode`` and its missing parents with ``DIR_OWNER_GROUP`` (a parent such as
    the data directory is shared by files of both kinds: the group may pass, the leaf decides); existing
    directories are not changed. Each directory created is made durable (its parent fsynced): a file later
    synced inside it would otherwise vanish with it on a power cut."""
    missing: list[Path] = []
    current = directory
    while not current.is_dir() and current != current.parent:
        missing.append(current)
        current = current.parent
    for d in reversed(missing):
        this_mode = mode if d == directory else DIR_OWNER_GROUP
        try:
            d.mkdir(this_mode)
        except FileExistsError:
            if not d.is_dir():
                msg = f"cannot create the directory {d}: a file is in the way; move it or choose another path"
                raise FileExistsError(errno.EEXIST, msg, str(d)) from None
        else:
            _set_dir_mode(d, this_mode)
            fsync_dir(d.parent)


def _set_dir_mode(directory: Path, mode: int) -> None:
    # mkdir applies the umask: make the mode exact (never wider than ``mode``), through a descriptor so that
    # a link swapped in after the mkdir is not followed.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_exclusive(path: Path, mode: int) -> int:
    """A new file at ``path`` with exactly ``mode``, opened for writing (fd); never through a symlink.

    ``FileExistsError`` if anything (a file, a symbolic link) is already there."""
    fd = os.open(path, _NEW_FILE, mode)
    try:
        os.fchmod(fd, mode)  # exact, whatever the umask; still before any data is written
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_append(path: Path, mode: int) -> int:
    """``path`` opened for appending (fd), created with ``mode`` if missing; a symbolic link is refused.

    An existing file of ours with another mode is set to ``mode`` (e.g. one created by an older version)."""
    try:
        fd = os.open(path, _APPEND, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            msg = (
                f"{path} is a symbolic link: the gateway does not write through links; remove it (and find out"
                " who created it)"
            )
            raise OSError(errno.ELOOP, msg, str(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _path_lock(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(path, threading.Lock())


def _create_temp(tmp: Path, mode: int) -> int:
    try:
        return create_exclusive(tmp, mode)
    except FileExistsError:
        pass
    if tmp.is_symlink():
        _log.warning("removed a symbolic link planted at the temporary file %s (not followed)", tmp)
    tmp.unlink(missing_ok=True)  # a leftover of a crash, or a planted link: the link goes, its target stays
    try:
        return create_exclusive(tmp, mode)
    except FileExistsError:
        msg = (
            f"cannot create the temporary file {tmp}: something re-created it while the gateway wrote there;"
            f" check which other process writes in {tmp.parent}"
        )
        raise FileExistsError(errno.EEXIST, msg, str(tmp)) from None


def _replace(path: Path, data: bytes, *, mode: int, dir_mode: int, durable: bool) -> None:
    ensure_dir(path.parent, dir_mode)
    tmp = path.with_name(path.name + ".tmp")
    with _path_lock(path):
        fd = _create_temp(tmp, mode)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    if durable:
        fsync_dir(path.parent)


def write_durably(path: Path, data: bytes, *, mode: int = OWNER_ONLY, dir_mode: int = DIR_OWNER_GROUP) -> None:
    """Replace ``path`` atomically and durably (temp file, fsync, rename, fsync the directory), with ``mode``."""
    _replace(path, data, mode=mode, dir_mode=dir_mode, durable=True)


def write_json_durably(path: Path, doc: Any, *, mode: int = OWNER_ONLY) -> None:  # noqa: ANN401 - any JSON document
    write_durably(path, json.dumps(doc, sort_keys=True).encode(), mode=mode)


def atomic_write(path: Path, data: bytes, *, mode: int = OWNER_GROUP) -> None:
    """Replace ``path`` atomically (readers see the old or the new content), without fsync: for files
    rewritten often whose loss in a power cut costs nothing (the status file, the last heartbeat)."""
    _replace(path, data, mode=mode, dir_mode=DIR_OWNER_GROUP, durable=False)
