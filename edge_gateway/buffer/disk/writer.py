"""The group-commit writer: appends become format-2 records at the end of the active segment.

Contract:
- ``append`` returns only after its readings are written and fdatasync'd. Appends that arrive while a commit
  runs share the next one (``fsync_interval_s`` > 0 lingers that long to gather more). Every waiting appender
  hears the outcome, an error included; none is left hanging.
- A commit is one write + one fdatasync under ``ActiveFile.lock``, after ``retention.make_room``. The segment's
  size and ``last_seq``, ``next_seq`` and the stats move only once the fdatasync returned, so readers never see
  uncommitted bytes.
- A failed write is truncated back to the committed size and its readings counted as ``io_error``
  (``BufferIOError``); EFBIG on a non-empty segment makes the next append start a new segment.
- A write that fails for want of space (ENOSPC, EDQUOT) first frees what every destination acknowledged:
  settled sealed segments and a settled active one (a new segment is created first, so its name keeps
  ``next_seq``; then the old one is deleted), and is tried once more; only a second failure counts.
- Only a format-2 segment that continues the numbering and has room is appended to; otherwise a new segment
  is created (its directory entry fsync'd), and an empty one the numbering has moved past is removed.
- ``data_event`` is set, then replaced, after each successful commit: readers waiting for data wake up.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import Sequence
from typing import Protocol

from edge_gateway.buffer.disk.ledger import Ledger
from edge_gateway.buffer.disk.record import frame_batch
from edge_gateway.buffer.disk.retention import Limits, delete_settled, make_room
from edge_gateway.buffer.disk.state import FORMAT_2, SUFFIX, ActiveFile, Segment, State
from edge_gateway.errors import BufferIOError
from edge_gateway.model import Reading
from edge_gateway.util.files import OWNER_ONLY, fsync_dir, open_append

# The package's logger: log lines keep the logger name they had before disk.py became a package.
_log = logging.getLogger(__package__)

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class Settings(Limits, Protocol):
    """What the writer reads of ``DiskBuffer``'s public settings, at each use."""

    segment_bytes: int
    fsync_interval_s: float


class Writer:
    def __init__(self, state: State, active: ActiveFile, ledger: Ledger, settings: Settings) -> None:
        self._state = state
        self._active = active
        self._ledger = ledger
        self._settings = settings
        self._roll = False
        self._pending: list[tuple[Sequence[Reading], asyncio.Future[None]]] = []
        self._commit_task: asyncio.Task[None] | None = None
        self.data_event = asyncio.Event()

    async def append(self, readings: Sequence[Reading]) -> None:
        if not readings:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((readings, done))
        if self._commit_task is None or self._commit_task.done():
            self._commit_task = loop.create_task(self._commit_loop(), name="buffer:commit")
        await done

    async def wait_committed(self) -> None:
        """Wait until the commit in progress, if any, is done (even when the caller is cancelled meanwhile)."""
        if self._commit_task is not None:
            await asyncio.shield(self._commit_task)

    async def _commit_loop(self) -> None:
        while self._pending:
            if self._settings.fsync_interval_s:
                await asyncio.sleep(self._settings.fsync_interval_s)
            batch, self._pending = self._pending, []
            readings = [r for rs, _ in batch for r in rs]
            try:
                await asyncio.to_thread(self._write, readings)
            except Exception as exc:  # noqa: BLE001 - every waiting appender must hear of it, never hang
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
                self.data_event.set()
                self.data_event = asyncio.Event()

    def _write(self, readings: list[Reading]) -> None:
        state, active = self._state, self._active
        with active.lock:
            data, seq = frame_batch(readings, state.next_seq)
            make_room(state, self._settings, active, self._ledger, needed=len(data), count=len(readings))
            seg = self._segment_for(len(data), len(readings))
            try:
                self._put(data)
            except OSError as exc:
                self._undo_partial_write(seg)
                if exc.errno not in _NO_SPACE or not self._free_settled(seg):
                    raise self._failed(seg, len(readings), exc) from exc
                # The volume was full of readings every destination had acknowledged: they made room.
                seg = self._segment_for(len(data), len(readings))
                try:
                    self._put(data)
                except OSError as again:
                    self._undo_partial_write(seg)
                    raise self._failed(seg, len(readings), again) from again
            with state.meta:
                seg.size += len(data)
                seg.last_seq = seq - 1
                seg.mtime_s = time.time()
                state.next_seq = seq
                state.stats.appended += len(readings)
                state.stats.last_seq = seq - 1

    def _segment_for(self, needed: int, count: int) -> Segment:
        """``_active_segment``, its failure counted and translated."""
        state = self._state
        try:
            return self._active_segment(needed)
        except OSError as exc:
            state.stats.dropped["io_error"] += count
            raise BufferIOError(
                f"buffer cannot open a segment in {state.directory}: "
                f"{errno.errorcode.get(exc.errno or 0, '?')} {exc.strerror}; {count} reading(s) "
                "counted as dropped; fix the volume - the gateway retries with the next readings"
            ) from exc

    def _put(self, data: bytearray) -> None:
        """Write ``data`` at the end of the active segment and fdatasync it."""
        fd = self._active.fd
        assert fd is not None
        written = 0
        view = memoryview(data)
        while written < len(data):
            written += os.write(fd, view[written:])
        os.fdatasync(fd)

    def _failed(self, seg: Segment, count: int, exc: OSError) -> BufferIOError:
        """Count a failed write and say what to do about it."""
        self._state.stats.dropped["io_error"] += count
        if exc.errno == errno.EFBIG and seg.size:
            self._roll = True  # this file can grow no more: the next append starts a new segment
        return BufferIOError(
            f"buffer write of {count} reading(s) to {seg.path} failed: "
            f"{errno.errorcode.get(exc.errno or 0, '?')} {exc.strerror}; they are counted as dropped; "
            "free disk space or fix the volume - the gateway retries with the next readings"
        )

    def _free_settled(self, seg: Segment) -> bool:
        """The volume is full: delete the segments every destination acknowledged, the active one ``seg``
        included (a volume little larger than ``segment_bytes``, or shared, fills up before it is sealed). A new
        segment takes the active one's place first, so a file name still holds ``next_seq``. True when
        anything went (the write is worth one more try)."""
        state = self._state
        with state.meta:
            floor = min((a.acked_through for a in state.acks.values()), default=state.next_seq - 1)
            settled = [s for s in state.segments if s.count and s.last_seq <= floor]
        if not settled:
            return False
        if seg in settled:
            self._roll = True
            try:
                self._active_segment(0)
            except OSError as exc:
                _log.warning("buffer: volume full, and no new segment can be created to free %s: %s", seg.path, exc)
                return False
        delete_settled(state)
        _log.warning(
            "buffer: the volume of %s is full: deleted %d segment(s) every destination had acknowledged (%s) to "
            "make room; writing goes on",
            state.directory,
            len(settled),
            ", ".join(s.path.name for s in settled),
        )
        return True

    def _undo_partial_write(self, seg: Segment) -> None:
        try:
            assert self._active.fd is not None
            os.ftruncate(self._active.fd, seg.size)
            os.lseek(self._active.fd, seg.size, os.SEEK_SET)
        except OSError as exc:
            # The partial record stays behind a committed prefix; it is cut at the next open.
            _log.warning("buffer: could not truncate %s after a failed write: %s", seg.path.name, exc)
            self._active.close()

    def _active_segment(self, needed: int) -> Segment:
        """The segment the next record goes to: the last one while it continues the numbering and has room."""
        state, active = self._state, self._active
        seg = state.segments[-1] if state.segments else None
        if (
            seg is not None
            and seg.last_seq + 1 == state.next_seq  # it continues the numbering
            and (  # a format 1 segment (written before an upgrade) is never appended to
                seg.size == 0
                or (seg.version == FORMAT_2 and not self._roll and seg.size + needed <= self._settings.segment_bytes)
            )
        ):
            seg.version = FORMAT_2  # an empty segment takes the format written now
            if active.fd is None:
                active.fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND)
                os.lseek(active.fd, seg.size, os.SEEK_SET)
            return seg
        active.close()
        if seg is not None and seg.size == 0:  # empty, and the numbering has moved past its name
            with state.meta:
                state.segments.pop()
                state.firsts.pop()
            with contextlib.suppress(FileNotFoundError):
                seg.path.unlink()
        self._roll = False
        new = Segment(
            state.next_seq,
            state.directory / f"{state.next_seq:020d}{SUFFIX}",
            0,
            state.next_seq - 1,
            time.time(),
            FORMAT_2,
        )
        active.fd = open_append(new.path, OWNER_ONLY)
        fsync_dir(state.directory)
        with state.meta:
            state.segments.append(new)
            state.firsts.append(new.first_seq)
        return new
