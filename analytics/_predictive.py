"""Questions people ask of a forecast: month-end bill, budget run-out, queue drain.

These are thin, pure functions over :class:`Forecaster` so that the HTTP API, the
Panel page and notebooks answer them identically. Totals use the variance of a
*sum* of future buckets (see ``ForecastResult.cumulative``), not per-bucket bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analytics._forecast import Forecaster, ForecastResult
from analytics._validate import StepLike, clean_series, parse_step, regular_series
from analytics.errors import AnalyticsInputError


def _finite(value: Any, field: str, *, minimum: float | None = None) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise AnalyticsInputError(field, f"expected a number, got {value!r}") from None
    if not math.isfinite(out):
        raise AnalyticsInputError(field, f"must be finite, got {value!r}")
    if minimum is not None and out < minimum:
        raise AnalyticsInputError(field, f"must be >= {minimum:g}, got {out:g}")
    return out


@dataclass(frozen=True)
class MonthEndProjection:
    """Projected spend for the calendar month (UTC) containing the last bucket."""

    month_start: pd.Timestamp
    month_end: pd.Timestamp  # exclusive: first instant of the next month
    spent: float
    projected_total: float
    lower: float
    upper: float
    level: float
    model: str
    remaining_steps: int


def project_month_end(
    cost: pd.Series[Any], *, level: float = 80.0, step: StepLike | None = None
) -> MonthEndProjection:
    """Spend so far this month plus a forecast of the buckets left in it.

    History before the month is used to fit the forecast (a week of hourly costs
    teaches the daily cycle), but only this month's buckets count as spent.
    """
    level = _finite(level, "level")
    if not 0.0 < level < 100.0:
        raise AnalyticsInputError("level", f"must be between 0 and 100, got {level:g}")
    data, step_td = regular_series(cost, step, field="cost")
    if data.notna().sum() < 2:
        raise AnalyticsInputError("cost", "need at least two non-missing buckets")
    last = pd.Timestamp(data.index[-1])
    month_start = pd.Timestamp(year=last.year, month=last.month, day=1, tz="UTC")
    month_end = month_start + pd.DateOffset(months=1)
    spent = float(np.nansum(data[data.index >= month_start].to_numpy()))
    remaining = max(0, math.ceil((month_end - (last + step_td)) / step_td))
    if remaining == 0:
        return MonthEndProjection(
            month_start, month_end, spent, spent, spent, spent, level, "none", 0
        )
    fit = Forecaster(data, step=step_td, levels=(level,), nonnegative=True).fit()
    tail = fit.cumulative(remaining, level).iloc[-1]
    return MonthEndProjection(
        month_start=month_start,
        month_end=month_end,
        spent=spent,
        projected_total=spent + float(tail["mean"]),
        lower=spent + float(tail["lower"]),
        upper=spent + float(tail["upper"]),
        level=level,
        model=fit.model,
        remaining_steps=remaining,
    )


@dataclass(frozen=True)
class BudgetRunout:
    """When cumulative spend is forecast to reach ``budget``.

    ``date`` follows the mean forecast; ``earliest``/``latest`` follow the upper
    and lower bounds of the running total at ``level``. Each is ``None`` when the
    crossing is not within the horizon searched (``horizon_end``).
    """

    budget: float
    spent: float
    exhausted: bool
    date: pd.Timestamp | None
    earliest: pd.Timestamp | None
    latest: pd.Timestamp | None
    level: float
    model: str
    horizon_end: pd.Timestamp


def _first_crossing(totals: pd.Series[float], budget: float) -> pd.Timestamp | None:
    hit = np.flatnonzero(totals.to_numpy() >= budget)
    return None if hit.size == 0 else pd.Timestamp(totals.index[hit[0]])


def budget_runout(
    cost: pd.Series[Any],
    budget: float,
    *,
    spent: float | None = None,
    within: StepLike = "31D",
    level: float = 80.0,
    step: StepLike | None = None,
) -> BudgetRunout:
    """Date the budget runs out at the forecast rate of spend, or ``None``.

    ``spent`` defaults to the sum of ``cost`` (the series is the budget period so
    far); pass it when the series also holds earlier history for the model.
    """
    budget = _finite(budget, "budget", minimum=0.0)
    level = _finite(level, "level")
    if not 0.0 < level < 100.0:
        raise AnalyticsInputError("level", f"must be between 0 and 100, got {level:g}")
    data, step_td = regular_series(cost, step, field="cost")
    if data.notna().sum() < 2:
        raise AnalyticsInputError("cost", "need at least two non-missing buckets")
    within_td = parse_step(within, "within")
    steps = max(1, int(within_td // step_td))
    if spent is None:
        running = data.fillna(0.0).cumsum()
        spent_value = float(running.iloc[-1])
        if spent_value >= budget:
            return BudgetRunout(
                budget,
                spent_value,
                True,
                _first_crossing(running, budget),
                None,
                None,
                level,
                "none",
                pd.Timestamp(data.index[-1]),
            )
    else:
        spent_value = _finite(spent, "spent", minimum=0.0)
        if spent_value >= budget:
            last = pd.Timestamp(data.index[-1])
            return BudgetRunout(budget, spent_value, True, last, None, None, level, "none", last)
    fit: ForecastResult = Forecaster(data, step=step_td, levels=(level,)).fit()
    cum = fit.cumulative(steps, level) + spent_value
    horizon_end = pd.Timestamp(cum.index[-1])
    return BudgetRunout(
        budget=budget,
        spent=spent_value,
        exhausted=False,
        date=_first_crossing(cum["mean"], budget),
        earliest=_first_crossing(cum["upper"], budget),
        latest=_first_crossing(cum["lower"], budget),
        level=level,
        model=fit.model,
        horizon_end=horizon_end,
    )


def _recent_rate(rate: pd.Series[Any] | float, window: pd.Timedelta, field: str) -> float:
    if not isinstance(rate, pd.Series):
        return _finite(rate, field, minimum=0.0)
    data = clean_series(rate, field).dropna()
    if data.empty:
        raise AnalyticsInputError(field, "has no observed values")
    recent = data[data.index > data.index[-1] - window]
    value = float(recent.mean())
    if value < 0:
        raise AnalyticsInputError(field, f"rates cannot be negative, got mean {value:g}")
    return value


def queue_drain_eta(
    depth: float,
    arrivals: pd.Series[Any] | float,
    service: pd.Series[Any] | float,
    *,
    window: StepLike = "15min",
) -> float | None:
    """Seconds until a queue of ``depth`` empties at recent rates, or ``None``.

    Rates are items per minute; a series is averaged over its last ``window`` so a
    single slow minute does not swing the estimate. ``None`` means the queue does
    not drain at current rates (arrivals at or above service).
    """
    depth_value = _finite(depth, "depth", minimum=0.0)
    window_td = parse_step(window, "window")
    arrival_rate = _recent_rate(arrivals, window_td, "arrivals")
    service_rate = _recent_rate(service, window_td, "service")
    if depth_value == 0.0:
        return 0.0
    net = service_rate - arrival_rate
    if net <= 0.0:
        return None
    return depth_value / net * 60.0
