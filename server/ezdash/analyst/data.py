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
from ..analysis.loader import fleet_series
from ..analysis.pool import AnalyticsPool, ResultCache
from ..analysis.service import Analytics, Filters, Fleet, complete_end, forecast_steps
from ..keys import Keys
from ..metrics.catalog import COUNTER_METRICS
from ..metrics.query import Plan, Reader, fmt_step
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
    fleet: Fleet

    @property
    def total(self) -> pd.Series[float]:
        return self.fleet.series

    @property
    def plan(self) -> Plan:
        return self.fleet.plan

    @property
    def end_ms(self) -> int:
        return self.fleet.end_ms


class AnalystData:
    """The page's reads and fits, through the analytics service the API uses."""

    def __init__(self, settings: Settings, redis_url: str, pool: AnalyticsPool) -> None:
        self.settings = settings
        self.redis = make_redis(redis_url, 16)
        self.raw = make_redis(redis_url, 16, decode=False)
        self.keys = Keys(settings.redis_prefix)
        reader = Reader(self.redis, self.raw, self.keys.metrics)
        scripts = Scripts(self.redis)
        self.tasks = TaskStore(self.redis, self.keys, scripts, events_maxlen=settings.events_maxlen)
        self.alert_store = AlertStore(
            self.redis,
            self.keys,
            scripts,
            retention_ms=int(settings.alert_retention * 1000),
            events_maxlen=settings.events_maxlen,
        )
        # Shared by every session of this process: answers change only when a new
        # bucket completes, so a page refreshing each minute (or ten analysts looking
        # at the same view) costs one fit per bucket.
        self.cache = ResultCache(256)
        self.analytics = Analytics(reader, parse_tiers(settings.rollup_tiers), pool, self.cache)

    async def close(self) -> None:
        await self.redis.aclose()
        await self.raw.aclose()

    async def now_ms(self) -> int:
        sec, usec = await self.redis.time()
        return int(sec) * 1000 + int(usec) // 1000

    def _window(self, q: Query, now_ms: int, group_by: str, filters: Filters) -> Plan:
        end = complete_end(now_ms, q.step_ms)
        return self.analytics.plan(
            start_ms=end - q.window_ms,
            end_ms=end,
            step_ms=q.step_ms,
            now_ms=now_ms,
            group_by=group_by,
            filters=dict(filters),
        )

    async def load(self, q: Query, now_ms: int) -> Loaded:
        """Complete buckets only: a half-filled current hour would read as a drop."""
        p = self._window(q, now_ms, q.group_by, q.filters)
        frame = await self.analytics.load(p, q.metric)
        if q.group_by == "none":
            fleet = Fleet(q.metric, q.filters, fleet_series(frame, q.metric), p)
        else:
            # The fleet line is loaded, not summed: rates and percentiles do not add up.
            whole = self._window(q, now_ms, "none", q.filters)
            series = fleet_series(await self.analytics.load(whole, q.metric), q.metric)
            fleet = Fleet(q.metric, q.filters, series, whole)
        if q.metric in COUNTER_METRICS:
            frame = frame.fillna(0.0)
        return Loaded(frame, fleet)

    async def alerts(self) -> list[dict[str, Any]]:
        """Alerts firing now (the server evaluates the rules; the page only reads)."""
        view = await self.alert_store.view(recent_limit=0)
        return list(view["active"])

    async def group_values(self, dim: str, q: Query, now_ms: int) -> list[str]:
        """Values of ``dim`` with data in the query's window, by total requests."""
        frame = await self.analytics.load(self._window(q, now_ms, dim, ()), "requests")
        return [str(c) for c in frame.sum().sort_values(ascending=False).index]

    async def forecast(self, loaded: Loaded, q: Query) -> dict[str, Any]:
        steps = forecast_steps(q.horizon_ms, loaded.plan.step_ms)
        return await self.analytics.forecast(loaded.fleet, steps, (80.0, 95.0))

    async def trends(self, q: Query, now_ms: int) -> list[dict[str, Any]]:
        """Per-group trend over the window against the window before it."""
        items, _ = await self.analytics.trends(
            q.metric,
            window_ms=q.window_ms,
            window=fmt_step(q.window_ms),
            group_by=q.group_by,
            filters=dict(q.filters),
            now_ms=now_ms,
        )
        return items

    async def anomalies(
        self, loaded: Loaded, q: Query, threshold: float = 4.0
    ) -> list[dict[str, Any]]:
        return await self.analytics.anomalies(loaded.fleet, threshold)

    async def predictions(self, now_ms: int, q: Query) -> dict[str, Any]:
        """Month-end cost and budget run-out from 30 days of complete hours, as the API."""
        out, _ = await self.analytics.predictions(
            level=80.0,
            budget=self.settings.monthly_budget_usd,
            filters=dict(q.filters),
            now_ms=now_ms,
        )
        out["queues"] = await self.tasks.queue_stats(now_ms)
        return out
