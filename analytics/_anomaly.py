"""Points that break the learned pattern: spikes and level shifts.

The pattern is a non-robust STL fit at the shortest usable cycle, cleaned
iteratively: flagged points are replaced by their expected value and the fit is
redone, so a spike stops bending the fit towards itself. Two tempting alternatives
were measured and rejected on clean synthetic data: robust STL/MSTL (its weights
let the fit hug most points so tightly that the MAD of the remainder collapses and
clean data floods with flags) and a weekly component fitted from a few weeks (every
spike leaks into the same hour of the other weeks). The smooth weekday/weekend swing
is left to the trend. Scores are residuals over a MAD scale, so one bad hour cannot
inflate its own yardstick. A trend follows a step within a day and leaves only a
smear, so level shifts get their own before/after-median detector and are removed
before spikes are scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from analytics._seasonal import FloatArray, candidate_periods, decompose, fill_gaps, usable_periods
from analytics._validate import StepLike, regular_series
from analytics.errors import AnalyticsInputError

MIN_POINTS = 8
MIN_STRENGTH = 0.4  # Wang-Hyndman strength below which the cycle is not removed
CLEANING_PASSES = 3


@dataclass(frozen=True)
class Anomaly:
    """One flagged bucket; ``score`` is the distance from expected in robust sigmas."""

    timestamp: pd.Timestamp
    value: float
    expected: float
    score: float
    direction: Literal["up", "down"]
    kind: Literal["spike", "level_shift"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "timestamp": self.timestamp.isoformat(),
            "value": self.value,
            "expected": self.expected,
            "score": self.score,
            "direction": self.direction,
            "kind": self.kind,
        }


def _robust_sigma(resid: FloatArray) -> float:
    centered = resid - np.median(resid)
    sigma = 1.4826 * float(np.median(np.abs(centered)))
    if sigma == 0.0:
        # More than half the residuals are exactly zero: sparse events (most buckets
        # idle) or a blip on a constant. Scale by the non-zero residuals so only an
        # unusually large event stands out, and by the mean deviation when there is
        # a lone blip.
        nonzero = centered[centered != 0.0]
        if nonzero.size >= MIN_POINTS:
            sigma = 1.4826 * float(np.median(np.abs(nonzero - np.median(nonzero))))
        if sigma == 0.0:
            sigma = 1.2533 * float(np.mean(np.abs(centered)))
    return sigma


def _rolling_median(values: FloatArray, width: int) -> FloatArray:
    # Half the window may be missing: gaps must not hide a shift next to them.
    minimum = max(2, width // 2)
    return pd.Series(values).rolling(width, min_periods=minimum).median().to_numpy()


def _level_shifts(
    adjusted: FloatArray, width: int, sigma: float, threshold: float
) -> list[tuple[int, float, float]]:
    """(index, median before, median after) of steps in the deseasonalised series.

    A step is a jump between the medians of the ``width`` points before and after
    a bucket that is large against the noise *and* against the drift within each
    side; the second test keeps a steady ramp from being read as a cliff.
    """
    n = len(adjusted)
    if n < 2 * width or width < 4:
        return []
    half = width // 2
    before = np.full(n, np.nan)
    after = np.full(n, np.nan)
    med = _rolling_median(adjusted, width)  # med[i] = median(adjusted[i-width+1 : i+1])
    before[width:] = med[width - 1 : n - 1]
    after[: n - width + 1] = med[width - 1 :]
    hmed = _rolling_median(adjusted, half)
    spread_before = np.full(n, np.nan)
    spread_after = np.full(n, np.nan)
    # Drift inside a side: medians of its two halves.
    spread_before[width:] = np.abs(hmed[width - 1 : n - 1] - hmed[half - 1 : n - 1 - half])
    spread_after[: n - width + 1] = np.abs(hmed[width - 1 :] - hmed[half - 1 : n - half])
    jump = after - before
    drift = np.fmax(spread_before, spread_after)
    with np.errstate(invalid="ignore"):
        hit = (np.abs(jump) > threshold * sigma) & (np.abs(jump) > 3.0 * drift)
    found: list[tuple[int, float, float]] = []
    idx = np.flatnonzero(hit)
    if idx.size == 0:
        return found
    runs = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)
    for run in runs:
        best = int(run[np.argmax(np.abs(jump[run]))])
        found.append((best, float(before[best]), float(after[best])))
    return found


def _strength(seasonal: FloatArray, resid: FloatArray, observed: FloatArray) -> float:
    total = float(np.var((seasonal + resid)[observed]))
    if total == 0.0:
        return 0.0
    return 1.0 - float(np.var(resid[observed])) / total


def _fit(y: FloatArray, periods: tuple[int, ...]) -> tuple[FloatArray, FloatArray]:
    """(seasonal, expected) of a non-robust STL, or a running median without cycles."""
    if periods:
        dec = decompose(y, periods)
        return dec.seasonal, dec.trend + dec.seasonal
    width = int(min(25, max(5, len(y) // 4))) | 1
    expected = pd.Series(y).rolling(width, center=True, min_periods=1).median().to_numpy()
    return np.zeros_like(y), expected


def detect_anomalies(
    series: pd.Series[Any],
    *,
    step: StepLike | None = None,
    threshold: float = 4.0,
    shift_threshold: float = 3.0,
    log: bool = False,
    limit: int | None = 50,
) -> list[Anomaly]:
    """Spikes scoring above ``threshold`` and level shifts above ``shift_threshold``.

    Thresholds are in robust standard deviations of the remainder. 4 keeps clean
    Gaussian data to about one false spike per 16,000 buckets (about two years of
    hourly data); shifts use a lower bar because they are sustained for a day.
    ``log=True`` scores ``log1p`` of a non-negative metric, which suits heavy-tailed
    ones (cost per request, latency) whose normal upper tail would otherwise flood.
    ``limit`` keeps the highest-scoring anomalies so a chart or response stays
    bounded on data that does not follow any pattern (a random walk); ``None``
    keeps all. Results are in time order.
    """
    if not threshold > 0:
        raise AnalyticsInputError("threshold", f"must be positive, got {threshold}")
    if not shift_threshold > 0:
        raise AnalyticsInputError("shift_threshold", f"must be positive, got {shift_threshold}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise AnalyticsInputError(
            "limit", f"expected a positive whole number or None, got {limit!r}"
        )
    data, step_td = regular_series(series, step)
    raw = data.to_numpy(dtype=np.float64)
    observed = ~np.isnan(raw)
    if observed.sum() < MIN_POINTS or np.ptp(raw[observed]) == 0:
        return []
    if log:
        if np.any(raw[observed] < 0):
            raise AnalyticsInputError("log", "log scoring needs non-negative values")
        y = fill_gaps(np.log1p(raw))
    else:
        y = fill_gaps(raw)

    def original(values: float) -> float:
        return float(np.expm1(values)) if log else float(values)

    periods = usable_periods(candidate_periods(step_td), len(y))[:1]
    # Half a cycle each side: long enough to average noise, short enough that a
    # slow swing (the weekly one) barely moves the medians.
    width = max(4, min(periods) // 2) if periods else 6
    seasonal, expected = _fit(y, periods)
    if periods and _strength(seasonal, y - expected, observed) < MIN_STRENGTH:
        # A cycle this weak is mostly noise (or one blip smeared over every day);
        # removing it would plant echoes of the blip at the same hour each day.
        periods = ()
        seasonal, expected = _fit(y, periods)
    sigma = _robust_sigma((y - expected)[observed])
    if sigma == 0.0:
        return []
    # Interpolated buckets are not evidence of a shift; leave them out.
    adjusted = np.where(observed, y - seasonal, np.nan)
    shifts = [
        (i, after - before)
        for i, before, after in _level_shifts(adjusted, width, sigma, shift_threshold)
        if observed[i]
    ]
    adjust = np.zeros_like(y)
    for i, jump in shifts:
        adjust[i:] += jump
    work = y - adjust
    if shifts:
        seasonal, expected = _fit(work, periods)
    flagged = np.zeros(len(y), dtype=bool)
    sigma = _robust_sigma((work - expected)[observed])
    if sigma == 0.0:
        return []
    for _ in range(CLEANING_PASSES):
        refined = _robust_sigma((work - expected)[observed & ~flagged])
        if refined == 0.0:
            # Everything left fits exactly (a blip on a constant): keep the scale
            # that included the blip rather than call every tiny wiggle anomalous.
            break
        sigma = refined
        new = np.abs(work - expected) > threshold * sigma
        if not (new & ~flagged).any():
            break
        flagged |= new
        cleaned = work.copy()
        cleaned[flagged] = expected[flagged]
        seasonal, expected = _fit(cleaned, periods)
    expected = expected + adjust
    near_shift = np.zeros(len(y), dtype=bool)
    out: list[Anomaly] = []
    for i, jump in shifts:
        near_shift[max(0, i - 2) : i + 3] = True
        out.append(
            Anomaly(
                timestamp=pd.Timestamp(data.index[i]),
                value=original(y[i]),
                expected=original(y[i] - jump),
                score=float(abs(jump) / sigma),
                direction="up" if jump > 0 else "down",
                kind="level_shift",
            )
        )
    z = (y - expected) / sigma
    for i in map(int, np.flatnonzero(observed & (np.abs(z) > threshold) & ~near_shift)):
        out.append(
            Anomaly(
                timestamp=pd.Timestamp(data.index[i]),
                value=float(raw[i]),
                expected=original(expected[i]),
                score=float(abs(z[i])),
                direction="up" if z[i] > 0 else "down",
                kind="spike",
            )
        )
    if limit is not None and len(out) > limit:
        out = sorted(out, key=lambda a: a.score, reverse=True)[:limit]
    return sorted(out, key=lambda a: a.timestamp)
