"""What the analyst page reads and computes, with no Panel inside.

Loading goes through :mod:`ezdash.analysis.loader` and fits through the same worker jobs
the API runs (``ezdash.analysis.jobs``), so the page and the API cannot disagree
about a number. Everything here is a coroutine: Redis reads are awaited on the
page's event loop, fits run in worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..alerts.store import AlertStore
from ..analysis import jobs
from ..analysis.loader import fleet_series, load_plan
from ..analysis.pool import AnalyticsPool, ResultCache
from ..keys import Keys
from ..metrics.catalog import COUNTER_METRICS
from ..metrics.query import Plan, Reader, plan
from ..metrics.rollup import parse_tiers
from ..settings import Settings
from ..store.connect import make_redis
from ..store.scripts import Scripts
from ..store.tasks import TaskStore

HOUR = 3_600_000
DAY = 86_400_000


@dataclass(frozen=True)
class Query:
    """One view of the page: a metric over a window, at a step, maybe grouped."""

    metric: str = "cost_usd"
    window_ms: int = 7 * DAY
    step_ms: int = HOUR
    group_by: str = "none"
    horizon_ms: int = 2 * DAY
    filters: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Loaded:
    """The frame of complete buckets for a query, and the fleet-wide series of it."""

    frame: pd.DataFrame
    total: pd.Series[float]
    plan: Plan
    end_ms: int


class AnalystData:
    def __init__(self, settings: Settings, redis_url: str, pool: AnalyticsPool) -> None:
        self.settings = settings
        self.redis = make_redis(redis_url, 16)
        self.raw = make_redis(redis_url, 16, decode=False)
        self.keys = Keys(settings.redis_prefix)
        self.reader = Reader(self.redis, self.raw, self.keys.metrics)
        self.tiers = parse_tiers(settings.rollup_tiers)
        scripts = Scripts(self.redis)
        self.tasks = TaskStore(self.redis, self.keys, scripts, events_maxlen=settings.events_maxlen)
        self.alert_store = AlertStore(
            self.redis,
            self.keys,
            scripts,
            retention_ms=int(settings.alert_retention * 1000),
            events_maxlen=settings.events_maxlen,
        )
        self.pool = pool
        # Shared by every session of this process: answers change only when a new
        # bucket completes, so a page refreshing each minute (or ten analysts looking
        # at the same view) costs one fit per bucket.
        self.cache = ResultCache(256)

    async def close(self) -> None:
        await self.redis.aclose()
        await self.raw.aclose()

    async def now_ms(self) -> int:
        sec, usec = await self.redis.time()
        return int(sec) * 1000 + int(usec) // 1000

    async def load(self, q: Query, now_ms: int) -> Loaded:
        """Complete buckets only: a half-filled current hour would read as a drop."""
        end = now_ms // q.step_ms * q.step_ms
        p = plan(
            self.tiers,
            start_ms=end - q.window_ms,
            end_ms=end,
            step_ms=q.step_ms,
            now_ms=now_ms,
            group_by=q.group_by,
            filters=dict(q.filters),
        )
        frame = await load_plan(self.reader, p, q.metric)
        if q.group_by == "none":
            total = fleet_series(frame, q.metric)
        else:
            # The fleet line is loaded, not summed: rates and percentiles do not add up.
            fleet = plan(
                self.tiers,
                start_ms=p.start_ms,
                end_ms=end,
                step_ms=p.step_ms,
                now_ms=now_ms,
                group_by="none",
                filters=dict(q.filters),
            )
            total = fleet_series(await load_plan(self.reader, fleet, q.metric), q.metric)
        if q.metric in COUNTER_METRICS:
            frame = frame.fillna(0.0)
        return Loaded(frame, total, p, end)

    async def _cached(self, key: tuple[Any, ...], ttl_s: float, fn: Any, *args: Any) -> Any:
        async def compute() -> Any:
            return await self.pool.run(fn, *args)

        return await self.cache.get(key, ttl_s, compute)

    async def alerts(self) -> list[dict[str, Any]]:
        """Alerts firing now (the server evaluates the rules; the page only reads)."""
        view = await self.alert_store.view(recent_limit=0)
        return list(view["active"])

    async def group_values(self, dim: str, q: Query, now_ms: int) -> list[str]:
        """Values of ``dim`` with data in the query's window, by total requests."""
        end = now_ms // q.step_ms * q.step_ms
        p = plan(
            self.tiers,
            start_ms=end - q.window_ms,
            end_ms=end,
            step_ms=q.step_ms,
            now_ms=now_ms,
            group_by=dim,
            filters={},
        )
        frame = await load_plan(self.reader, p, "requests")
        return [str(c) for c in frame.sum().sort_values(ascending=False).index]

    async def forecast(self, loaded: Loaded, q: Query) -> dict[str, Any]:
        steps = max(1, q.horizon_ms // loaded.plan.step_ms)
        key = ("forecast", q.metric, q.window_ms, q.step_ms, steps, q.filters, loaded.end_ms)
        ttl = max(60.0, q.step_ms / 1000)
        return dict(await self._cached(key, ttl, jobs.forecast, loaded.total, steps, (80.0, 95.0)))

    async def trends(self, q: Query, now_ms: int) -> list[dict[str, Any]]:
        """Per-group trend over the window against the window before it."""
        step = HOUR if q.window_ms <= 30 * DAY else DAY
        end = now_ms // step * step
        p = plan(
            self.tiers,
            start_ms=end - 2 * q.window_ms,
            end_ms=end,
            step_ms=step,
            now_ms=now_ms,
            group_by=q.group_by,
            filters=dict(q.filters),
        )
        frame = await load_plan(self.reader, p, q.metric)
        window = f"{q.window_ms // HOUR}h"
        key = ("trends", q.metric, q.window_ms, q.group_by, q.filters, end)
        return list(await self._cached(key, step / 1000, jobs.trends, frame, window))

    async def anomalies(
        self, loaded: Loaded, q: Query, threshold: float = 4.0
    ) -> list[dict[str, Any]]:
        key = ("anomalies", q.metric, q.window_ms, q.step_ms, q.filters, threshold, loaded.end_ms)
        ttl = max(60.0, loaded.plan.step_ms / 1000)
        return list(await self._cached(key, ttl, jobs.anomalies, loaded.total, threshold))

    async def predictions(self, now_ms: int, q: Query) -> dict[str, Any]:
        """Month-end cost and budget run-out from 30 days of complete hours, as the API."""
        end = now_ms // HOUR * HOUR
        p = plan(
            self.tiers,
            start_ms=end - 30 * DAY,
            end_ms=end,
            step_ms=HOUR,
            now_ms=now_ms,
            group_by="none",
            filters=dict(q.filters),
        )
        cost = fleet_series(await load_plan(self.reader, p, "cost_usd"), "cost_usd")
        month_cost = jobs.month_to_date(cost, end)
        budget = self.settings.monthly_budget_usd
        key = ("predictions", budget, q.filters, end)
        out = dict(await self._cached(key, 300.0, jobs.predictions, cost, month_cost, budget, 80.0))
        out["queues"] = await self.tasks.queue_stats(now_ms)
        return out
