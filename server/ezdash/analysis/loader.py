"""The loading layer: rollups in Redis -> pandas objects for ``analytics``.

Server-side, so the pure core (``analytics``) imports nothing of the server. The
API, the alert engine, the Panel page and the notebooks all load through
``load_plan``/``load_metric``; notebooks use the synchronous :class:`RedisSource`,
and ``analytics.files`` reads and writes exported loads to work offline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from redis.asyncio import Redis

from ..keys import Keys
from ..metrics.catalog import COUNTER_METRICS, METRIC, METRIC_NAMES
from ..metrics.query import Plan, Reader, percentiles, plan
from ..metrics.rollup import DEFAULT_TIERS, Tier, parse_tiers
from ..timeutil import now_ms as wall_now_ms
from ..timeutil import parse_duration, parse_time

T = TypeVar("T")
METRICS = METRIC_NAMES
NONNEGATIVE = frozenset(METRICS)
"""Every metric the dashboard shows is a count, an amount, a rate or a duration."""


def index_for(p: Plan) -> pd.DatetimeIndex:
    return pd.date_range(
        pd.Timestamp(p.start_ms, unit="ms", tz="UTC"),
        periods=p.buckets,
        freq=pd.Timedelta(milliseconds=p.step_ms),
    )


async def load_plan(reader: Reader, p: Plan, metric: str) -> pd.DataFrame:
    """One column per group (``"all"`` without group_by), one row per bucket; counters
    zero-filled, rates and percentiles NaN where there is no data."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; one of {', '.join(METRICS)}")
    groups = await reader.groups(p)
    stored = [g for g, _ in groups]
    labels = [label if p.label else "all" for _, label in groups]
    index = index_for(p)
    columns: dict[str, Any] = {}
    m = METRIC[metric]
    if m.counters:
        data = await reader.counters(p, stored, list(m.counters))
        for g, label in zip(stored, labels, strict=True):
            total = np.zeros(p.buckets, dtype=np.int64)
            for c in m.counters:
                total = total + data[(g, c)]
            columns[label] = total / m.divisor if m.divisor != 1.0 else total
    elif m.ratio is not None:
        data = await reader.counters(p, stored, ["errors", "requests"])
        for g, label in zip(stored, labels, strict=True):
            req = data[(g, "requests")].astype(float)
            err = data[(g, "errors")].astype(float)
            num = err if m.ratio[0] == "errors" else req - err
            with np.errstate(invalid="ignore", divide="ignore"):
                columns[label] = np.where(req > 0, num / np.where(req > 0, req, 1), np.nan)
    else:
        assert m.histogram is not None
        name, q = m.histogram
        hists = await reader.histograms(p, stored, name)
        for g, label in zip(stored, labels, strict=True):
            (qvalues,) = percentiles(hists[g], (q,))
            columns[label] = np.array([np.nan if v is None else v / m.divisor for v in qvalues])
    frame = pd.DataFrame(columns, index=index)
    frame.index.name = "ts"
    frame.columns.name = p.label or "group"
    return frame


def fleet_series(frame: pd.DataFrame, metric: str) -> pd.Series[float]:
    """The single column of an ungrouped load as floats: zeros when nothing was
    recorded at all (no group has data), counters zero-filled, rates and percentiles
    NaN where there was no data."""
    if len(frame.columns):
        series = frame.iloc[:, 0].astype(float)
    else:
        series = pd.Series(np.zeros(len(frame.index)), index=frame.index, dtype=float)
    if metric in COUNTER_METRICS:
        series = series.fillna(0.0)
    return series.rename("all")


async def load_metric(
    reader: Reader,
    tiers: Sequence[Tier],
    *,
    metric: str,
    start_ms: int,
    end_ms: int,
    now_ms: int,
    step_ms: int | None = None,
    group_by: str = "none",
    filters: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, Plan]:
    p = plan(
        tiers,
        start_ms=start_ms,
        end_ms=end_ms,
        step_ms=step_ms,
        now_ms=now_ms,
        group_by=group_by,
        filters=filters or {},
    )
    return await load_plan(reader, p, metric), p


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, also where an event loop
    is already running (a Jupyter kernel, a Panel server): then in a thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


class RedisSource:
    """Synchronous access for notebooks and scripts::

    src = RedisSource("redis://127.0.0.1:6379/0")
    cost = src.load("cost_usd", start="now-30d", step="1h", group_by="model")
    """

    def __init__(self, redis_url: str, *, prefix: str = "ez", tiers: str = DEFAULT_TIERS) -> None:
        self.url = redis_url
        self.keys = Keys(prefix)
        self.tiers = parse_tiers(tiers)

    def load(
        self,
        metric: str,
        *,
        start: str = "now-7d",
        end: str = "now",
        step: str | None = None,
        group_by: str = "none",
        **filters: str,
    ) -> pd.DataFrame:
        return run_sync(self._load(metric, start, end, step, group_by, filters))

    async def _load(
        self,
        metric: str,
        start: str,
        end: str,
        step: str | None,
        group_by: str,
        filters: dict[str, str],
    ) -> pd.DataFrame:
        redis = Redis.from_url(self.url, decode_responses=True)
        raw = Redis.from_url(self.url)
        try:
            sec, usec = await redis.time()
            now = int(sec) * 1000 + int(usec) // 1000
            frame, _ = await load_metric(
                Reader(redis, raw, self.keys.metrics),
                self.tiers,
                metric=metric,
                start_ms=parse_time(start, now=now),
                end_ms=parse_time(end, now=now),
                now_ms=now,
                step_ms=int(parse_duration(step) * 1000) if step else None,
                group_by=group_by,
                filters=filters,
            )
            return frame
        finally:
            await redis.aclose()
            await raw.aclose()


__all__ = [
    "METRICS",
    "NONNEGATIVE",
    "RedisSource",
    "fleet_series",
    "load_metric",
    "load_plan",
    "wall_now_ms",
]
