"""Latency histograms that merge by addition and fit in a Redis hash.

The design is DDSketch's (Masson et al., VLDB 2019): buckets grow geometrically
by ``GAMMA = (1 + ALPHA) / (1 - ALPHA)``, and every value in a bucket is within
relative error ALPHA of the bucket's representative ``2 * upper / (GAMMA + 1)``.
A quantile read from the counts is therefore within ALPHA of the true order
statistic, whatever the distribution, and histograms of different agents, minutes
or servers merge by adding counts: ingest does ``HINCRBY hist <bucket> 1``.

ALPHA = 0.02: the dashboard promises p50/p95/p99 within 5%, and 2% leaves room
for floating-point error at bucket edges and for interpolation (see
:func:`quantiles`) while keeping the bucket count modest (about 17 buckets per
doubling of latency; a typical minute of one agent touches a few dozen).

Bucket 0 holds 0 and everything up to ``MIN_MS`` (1 microsecond) and reads back
as 0.  Bucket k >= 1 covers ``(MIN_MS * GAMMA**(k-1), MIN_MS * GAMMA**k]``.
Values above ``MAX_MS`` (one hour) are counted in the last bucket and read back
as about an hour.  Changing ALPHA or MIN_MS changes what stored bucket numbers
mean: histograms written under other constants cannot be read with these.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from itertools import accumulate

ALPHA = 0.02
GAMMA = (1 + ALPHA) / (1 - ALPHA)
MIN_MS = 0.001
MAX_MS = 3_600_000.0
_INV_LOG_GAMMA = 1.0 / math.log(GAMMA)
_LOG_MIN = math.log(MIN_MS)
MAX_BUCKET = math.ceil((math.log(MAX_MS) - _LOG_MIN) * _INV_LOG_GAMMA)
_REPRESENTATIVE = [0.0] + [
    2.0 * MIN_MS * GAMMA**k / (GAMMA + 1.0) for k in range(1, MAX_BUCKET + 1)
]


def bucket_of(value_ms: float) -> int:
    """The bucket a latency is counted in (hot: once per ingested event)."""
    if value_ms <= MIN_MS:
        if value_ms >= 0:
            return 0
        raise ValueError(f"latency cannot be negative: {value_ms!r}")
    if value_ms >= MAX_MS:
        return MAX_BUCKET
    return math.ceil((math.log(value_ms) - _LOG_MIN) * _INV_LOG_GAMMA)


def value_of(bucket: int) -> float:
    """The representative latency of a bucket (within ALPHA of all its values)."""
    if not 0 <= bucket <= MAX_BUCKET:
        raise ValueError(f"not a latency bucket: {bucket} (expected 0..{MAX_BUCKET})")
    return _REPRESENTATIVE[bucket]


def merge(*histograms: Mapping[int, int]) -> dict[int, int]:
    """Sum of count maps: the histogram of the union of their observations."""
    total: dict[int, int] = {}
    for histogram in histograms:
        for bucket, count in histogram.items():
            total[bucket] = total.get(bucket, 0) + count
    return total


def from_redis(fields: Mapping[bytes | str, bytes | str | int]) -> dict[int, int]:
    """A count map from an ``HGETALL`` reply (bytes or str, depending on the client)."""
    return {int(k): int(v) for k, v in fields.items()}


def quantile(counts: Mapping[int, int], q: float) -> float | None:
    """The q-quantile (0 <= q <= 1) of the counted latencies, None if there are none."""
    return quantiles(counts, (q,))[0]


def quantiles(counts: Mapping[int, int], qs: Sequence[float]) -> list[float | None]:
    """Several quantiles in one pass over the sorted buckets.

    Ranks follow numpy's default (linear) definition: rank ``q * (n - 1)`` is
    interpolated between the order statistics on either side.  Interpolating the
    two buckets' representatives keeps the relative error within ALPHA of the
    interpolated true value, even across a gap between the modes of a bimodal
    distribution where the two order statistics are far apart."""
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within [0, 1]: {q!r}")
    occupied = sorted((b, c) for b, c in counts.items() if c > 0)
    if not occupied:
        return [None] * len(qs)
    values = [value_of(b) for b, _ in occupied]  # refuses buckets of other constants
    cumulative = list(accumulate(c for _, c in occupied))
    n = cumulative[-1]

    def nth(index: int) -> float:
        """The representative of the bucket holding the index-th smallest value."""
        return values[bisect_right(cumulative, index)]

    out: list[float | None] = []
    for q in qs:
        rank = q * (n - 1)
        lower = math.floor(rank)
        frac = rank - lower
        low = nth(lower)
        out.append(low if frac == 0 else low + frac * (nth(lower + 1) - low))
    return out
