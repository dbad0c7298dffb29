"""Analytics over the rollups: history, trends, forecasts, anomalies, predictions, and
the dashboard's front page (summary).  Fits run in worker processes, answers are
cached by query and newest complete bucket (see ``ezdash.analysis.pool``)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from ..analysis import jobs
from ..analysis.loader import METRICS, load_plan
from ..analysis.service import Fleet, forecast_steps
from ..metrics.histogram import merge
from ..metrics.pricing import nanos_to_usd
from ..metrics.query import QueryError, envelope, fmt_step, percentiles, stats
from ..timeutil import format_ms, parse_duration
from .errors import Problem, invalid
from .metrics import FILTER_ONLY, METRICS_QUERY, SLICE, MetricsHandler
from .opdocs import Op, ok, problem
from .params import WHOLE_HOURS, WHOLE_SECONDS, Choice, Duration, Number, Percentages

T = TypeVar("T")
HOUR = 3_600_000
DAY = 86_400_000


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [
        None if (isinstance(v, float) and math.isnan(v)) else round(float(v), 9)
        for v in values.tolist()
    ]


METRIC = Choice("metric", "A metric name", values=tuple(METRICS), required=True)


def hours(name: str, description: str) -> Duration:
    return Duration(
        name, description, pattern=WHOLE_HOURS, hint="must be whole hours, e.g. 6h, 7d, 2w"
    )


WINDOW = hours("window", "Window in whole hours; default 7d")
ANALYTICS_STEP = Duration(
    "step",
    "Bucket size in whole seconds; default 1h",
    pattern=WHOLE_SECONDS,
    hint="must be a whole number of seconds, e.g. 60s, 5m, 1h",
)
TOO_LITTLE_DATA = problem("Not enough data in the range to fit")


class AnalyticsHandler(MetricsHandler):
    query = {"GET": (METRIC, *METRICS_QUERY)}

    def metric(self) -> str:
        metric: str = self.args["metric"]
        return metric

    def window(self, name: str, default: str) -> tuple[int, str]:
        seconds = self.q_duration(name, parse_duration(default))
        assert seconds is not None
        return int(seconds * 1000), fmt_step(int(seconds * 1000))

    def step_ms(self) -> int:
        """The fitted series' step: at most half the longest retention (a model needs
        two points); the answer says the step used."""
        seconds = self.q_duration("step", 3600.0)
        assert seconds is not None
        longest = self.services.tiers[-1].retention_ms // 2 // DAY * DAY
        return min(int(seconds * 1000), longest)

    async def fleet(self, metric: str, step: int, span_ms: int, span_field: str) -> Fleet:
        """The fleet-wide (or filtered) series of complete buckets over ``span_ms``;
        the step is the model's, so a longer history is cut short."""
        now = await self.services.redis_now_ms()
        work = self.services.analytics.fleet(
            metric, step_ms=step, span_ms=span_ms, filters=self.filters(), now_ms=now
        )
        return await self.answer(work, **{"from": span_field})

    async def answer(self, work: Awaitable[T], **renamed: str) -> T:
        """The service's answer, or the problem the request makes: a plan refused for
        its ``step`` or ``from`` is refused for the parameter that set them here (a
        window, a history), named in ``renamed``."""
        try:
            return await work
        except QueryError as e:
            raise invalid(renamed.get(e.field, e.field), str(e)) from None
        except jobs.JobInputError as e:
            if e.field == "series":
                # The request is fine; the data in its range cannot be fitted (a rate or
                # percentile with no calls in it): the state of the store, not the input.
                raise Problem(
                    409,
                    f"not enough data in this range to fit: {e.message}",
                    type="not-enough-data",
                ) from None
            raise invalid(e.field, e.message) from None


class HistoryHandler(AnalyticsHandler):
    docs = {"GET": Op("Any metric at any step, columnar", {"200": ok("HistoryAnswer")})}

    async def get(self) -> None:
        started = time.perf_counter()
        metric = self.metric()
        p, group_by = await self.plan()
        frame = await load_plan(self.services.metrics, p, metric)
        series = [
            {
                "group": {} if p.label is None else {p.label: str(col)},
                "values": {metric: _nan_to_none(frame[col].to_numpy(dtype=float))},
            }
            for col in frame.columns
        ]
        self.write_json(
            envelope(
                p, group_by, series, {}, await self.services.metrics.as_of(), started, metric=metric
            )
        )


class TrendsHandler(AnalyticsHandler):
    docs = {
        "GET": Op(
            "Slope per day, change against the previous window, direction with p-value, "
            "seasonality strength, per group",
            {"200": ok("TrendsAnswer"), "409": TOO_LITTLE_DATA},
        )
    }
    query = {"GET": (METRIC, WINDOW, SLICE)}

    async def get(self) -> None:
        started = time.perf_counter()
        metric = self.metric()
        window_ms, window = self.window("window", "7d")
        # Two windows are compared: at most half of what is kept (the answer says).
        longest = self.services.tiers[-1].retention_ms // 2 // HOUR * HOUR
        if window_ms > longest:
            window_ms, window = longest, fmt_step(longest)
        group_by = self.q_str("group_by") or "none"
        svc = self.services
        now = await svc.redis_now_ms()
        work = svc.analytics.trends(
            metric,
            window_ms=window_ms,
            window=window,
            group_by=group_by,
            filters=self.filters(),
            now_ms=now,
        )
        items, p = await self.answer(work, step="window", **{"from": "window"})
        self.write_json(
            {
                "metric": metric,
                "window": window,
                "group_by": group_by,
                "items": [
                    {
                        **{k: v for k, v in it.items() if k != "group"},
                        "group": {} if p.label is None else {p.label: it["group"]},
                    }
                    for it in items
                ],
                "as_of": await svc.metrics.as_of(),
                "stats": stats(p, started),
            }
        )


class ForecastHandler(AnalyticsHandler):
    docs = {
        "GET": Op(
            "Forecast with prediction intervals and its backtest",
            {"200": ok("ForecastAnswer"), "409": TOO_LITTLE_DATA},
        )
    }
    query = {
        "GET": (
            METRIC,
            hours("horizon", "How far ahead, whole hours; default 7d"),
            ANALYTICS_STEP,
            Percentages("levels", "Interval levels, default 80,95"),
            hours("history", "History fitted, whole hours; default 30d"),
            FILTER_ONLY,
        )
    }

    async def get(self) -> None:
        started = time.perf_counter()
        metric = self.metric()
        svc = self.services
        step = self.step_ms()
        horizon_ms, _ = self.window("horizon", "7d")
        history_ms, _ = self.window("history", "30d")
        steps = forecast_steps(horizon_ms, step)
        levels = self.levels()
        fleet = await self.fleet(metric, step, history_ms, "history")
        result = await self.answer(svc.analytics.forecast(fleet, steps, levels))
        p, series = fleet.plan, fleet.series
        self.write_json(
            {
                "metric": metric,
                "step": fmt_step(step),
                "horizon": steps,
                **result,
                "history": {
                    "t": [format_ms(p.start_ms + i * step) for i in range(p.buckets)],
                    "values": _nan_to_none(series.to_numpy(dtype=float)),
                },
                "as_of": await svc.metrics.as_of(),
                "stats": stats(p, started),
            }
        )

    def levels(self) -> tuple[float, ...]:
        levels: tuple[float, ...] = self.args.get("levels", (80.0, 95.0))
        return levels


class AnomaliesHandler(AnalyticsHandler):
    docs = {
        "GET": Op(
            "Points that break the learned pattern",
            {"200": ok("AnomaliesAnswer"), "409": TOO_LITTLE_DATA},
        )
    }
    query = {
        "GET": (
            METRIC,
            WINDOW,
            ANALYTICS_STEP,
            Number("threshold", "Robust sigmas (2-20), default 4", lo=2, hi=20),
            FILTER_ONLY,
        )
    }

    async def get(self) -> None:
        started = time.perf_counter()
        metric = self.metric()
        svc = self.services
        window_ms, window = self.window("window", "7d")
        step = self.step_ms()
        threshold = float(self.args.get("threshold", 4.0))
        fleet = await self.fleet(metric, step, window_ms, "window")
        items = await self.answer(svc.analytics.anomalies(fleet, threshold))
        p = fleet.plan
        self.write_json(
            {
                "metric": metric,
                "window": window,
                "items": items,
                "as_of": await svc.metrics.as_of(),
                "stats": stats(p, started),
            }
        )


class PredictionsHandler(AnalyticsHandler):
    docs = {
        "GET": Op(
            "Month-end cost with interval, budget run-out, drain ETA per queue",
            {"200": ok("PredictionsAnswer"), "409": TOO_LITTLE_DATA},
        )
    }
    query = {
        "GET": (
            Number(
                "level",
                "Interval level in percent, default 80",
                lo=0,
                hi=100,
                exclusive_lo=True,
                exclusive_hi=True,
            ),
            FILTER_ONLY,
        )
    }

    async def get(self) -> None:
        started = time.perf_counter()
        svc = self.services
        level = float(self.args.get("level", 80.0))
        now = await svc.redis_now_ms()
        result = await predictions(self, now, level)
        result["queues"] = [
            {
                "name": q["name"],
                "depth": q["depth"],
                "arrivals_per_min": q["arrivals_per_min"],
                "throughput_per_min": q["throughput_per_min"],
                "drain_eta_s": q["drain_eta_s"],
            }
            for q in await svc.tasks.queue_stats(now)
        ]
        result["as_of"] = await svc.metrics.as_of()
        result["stats"] = {
            "exec_ms": round((time.perf_counter() - started) * 1000, 3),
            "buckets": 30 * 24,
            "tier": "1h",
        }
        self.write_json(result)


async def predictions(h: AnalyticsHandler, now: int, level: float) -> dict[str, Any]:
    """Month-end cost and budget run-out, from 30 days of complete hours."""
    svc = h.services
    work = svc.analytics.predictions(
        level=level, budget=svc.settings.monthly_budget_usd, filters=h.filters(), now_ms=now
    )
    result, _ = await h.answer(work)
    return result


class SummaryHandler(AnalyticsHandler):
    """The front page in one call, cached for EZ_SUMMARY_CACHE seconds."""

    docs = {"GET": Op("The dashboard front page in one call", {"200": ok("SummaryAnswer")})}
    query = {}

    async def get(self) -> None:
        svc = self.services
        now = await svc.redis_now_ms()
        key = "summary"  # fresh for EZ_SUMMARY_CACHE seconds, whoever asks
        body = await svc.cache.get(key, svc.settings.summary_cache, lambda: summary(self, now))
        self.write_json(body)


async def summary(h: AnalyticsHandler, now: int) -> dict[str, Any]:
    started = time.perf_counter()
    svc = h.services
    agents_task = asyncio.ensure_future(svc.agents.count_by_status())
    queues_task = asyncio.ensure_future(svc.tasks.queue_stats(now))
    tasks_task = asyncio.ensure_future(svc.tasks.counts_since(now - DAY))
    day_start = now // DAY * DAY
    month_start = int(
        pd.Timestamp(now, unit="ms", tz="UTC")
        .replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        .timestamp()
        * 1000
    )
    today = svc.analytics.plan(start_ms=day_start, end_ms=now + 1, step_ms=DAY, now_ms=now)
    mtd = svc.analytics.plan(start_ms=month_start, end_ms=now + 1, step_ms=DAY, now_ms=now)
    hour = svc.analytics.plan(start_ms=now - HOUR, end_ms=now, step_ms=60_000, now_ms=now)
    names = ["input_tokens", "output_tokens", "cost_nanos"]
    t_today, t_mtd, t_hour, lat = await asyncio.gather(
        svc.metrics.counters(today, ["*"], names),
        svc.metrics.counters(mtd, ["*"], names),
        svc.metrics.counters(hour, ["*"], ["requests", "errors"]),
        svc.metrics.histograms(hour, ["*"], "latency"),
    )
    (p95,) = percentiles([merge(*lat["*"])], (0.95,))[0]
    requests = int(t_hour[("*", "requests")].sum())
    errors = int(t_hour[("*", "errors")].sum())
    cached_pred = svc.analytics.cached_predictions(80.0)
    spent_mtd = nanos_to_usd(int(t_mtd[("*", "cost_nanos")].sum()))
    if cached_pred is not None:
        projection = {**cached_pred["month_end_cost"], "method": "forecast"}
    else:  # no fitted projection yet: run rate of the month so far, and fit in background
        elapsed = max(1, now - month_start)
        next_month = pd.Timestamp(month_start, unit="ms", tz="UTC") + pd.offsets.MonthBegin(1)
        month_end = int(next_month.timestamp() * 1000)
        projection = {
            "spent": spent_mtd,
            "projected": round(spent_mtd * (month_end - month_start) / elapsed, 6),
            "lower": None,
            "upper": None,
            "method": "run_rate",
        }
        svc.spawn(_warm_predictions(h, now))
    return {
        "agents": await agents_task,
        "queues": [
            {"name": q["name"], "depth": q["depth"], "oldest_age_s": q["oldest_age_s"]}
            for q in await queues_task
        ],
        "tasks_24h": await tasks_task,
        "tokens": {
            "today": int(
                t_today[("*", "input_tokens")].sum() + t_today[("*", "output_tokens")].sum()
            ),
            "month_to_date": int(
                t_mtd[("*", "input_tokens")].sum() + t_mtd[("*", "output_tokens")].sum()
            ),
        },
        "cost_usd": {
            "today": nanos_to_usd(int(t_today[("*", "cost_nanos")].sum())),
            "month_to_date": spent_mtd,
            "projected_month_end": projection,
        },
        "last_hour": {
            "requests": requests,
            "error_rate": round(errors / requests, 6) if requests else None,
            "latency_p95_ms": p95,
        },
        "alerts": (await svc.alerts.view(recent_limit=0))["active"],
        "as_of": await svc.metrics.as_of(),
        "stats": {
            "exec_ms": round((time.perf_counter() - started) * 1000, 3),
            "buckets": today.buckets + mtd.buckets + hour.buckets,
            "tier": ",".join(sorted({today.tier.name, mtd.tier.name, hour.tier.name})),
        },
    }


async def _warm_predictions(h: AnalyticsHandler, now: int) -> None:
    try:
        await predictions(h, now, 80.0)
    except Exception:  # an empty or too-short history: the run rate stands
        return


default_handlers = [
    (r"/api/summary", SummaryHandler),
    (r"/api/analytics/history", HistoryHandler),
    (r"/api/analytics/trends", TrendsHandler),
    (r"/api/analytics/forecast", ForecastHandler),
    (r"/api/analytics/anomalies", AnomaliesHandler),
    (r"/api/analytics/predictions", PredictionsHandler),
]
