"""Publishes every audit trail entry to an MQTT topic, in order, at least once, across outages and restarts.

Contract:
- One message per entry, QoS 1, through the ``publish(topic, payload)`` coroutine given (the gateway's
  transport: it returns the PUBACK reason code or raises). The payload is the entry exactly as stored in
  the trail (``AuditEntry.to_json()``: canonical JSON with ``seq``, ``time``, ``time_ns``, ``clock``,
  ``event``, ``fields``, ``prev``, ``hash``), so the cloud can recompute each hash and check the chain
  (``prev`` of seq n+1 == ``hash`` of seq n) and find gaps by ``seq``. A replay after a crash or a retry
  repeats a whole entry, never a changed one: de-duplicate by ``seq`` + ``hash``.
- Entries go out one at a time, oldest first; the next is sent only after the previous one's PUBACK with a
  success code (< 0x80). An exception (or a failure code) is retried with backoff (``edge_gateway.util.backoff``),
  logged once per episode. An error that says it cannot succeed on retry (``retryable`` False, e.g. an
  entry over the broker's packet limit) is logged, counted in ``unpublishable`` and skipped: the entry
  stays in the local trail, which is the record; the cloud sees the gap in ``seq``.
- After each PUBACK the last acknowledged ``seq`` (and its hash) is written to ``state_path`` atomically
  (temp file, fsync, rename, fsync directory), and to ``anchor_path`` when given (the anchor the trail is
  checked against at start, kept outside the trail directory: gxp/audit_anchor.py). A restart resumes
  after it: entries written while offline or while the gateway was down are published once the link is
  back (at-least-once: an entry whose PUBACK arrived but whose state write did not is sent again).
  ``restart_from(seq, prev)`` moves both back (after a discontinuity, the recorder's).
- The publisher wakes on every ``AuditTrail.append`` (a listener), with no polling. If the trail's last
  seq is below the saved one (the trail directory was archived and a new chain started), it logs that and
  publishes the new chain from its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from edge_gateway.gxp.audit import AuditEntry, AuditError, AuditTrail
from edge_gateway.util.backoff import Backoff
from edge_gateway.util.files import write_json_durably

_log = logging.getLogger(__name__)

_BATCH = 100  # entries read from the trail at a time: memory stays flat with any backlog
_FAILURE_CODE = 0x80


class AuditPublisher:
    def __init__(
        self,
        trail: AuditTrail,
        publish: Callable[[str, bytes], Awaitable[int]],
        topic: str,
        state_path: Path,
        *,
        backoff: Backoff | None = None,
        anchor_path: Path | None = None,
    ) -> None:
        self.trail = trail
        self.publish = publish
        self.topic = topic
        self.state_path = state_path
        self.anchor_path = anchor_path
        self.backoff = backoff or Backoff(0.5, 30.0)
        self.acked_seq, self._acked_hash = _load_state(state_path)
        self.published = 0
        self.unpublishable = 0
        self.last_error: str | None = None
        self._progress = asyncio.Event()

    async def wait_acked(self, seq: int) -> None:
        """Return once every entry up to ``seq`` is acknowledged (e.g. to flush at shutdown, under a timeout)."""
        while self.acked_seq < seq:
            self._progress.clear()
            await self._progress.wait()

    @property
    def acked_hash(self) -> str | None:
        return self._acked_hash

    def restart_from(self, seq: int, prev: str) -> None:
        """Publish again from entry ``seq`` on (after a discontinuity): the entry before it, whose hash is
        ``prev``, becomes the last acknowledged one, here and in both state files."""
        self.acked_seq, self._acked_hash = seq - 1, prev
        self._save(seq - 1, prev)

    def _save(self, seq: int, entry_hash: str) -> None:
        _save_state(self.state_path, seq, entry_hash)
        if self.anchor_path is not None:
            _save_state(self.anchor_path, seq, entry_hash)

    def status(self) -> dict[str, object]:
        return {
            "acked_seq": self.acked_seq,
            "pending": max(0, self.trail.last_seq - self.acked_seq),
            "published": self.published,
            "unpublishable": self.unpublishable,
            "last_error": self.last_error,
        }

    async def run(self) -> None:
        """Publish until cancelled."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def on_append(_entry: AuditEntry) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed while another thread appended
                loop.call_soon_threadsafe(wake.set)

        self.trail.add_listener(on_append)
        try:
            if self.trail.last_seq < self.acked_seq:
                _log.warning(
                    "audit trail %s ends at seq %d but seq %d was published: a new chain; publishing it from the start",
                    self.trail.directory,
                    self.trail.last_seq,
                    self.acked_seq,
                )
                self.acked_seq, self._acked_hash = 0, None
            while True:
                wake.clear()  # before reading: an append from here on wakes the wait below
                pending = await self._pending()
                if not pending:
                    await wake.wait()
                    continue
                for entry in pending:
                    await self._deliver(entry)
        finally:
            self.trail.remove_listener(on_append)

    async def _pending(self) -> list[AuditEntry]:
        while True:
            try:
                return await asyncio.to_thread(
                    lambda: list(itertools.islice(self.trail.entries(after_seq=self.acked_seq), _BATCH))
                )
            except AuditError as exc:
                # A damaged line stops publishing at that point (the rest of the chain cannot be trusted
                # past it): say so once, then look again now and then (an operator may restore the file).
                if self.last_error != str(exc):
                    _log.error("audit publishing stopped after seq %d: %s", self.acked_seq, exc)
                    self.last_error = str(exc)
                await asyncio.sleep(self.backoff.next_delay())

    async def _deliver(self, entry: AuditEntry) -> None:
        payload = entry.to_json()
        failing = False
        while True:
            try:
                code = await self.publish(self.topic, payload)
                if code >= _FAILURE_CODE:
                    msg = f"refused with reason code {code}"
                    raise RuntimeError(msg)  # noqa: TRY301 - handled with every other failure just below
            except Exception as exc:  # noqa: BLE001 - whatever the transport raises is retried or skipped
                self.last_error = f"publish audit seq {entry.seq} to {self.topic!r}: {exc}"
                if getattr(exc, "retryable", True) is False:
                    _log.error("%s; it cannot succeed and is skipped (it stays in the local trail)", self.last_error)
                    self.unpublishable += 1
                    break
                if not failing:
                    _log.warning("%s; retrying with backoff", self.last_error)
                    failing = True
                await asyncio.sleep(self.backoff.next_delay())
                continue
            if failing:
                _log.info("audit seq %d published to %r after retries", entry.seq, self.topic)
            self.published += 1
            self.last_error = None
            break
        self.backoff.reset()
        self.acked_seq, self._acked_hash = entry.seq, entry.hash
        await asyncio.to_thread(self._save, entry.seq, entry.hash)
        self._progress.set()


def _load_state(path: Path) -> tuple[int, str | None]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return int(doc["seq"]), str(doc["hash"])
    except FileNotFoundError:
        return 0, None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Publishing everything again is the safe side of at-least-once.
        _log.warning("cannot read audit publish state %s (%s): publishing the whole trail again", path, exc)
        return 0, None


def _save_state(path: Path, seq: int, entry_hash: str) -> None:
    write_json_durably(path, {"seq": seq, "hash": entry_hash})
