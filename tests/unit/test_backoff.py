import random

import pytest

from edge_gateway.util.backoff import Backoff


def test_delays_grow_exponentially_within_jittered_bounds_and_cap() -> None:
    b = Backoff(1.0, 30.0, rng=random.Random(7))
    ceilings = [1, 2, 4, 8, 16, 30, 30, 30]
    delays = [b.next_delay() for _ in ceilings]
    for d, ceiling in zip(delays, ceilings, strict=True):
        assert 0.5 <= d <= ceiling
    assert len(set(delays)) == len(delays)  # jittered, not fixed


def test_full_jitter_spreads_over_the_whole_window() -> None:
    rng = random.Random(1)
    samples = []
    for _ in range(2000):
        b = Backoff(1.0, 64.0, rng=rng)
        for _ in range(6):
            d = b.next_delay()
        samples.append(d)
    assert min(samples) < 4  # spread across [0.5, 32]
    assert max(samples) > 28


def test_reset_starts_over() -> None:
    b = Backoff(1.0, 100.0, rng=random.Random(3))
    for _ in range(10):
        b.next_delay()
    b.reset()
    assert b.next_delay() <= 1.0


def test_invalid_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="min_s <= max_s"):
        Backoff(5.0, 1.0)
