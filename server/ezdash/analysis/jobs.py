"""Work that runs in the analytics worker processes.

Each function takes pandas objects (pickled to the worker) and returns plain
JSON-able data, so nothing heavy crosses back and the event loop never fits a
model.  ``init_worker`` runs first in each worker and lowers its CPU priority, so the
server process stays responsive while fits run.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from analytics import (
    AnalyticsInputError,
    Forecaster,
    budget_runout,
    detect_anomalies,
    project_month_end,
    trend,
)

from ..timeutil import format_ms


def ts(t: pd.Timestamp) -> str | None:
    return format_ms(int(t.value // 1_000_000))


def clean(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 6)


class JobInputError(ValueError):
    """An analytics input problem, carried back from a worker (field, message)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field = field
        self.message = message


def _guard(e: AnalyticsInputError) -> JobInputError:
    return JobInputError(e.field, str(e))


def forecast(series: pd.Series[Any], horizon: int, levels: tuple[float, ...]) -> dict[str, Any]:
    try:
        result = Forecaster(series, horizon=horizon, levels=levels, nonnegative=True).fit()
    except AnalyticsInputError as e:
        raise _guard(e) from None
    frame = result.forecast(horizon)
    out: dict[str, Any] = {
        "model": result.model,
        "t": [ts(t) for t in frame.index],
        "mean": [clean(v) for v in frame["mean"]],
    }
    for col in frame.columns:
        if col != "mean":
            out[col] = [clean(v) for v in frame[col]]
    out["backtest"] = {
        "mase": clean(result.backtest.mase),
        "smape": clean(result.backtest.smape),
        "origins": result.backtest.origins,
    }
    return out


def trends(frame: pd.DataFrame, window: str) -> list[dict[str, Any]]:
    items = []
    for column in frame.columns:
        try:
            r = trend(frame[column], window=window)
        except AnalyticsInputError as e:
            raise _guard(e) from None
        items.append(
            {
                "group": str(column),
                "slope_per_day": clean(r.slope_per_day),
                "pct_change": clean(r.pct_change),
                "direction": r.direction,
                "p_value": clean(r.p_value),
                "seasonality_strength": clean(r.seasonality_strength),
                "n": r.n,
            }
        )
    return items


def anomalies(series: pd.Series[Any], threshold: float) -> list[dict[str, Any]]:
    try:
        found = detect_anomalies(series, threshold=threshold)
    except AnalyticsInputError as e:
        raise _guard(e) from None
    return [
        {
            "ts": ts(a.timestamp),
            "value": clean(a.value),
            "expected": clean(a.expected),
            "score": clean(a.score),
            "direction": a.direction,
            "kind": a.kind,
        }
        for a in found
    ]


def spend_bound(history: pd.Series[Any], steps: int, level: float) -> tuple[float, float]:
    """Expected spend over the next ``steps`` buckets and the upper bound of its
    ``level`` % interval (the variance of the sum, not of each bucket)."""
    try:
        result = Forecaster(history, horizon=steps, nonnegative=True).fit()
        total = result.cumulative(steps, level=level)
    except AnalyticsInputError as e:
        raise _guard(e) from None
    return float(total["mean"].iloc[-1]), float(total["upper"].iloc[-1])


def month_to_date(cost: pd.Series[Any], end_ms: int) -> float:
    """Spend since the start of the UTC month that ``end_ms`` falls in."""
    month_start = pd.Timestamp(end_ms, unit="ms", tz="UTC").replace(day=1, hour=0)
    return float(cost[cost.index >= month_start].sum())


def predictions(
    cost: pd.Series[Any], month_cost: float, budget: float | None, level: float
) -> dict[str, Any]:
    try:
        proj = project_month_end(cost, level=level)
        out: dict[str, Any] = {
            "month_end_cost": {
                "month_start": ts(proj.month_start),
                "spent": clean(proj.spent),
                "projected": clean(proj.projected_total),
                "lower": clean(proj.lower),
                "upper": clean(proj.upper),
                "level": proj.level,
                "model": proj.model,
            }
        }
        if budget is not None:
            run = budget_runout(cost, budget, spent=month_cost, level=level)
            out["budget"] = {
                "budget_usd": budget,
                "spent": clean(run.spent),
                "exhausted": run.exhausted,
                "date": ts(run.date) if run.date is not None else None,
                "earliest": ts(run.earliest) if run.earliest is not None else None,
                "latest": ts(run.latest) if run.latest is not None else None,
            }
        else:
            out["budget"] = None
        return out
    except AnalyticsInputError as e:
        raise _guard(e) from None
