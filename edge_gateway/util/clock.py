"""The system clock as the gateway sees it: the kernel's synchronisation state and jumps of the wall clock.

TLS needs a valid clock, and every reading carries the gateway's wall-clock timestamp next to the PLC's, so
an operator must learn when that clock is unsynchronised or jumps:

- ``kernel_clock()`` reads the kernel's NTP state with ``adjtimex(2)`` (read-only, ``modes`` 0):
  synchronised or not, the estimated offset the NTP daemon is correcting, and the maximum error. None
  where the call is missing (not Linux).
- ``ClockWatch.check()`` compares how far the wall clock moved with how far the monotonic clock moved since
  the previous check; a difference above ``threshold_s`` is a jump (an NTP step, a manual ``date -s``, an
  RTC-less board setting its clock after boot). Each jump is logged once, counted, and kept as
  ``last_jump`` ({"at": wall time after the jump, "by_s": signed size}); readings taken around it keep both
  timestamps, so the cloud side can tell which ones the jump affected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_log = logging.getLogger(__name__)

_TIME_ERROR = 5  # adjtimex(2) return value: the clock is not synchronised
_STA_NANO = 0x2000  # status bit: ``offset`` is in nanoseconds, not microseconds
_JUMP_THRESHOLD_S = 1.0


class _Timex(ctypes.Structure):
    """The leading fields of ``struct timex`` (C ``long`` is the kernel's width on every Linux ABI)."""

    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 512),  # larger than the rest of struct timex everywhere
    )


@dataclass(frozen=True, slots=True)
class KernelClock:
    synchronised: bool
    offset_ms: float  # what the NTP daemon is still correcting (estimated)
    max_error_ms: float


@functools.cache
def _libc() -> ctypes.CDLL:
    """Loaded once: find_library runs ldconfig, too slow for every status snapshot."""
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def kernel_clock() -> KernelClock | None:
    timex = _Timex()  # modes = 0: only read
    try:
        state = int(_libc().adjtimex(ctypes.byref(timex)))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    offset_s = timex.offset / (1e9 if timex.status & _STA_NANO else 1e6)
    return KernelClock(state != _TIME_ERROR, round(offset_s * 1000, 3), round(timex.maxerror / 1000, 3))


def clock_synchronised() -> bool | None:
    """Whether the kernel says the system clock is synchronised; None when it cannot be asked."""
    clock = kernel_clock()
    return None if clock is None else clock.synchronised


class ClockWatch:
    """Detects wall-clock jumps between calls of ``check``; the clocks are injectable for tests."""

    def __init__(
        self,
        *,
        threshold_s: float = _JUMP_THRESHOLD_S,
        wall_ns: Callable[[], int] = time.time_ns,
        mono_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.threshold_s = threshold_s
        self._wall_ns, self._mono_ns = wall_ns, mono_ns
        self._last = (wall_ns(), mono_ns())
        self.jumps = 0
        self.last_jump: dict[str, float] | None = None

    def check(self) -> float | None:
        """The size of a jump since the previous check (seconds, + forward), or None."""
        wall, mono = self._wall_ns(), self._mono_ns()
        drift_s = ((wall - self._last[0]) - (mono - self._last[1])) / 1e9
        self._last = (wall, mono)
        if abs(drift_s) < self.threshold_s:
            return None
        self.jumps += 1
        self.last_jump = {"at": round(wall / 1e9, 3), "by_s": round(drift_s, 3)}
        _log.warning(
            "the system clock jumped %s by %.3f s; readings around %s carry gateway timestamps from both sides "
            "of the jump (their source timestamps are the PLC's)",
            "forward" if drift_s > 0 else "back",
            abs(drift_s),
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall / 1e9)),
        )
        return drift_s

    def state(self) -> dict[str, Any]:
        """The ``clock`` section of the status document."""
        self.check()
        kernel = kernel_clock()
        return {
            "synchronised": None if kernel is None else kernel.synchronised,
            "offset_ms": None if kernel is None else kernel.offset_ms,
            "max_error_ms": None if kernel is None else kernel.max_error_ms,
            "jumps": self.jumps,
            "last_jump": self.last_jump,
        }
