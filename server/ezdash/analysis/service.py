"""One analytics service for the API and the analyst page.

Both answer the same questions (a trend, a forecast, anomalies, month-end
predictions) over the same rollups, so the rules that make a number are here once:
which plan is read, that only complete buckets are fitted (a half-filled current
hour would read as a drop), the trend's step for its window, how a fit is run
(worker processes, ``analysis.pool``) and how its answer is cached (by a typed key
holding what the answer depends on: the metric, the filters and the range read, so
the page and the API share one fit of the same data).  Handlers and the page are
adapters: they parse their input, call this, and shape the answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pandas as pd

from ..metrics.query import Plan, Reader, plan
from ..metrics.rollup import Tier
from . import jobs
from .loader import fleet_series, load_plan
from .pool import AnalyticsPool, ResultCache

HOUR = 3_600_000
DAY = 86_400_000
Filters = tuple[tuple[str, str], ...]
"""Filters as a cache key holds them: sorted (dimension, value) pairs."""


def filters_key(filters: Mapping[str, str]) -> Filters:
    return tuple(sorted(filters.items()))


def complete_end(now_ms: int, step_ms: int) -> int:
    """The end of the newest complete bucket: fits see complete buckets only."""
    return now_ms // step_ms * step_ms


MAX_HORIZON = 2000
"""Steps a forecast goes ahead at most."""


def forecast_steps(horizon_ms: int, step_ms: int) -> int:
    """A horizon as whole steps, rounded up, at most ``MAX_HORIZON`` (the answer says
    how many were forecast)."""
    return max(1, min(MAX_HORIZON, -(-horizon_ms // step_ms)))


def trend_step(window_ms: int) -> int:
    """Trends compare hours up to a month's window, days beyond (at most ~1,500 points)."""
    return HOUR if window_ms <= 30 * DAY else DAY


@dataclass(frozen=True)
class TrendsKey:
    metric: str
    window_ms: int
    group_by: str
    filters: Filters
    end_ms: int


@dataclass(frozen=True)
class ForecastKey:
    metric: str
    filters: Filters
    start_ms: int
    end_ms: int
    step_ms: int
    steps: int
    levels: tuple[float, ...]


@dataclass(frozen=True)
class AnomaliesKey:
    metric: str
    filters: Filters
    start_ms: int
    end_ms: int
    step_ms: int
    threshold: float


@dataclass(frozen=True)
class PredictionsKey:
    level: float
    budget: float | None
    filters: Filters
    end_ms: int


@dataclass(frozen=True)
class SpendBoundKey:
    filters: Filters
    start_ms: int
    end_ms: int
    steps: int
    level: float


@dataclass(frozen=True)
class Fleet:
    """The fleet-wide (or filtered) series of one metric over complete buckets."""

    metric: str
    filters: Filters
    series: pd.Series[float]
    plan: Plan

    @property
    def end_ms(self) -> int:
        return self.plan.end_ms


class Analytics:
    """Plans, loads, fits and caches; raises ``QueryError`` for a plan that cannot be
    made and ``jobs.JobInputError`` for data that cannot be fitted."""

    def __init__(
        self, reader: Reader, tiers: Sequence[Tier], pool: AnalyticsPool, cache: ResultCache
    ) -> None:
        self.reader = reader
        self.tiers = tiers
        self.pool = pool
        self.cache = cache

    def plan(
        self,
        *,
        start_ms: int,
        end_ms: int,
        step_ms: int | None,
        now_ms: int,
        group_by: str = "none",
        filters: Mapping[str, str] | None = None,
        keep_step: bool = False,
    ) -> Plan:
        return plan(
            self.tiers,
            start_ms=start_ms,
            end_ms=end_ms,
            step_ms=step_ms,
            now_ms=now_ms,
            group_by=group_by,
            filters=dict(filters or {}),
            keep_step=keep_step,
        )

    async def load(self, p: Plan, metric: str) -> pd.DataFrame:
        return await load_plan(self.reader, p, metric)

    async def fleet(
        self,
        metric: str,
        *,
        step_ms: int,
        span_ms: int,
        filters: Mapping[str, str],
        now_ms: int,
        keep_step: bool = True,
    ) -> Fleet:
        """``span_ms`` of complete buckets (two at least: a model needs two points);
        with ``keep_step`` (a model's step) a longer span is cut short instead."""
        end = complete_end(now_ms, step_ms)
        p = self.plan(
            start_ms=end - max(span_ms, 2 * step_ms),
            end_ms=end,
            step_ms=step_ms,
            now_ms=now_ms,
            filters=filters,
            keep_step=keep_step,
        )
        series = fleet_series(await self.load(p, metric), metric)
        return Fleet(metric, filters_key(filters), series, p)

    async def _fit(self, key: object, ttl_s: float, fn: Any, *args: Any) -> Any:
        async def compute() -> Any:
            return await self.pool.run(fn, *args)

        return await self.cache.get(key, ttl_s, compute)

    async def trends(
        self,
        metric: str,
        *,
        window_ms: int,
        window: str,
        group_by: str,
        filters: Mapping[str, str],
        now_ms: int,
    ) -> tuple[list[dict[str, Any]], Plan]:
        """Per group, the last ``window`` against the one before it."""
        step = trend_step(window_ms)
        end = complete_end(now_ms, step)
        p = self.plan(
            start_ms=end - 2 * window_ms,
            end_ms=end,
            step_ms=step,
            now_ms=now_ms,
            group_by=group_by,
            filters=filters,
        )
        frame = await self.load(p, metric)
        key = TrendsKey(metric, window_ms, group_by, filters_key(filters), end)
        return list(await self._fit(key, step / 1000, jobs.trends, frame, window)), p

    async def forecast(self, fleet: Fleet, steps: int, levels: tuple[float, ...]) -> dict[str, Any]:
        p = fleet.plan
        key = ForecastKey(
            fleet.metric, fleet.filters, p.start_ms, p.end_ms, p.step_ms, steps, levels
        )
        ttl = max(60.0, p.step_ms / 1000)
        return dict(await self._fit(key, ttl, jobs.forecast, fleet.series, steps, levels))

    async def anomalies(self, fleet: Fleet, threshold: float) -> list[dict[str, Any]]:
        p = fleet.plan
        key = AnomaliesKey(fleet.metric, fleet.filters, p.start_ms, p.end_ms, p.step_ms, threshold)
        ttl = max(60.0, p.step_ms / 1000)
        return list(await self._fit(key, ttl, jobs.anomalies, fleet.series, threshold))

    async def predictions(
        self, *, level: float, budget: float | None, filters: Mapping[str, str], now_ms: int
    ) -> tuple[dict[str, Any], Plan]:
        """Month-end cost and budget run-out, from 30 days of complete hours."""
        cost = await self.fleet(
            "cost_usd",
            step_ms=HOUR,
            span_ms=30 * DAY,
            filters=filters,
            now_ms=now_ms,
            keep_step=False,
        )
        month_cost = jobs.month_to_date(cost.series, cost.end_ms)
        key = PredictionsKey(level, budget, cost.filters, cost.end_ms)
        args = (cost.series, month_cost, budget, level)
        return dict(await self._fit(key, 300.0, jobs.predictions, *args)), cost.plan

    def cached_predictions(self, level: float, filters: Filters = ()) -> dict[str, Any] | None:
        """The newest fitted fleet projection at ``level``, without fitting anything."""
        found = self.cache.peek(
            lambda k: isinstance(k, PredictionsKey) and k.level == level and k.filters == filters
        )
        return None if found is None else dict(found)

    async def spend_bound(self, cost: Fleet, steps: int, level: float) -> tuple[float, float]:
        """Expected spend over the last ``steps`` buckets of ``cost`` and its upper
        bound at ``level``, forecast from the buckets before them (cost-burn alerts)."""
        p = cost.plan
        key = SpendBoundKey(cost.filters, p.start_ms, p.end_ms, steps, level)
        history = cost.series.iloc[:-steps]
        bound = await self._fit(key, 3600.0, jobs.spend_bound, history, steps, level)
        return cast(tuple[float, float], bound)
