"""Is a metric going up, down or nowhere, and how seasonal is it?

The answer must survive what real fleet metrics do: daily and weekly cycles (a
Monday that looks like growth), autocorrelation (a busy afternoon that looks like a
trend), outliers (one runaway agent) and missing buckets. Hence a robust slope
(Theil-Sen) and a rank test (Mann-Kendall with Hamed-Rao correction) run on the
series with its cycles removed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
from scipy.stats import theilslopes

from analytics._mannkendall import mann_kendall
from analytics._seasonal import (
    DAY,
    HOUR,
    FloatArray,
    candidate_periods,
    decompose,
    fill_gaps,
    usable_periods,
)
from analytics._validate import StepLike, clean_frame, infer_step, parse_step, regular_series
from analytics.errors import AnalyticsInputError

Direction = Literal["up", "down", "flat"]
MAX_POINTS = 1500  # Theil-Sen is quadratic in memory; longer windows are block-averaged


@dataclass(frozen=True)
class TrendResult:
    """Trend of one series over the last ``window``.

    ``None`` marks a quantity the data cannot support (too few points, or no
    previous window to compare with) rather than a misleading 0 or NaN.
    """

    n: int
    start: pd.Timestamp | None
    end: pd.Timestamp | None
    slope_per_day: float | None
    pct_change: float | None
    direction: Direction
    p_value: float | None
    seasonality_strength: float | None
    seasonal_periods: tuple[pd.Timedelta, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ISO timestamps and periods in seconds."""
        out = asdict(self)
        out["start"] = None if self.start is None else self.start.isoformat()
        out["end"] = None if self.end is None else self.end.isoformat()
        out["seasonal_periods"] = [p.total_seconds() for p in self.seasonal_periods]
        return out


def _pct_change(current: pd.Series[float], previous: pd.Series[float]) -> float | None:
    """Compare window means: equal to the ratio of sums for complete windows, and
    not fooled into reporting a drop by a few missing buckets."""
    cur, prev = float(current.mean()), float(previous.mean())
    if not (np.isfinite(cur) and np.isfinite(prev)):
        return None
    if prev == 0.0:
        return 0.0 if cur == 0.0 else None
    return float((cur - prev) / abs(prev) * 100.0)


def _working_series(
    current: pd.Series[float], step: pd.Timedelta
) -> tuple[pd.Series[float], pd.Timedelta]:
    """Minute data spanning days is studied hourly, so its daily cycle is visible
    without a 1440-step period; very long windows are block-averaged."""
    span = step * len(current)
    if step < HOUR and span >= 2 * DAY and HOUR.value % step.value == 0:
        current = current.resample(HOUR, origin="epoch").mean()
        step = HOUR
    if len(current) > MAX_POINTS:
        k = -(-len(current) // MAX_POINTS)
        current = current.resample(step * k, origin="epoch").mean()
        step = step * k
    return current, step


def _strength(seasonal: FloatArray, resid: FloatArray) -> float:
    """Wang-Hyndman strength: share of seasonal+remainder variance that is seasonal."""
    total = float(np.var(seasonal + resid))
    if total == 0.0:
        return 0.0
    return max(0.0, 1.0 - float(np.var(resid)) / total)


def trend(
    series: pd.Series[Any],
    window: StepLike = "7D",
    *,
    step: StepLike | None = None,
    alpha: float = 0.05,
) -> TrendResult:
    """Trend over the last ``window`` and change against the window before it."""
    data, step_td = regular_series(series, step)
    window_td = parse_step(window, "window")
    if window_td < 3 * step_td:
        raise AnalyticsInputError(
            "window", f"must span at least 3 steps of {step_td}, got {window_td}"
        )
    if not 0.0 < alpha < 1.0:
        raise AnalyticsInputError("alpha", f"must be between 0 and 1, got {alpha}")
    if len(data) == 0 or data.isna().all():
        return TrendResult(0, None, None, None, None, "flat", None, None, ())
    end = data.index[-1]
    current = data[data.index > end - window_td]
    previous = data[(data.index > end - 2 * window_td) & (data.index <= end - window_td)]
    has_previous = data.index[0] <= end - 2 * window_td + step_td
    pct = _pct_change(current, previous) if has_previous else None

    work, work_step = _working_series(current, step_td)
    observed = ~np.isnan(work.to_numpy())
    n_obs = int(observed.sum())
    start = pd.Timestamp(current.index[0])
    if n_obs < 3:
        return TrendResult(n_obs, start, pd.Timestamp(end), None, pct, "flat", None, None, ())

    values: FloatArray = work.to_numpy(dtype=np.float64)
    # Only the shortest cycle: a weekly component fitted from a few weeks gives 168
    # free values to noise, and pure noise then scores a strength of 0.5-0.7 (for
    # one daily cycle it scores about 0.2, the measure's usual floor).
    periods = usable_periods(candidate_periods(work_step), len(work))[:1]
    strength: float | None = None
    if periods and np.ptp(values[observed]) > 0:
        dec = decompose(fill_gaps(values), periods)
        strength = _strength(dec.seasonal[observed], dec.resid[observed])
        adjusted: FloatArray = (values - dec.seasonal)[observed]
    else:
        adjusted = values[observed]
    stamps = cast(pd.DatetimeIndex, work.index).asi8
    t_days = (stamps[observed] - stamps[0]) / DAY.value
    if np.ptp(adjusted) == 0:
        slope, p_value, s_stat = 0.0, 1.0, 0.0
    else:
        slope = float(theilslopes(adjusted, t_days)[0])
        mk = mann_kendall(adjusted)
        p_value, s_stat = mk.p_value, mk.s
    direction: Direction = "flat"
    if p_value < alpha:
        direction = "up" if s_stat > 0 else "down"
    return TrendResult(
        n=int(current.notna().sum()),
        start=start,
        end=pd.Timestamp(end),
        slope_per_day=slope,
        pct_change=pct,
        direction=direction,
        p_value=float(p_value),
        seasonality_strength=strength,
        seasonal_periods=tuple(work_step * p for p in periods),
    )


def trends(
    frame: pd.DataFrame,
    window: StepLike = "7D",
    *,
    step: StepLike | None = None,
    alpha: float = 0.05,
) -> dict[str, TrendResult]:
    """:func:`trend` for every column (agent, model, ...) of a wide frame."""
    data = clean_frame(frame, "frame")
    if step is None and len(data.index.unique()) >= 2:
        step = infer_step(cast(pd.DatetimeIndex, data.index))
    return {str(name): trend(data[name], window, step=step, alpha=alpha) for name in data.columns}
