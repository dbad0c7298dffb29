"""Histogram quantiles against numpy's exact ones, merging, and the edge buckets."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest

from ezdash.metrics import bucket_of, from_redis, merge, quantile, quantiles, value_of
from ezdash.metrics.histogram import ALPHA, MAX_BUCKET, MAX_MS, MIN_MS

QS = (0.5, 0.95, 0.99)
N = 20_000
Sampler = Callable[[np.random.Generator], np.ndarray]


def _bimodal(rng: np.random.Generator) -> np.ndarray:
    fast = rng.lognormal(np.log(180.0), 0.3, int(N * 0.7))
    slow = rng.lognormal(np.log(6_000.0), 0.4, N - fast.size)
    return np.concatenate([fast, slow])


DISTRIBUTIONS: dict[str, Sampler] = {
    "lognormal": lambda rng: rng.lognormal(np.log(800.0), 0.8, N),
    "uniform": lambda rng: rng.uniform(5.0, 5_000.0, N),
    "bimodal": _bimodal,
    "constant": lambda rng: np.full(N, 1_234.5),
    "exponential": lambda rng: rng.exponential(300.0, N),
    "sub_millisecond": lambda rng: rng.uniform(0.01, 0.9, N),
}


def histogram(values: np.ndarray) -> dict[int, int]:
    return dict(Counter(bucket_of(float(v)) for v in values))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_quantiles_within_5_percent_of_numpy(name: str, seed: int) -> None:
    values = DISTRIBUTIONS[name](np.random.default_rng(seed))
    estimates = quantiles(histogram(values), QS)
    for q, estimate in zip(QS, estimates, strict=True):
        exact = float(np.quantile(values, q))
        assert estimate is not None
        error = abs(estimate - exact) / exact
        assert error <= 0.05, (name, seed, q, estimate, exact)
        assert error <= ALPHA + 1e-9  # the design bound, not just the promise


def test_bimodal_gap_interpolates_like_numpy() -> None:
    """Rank q*(n-1) falling between the modes: numpy interpolates across the gap."""
    values = np.array([100.0] * 50 + [10_000.0] * 50)
    for q in (0.49, 0.495, 0.5, 0.505):
        estimate = quantile(histogram(values), q)
        exact = float(np.quantile(values, q))
        assert estimate is not None and abs(estimate - exact) / exact <= ALPHA + 1e-9


def test_merged_histograms_equal_the_histogram_of_all_values() -> None:
    rng = np.random.default_rng(7)
    parts = [rng.lognormal(np.log(500.0), 0.6, 3_000) for _ in range(5)]
    merged = merge(*(histogram(p) for p in parts))
    assert merged == histogram(np.concatenate(parts))
    assert merge() == {} and merge({3: 1}, {}) == {3: 1}


def test_empty_histogram_has_no_quantiles() -> None:
    assert quantile({}, 0.5) is None
    assert quantiles({5: 0}, QS) == [None, None, None]


def test_zero_sub_millisecond_and_huge_latencies() -> None:
    assert bucket_of(0) == 0 and bucket_of(MIN_MS) == 0 and value_of(0) == 0.0
    assert bucket_of(MIN_MS * 1.0001) == 1
    assert abs(value_of(bucket_of(0.25)) - 0.25) / 0.25 <= ALPHA
    assert bucket_of(MAX_MS) == MAX_BUCKET == bucket_of(10 * MAX_MS) == bucket_of(float("inf"))
    assert abs(value_of(MAX_BUCKET) - MAX_MS) / MAX_MS <= ALPHA
    assert quantile({0: 10}, 0.99) == 0.0
    assert MAX_BUCKET < 1000  # short Redis hash fields: at most three digits
    with pytest.raises(ValueError, match="negative"):
        bucket_of(-1.0)


def test_every_value_reads_back_within_alpha() -> None:
    rng = np.random.default_rng(3)
    for value in np.exp(rng.uniform(np.log(MIN_MS * 1.01), np.log(MAX_MS), 50_000)):
        estimate = value_of(bucket_of(float(value)))
        assert abs(estimate - value) / value <= ALPHA + 1e-12


def test_redis_replies_and_bad_input() -> None:
    counts = from_redis({b"173": b"4", "346": "1", b"0": 2})
    assert counts == {173: 4, 346: 1, 0: 2}
    with pytest.raises(ValueError, match="quantile"):
        quantile(counts, 1.5)
    with pytest.raises(ValueError, match="not a latency bucket"):
        quantile({MAX_BUCKET + 1: 1}, 0.5)


def test_bucket_of_is_cheap_enough_for_the_ingest_path() -> None:
    values = [float(v) for v in np.random.default_rng(0).lognormal(6.0, 1.0, 100_000)]
    start = time.perf_counter()
    for v in values:
        bucket_of(v)
    per_call = (time.perf_counter() - start) / len(values)
    assert per_call < 5e-6, f"{per_call * 1e6:.2f} us per call"
