"""Pure delay generator: exponential growth, full jitter, a cap.

``Backoff(min_s, max_s)`` yields delays d_n drawn uniformly from [min_s / 2, min(max_s, min_s * 2**n)]
("full jitter", AWS Architecture Blog, with a floor of ``min_s / 2`` so a fleet never hammers a
peer with near-zero waits). ``reset()`` after a success starts again from ``min_s``.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, min_s: float, max_s: float, *, rng: random.Random | None = None) -> None:
        if min_s <= 0 or max_s < min_s:
            msg = f"backoff needs 0 < min_s <= max_s, got min_s={min_s} max_s={max_s}"
            raise ValueError(msg)
        self.min_s = min_s
        self.max_s = max_s
        self.attempt = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.min_s * (2 ** min(self.attempt, 62)))
        self.attempt += 1
        return self._rng.uniform(self.min_s / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0
