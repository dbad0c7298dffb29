"""Analytics endpoints over real rollups: history, trends, forecast, anomalies,
predictions and summary; bad input is a 422 naming the parameter; fits run off the
event loop, so /api/health stays fast while twenty forecasts are computed."""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient

from .conftest import ADMIN_KEY, Api

HOUR = 3_600_000


def hourly_events(
    now: int, hours: int, *, seed: int = 1, spike_at: int | None = None, growth: float = 0.0
) -> list[dict[str, Any]]:
    """Requests per hour with a daily cycle (and optional growth and one spike)."""
    rng = random.Random(seed)
    events = []
    end = now // HOUR * HOUR
    for h in range(hours, 0, -1):
        start = end - h * HOUR
        hour_of_day = (start // HOUR) % 24
        rate = 6 + 4 * math.sin(2 * math.pi * hour_of_day / 24) + growth * (hours - h)
        n = max(0, int(rng.gauss(rate, 1)))
        if spike_at is not None and h == spike_at:
            n = 60
        for _ in range(n):
            events.append(
                {
                    "ts": (start + rng.randrange(HOUR)) / 1000,
                    "agent_id": "a1",
                    "model": "gpt-4o",
                    "provider": "openai",
                    "input_tokens": 1000,
                    "output_tokens": 100,
                    "latency_ms": 500.0,
                    "status": "ok",
                }
            )
    return events


async def ingest(api: Api, events: list[dict[str, Any]]) -> None:
    for i in range(0, len(events), 2000):
        r = await api.post("/api/ingest/usage", json=events[i : i + 2000])
        assert r.status == 202, r.json


@pytest.mark.parametrize("settings_overrides", [{"monthly_budget_usd": 5.0}])
async def test_analytics_end_to_end(api: Api) -> None:
    now = await api.services.redis_now_ms()
    await ingest(api, hourly_events(now, 24 * 8, spike_at=30, growth=0.05))

    hist = (await api.get("/api/analytics/history?metric=requests&from=now-8d&step=1h")).json
    perf = (await api.get("/api/metrics/performance?from=now-8d&step=1h")).json
    assert hist["series"][0]["values"]["requests"] == perf["series"][0]["values"]["requests"]
    assert hist["metric"] == "requests" and hist["stats"]["tier"] == "1h"

    trends = (await api.get("/api/analytics/trends?metric=requests&window=72h")).json
    item = trends["items"][0]
    assert item["direction"] in ("up", "flat") and item["slope_per_day"] > 0
    assert 0 <= item["p_value"] <= 1 and item["group"] == {}

    fc = (await api.get("/api/analytics/forecast?metric=requests&horizon=24h&history=7d")).json
    assert len(fc["t"]) == len(fc["mean"]) == 24 and fc["horizon"] == 24
    for i in range(24):
        assert 0 <= fc["lower_95"][i] <= fc["lower_80"][i] <= fc["mean"][i] <= fc["upper_80"][i]
        assert fc["upper_80"][i] <= fc["upper_95"][i]
    assert fc["model"] and fc["backtest"]["mase"] is not None
    assert fc["t"][0] > fc["history"]["t"][-1]

    anomalies = (await api.get("/api/analytics/anomalies?metric=requests&window=7d")).json
    spike_hour = now // HOUR * HOUR - 30 * HOUR
    assert any(
        a["kind"] == "spike"
        and a["direction"] == "up"
        and a["value"] == 60
        and abs(_ms(a["ts"]) - spike_hour) <= HOUR
        for a in anomalies["items"]
    )

    pred = (await api.get("/api/analytics/predictions")).json
    month = pred["month_end_cost"]
    assert month["lower"] <= month["projected"] <= month["upper"]
    assert month["projected"] >= month["spent"] >= 0
    assert pred["budget"]["budget_usd"] == 5.0 and "date" in pred["budget"]

    summary = (await api.get("/api/summary")).json
    assert summary["tokens"]["today"] > 0 and summary["cost_usd"]["month_to_date"] > 0
    assert summary["cost_usd"]["projected_month_end"]["projected"] > 0
    assert summary["tasks_24h"]["queued"] == 0 and summary["alerts"] == []
    hits = api.services.cache.hits
    await api.get("/api/summary")
    assert api.services.cache.hits == hits + 1  # polling costs nothing


async def test_health_stays_fast_during_twenty_forecasts(api: Api) -> None:
    now = await api.services.redis_now_ms()
    await ingest(api, hourly_events(now, 24 * 8, seed=4))
    await api.services.pool.warm_up()
    # the forecasts get their own client, so no health probe waits for a client slot
    many = AsyncHTTPClient(force_instance=True, max_clients=32)
    probe = AsyncHTTPClient(force_instance=True)
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    forecasts = [
        asyncio.ensure_future(
            many.fetch(
                f"{api.base}/api/analytics/forecast?metric=requests&horizon={h}h&history=7d",
                headers=auth,
                request_timeout=120,
            )
        )
        for h in range(4, 24)  # twenty distinct queries: no cache can answer them
    ]
    latencies = []
    try:
        while not all(f.done() for f in forecasts):
            t0 = time.perf_counter()
            r = await probe.fetch(f"{api.base}/api/health")
            latencies.append(time.perf_counter() - t0)
            assert r.code == 200
            await asyncio.sleep(0.02)
        results = [f.result() for f in forecasts]
    finally:
        many.close()
        probe.close()
    assert all(r.code == 200 for r in results)
    assert len(latencies) >= 5  # the forecasts took a while, and health kept answering
    p99 = sorted(latencies)[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    assert p99 < 0.5, (p99, statistics.median(latencies), [round(x, 3) for x in latencies])


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/analytics/history?from=now-1d", "metric"),
        ("/api/analytics/history?metric=happiness", "metric"),
        ("/api/analytics/trends?metric=requests&window=90m", "window"),
        ("/api/analytics/forecast?metric=requests&levels=80,120", "levels"),
        ("/api/analytics/forecast?metric=requests&levels=eighty", "levels"),
        ("/api/analytics/anomalies?metric=requests&threshold=x", "threshold"),
        ("/api/analytics/anomalies?metric=requests&threshold=1", "threshold"),
        ("/api/analytics/predictions?level=100", "level"),
        ("/api/analytics/forecast?metric=requests&colour=red", "colour"),
    ],
)
async def test_bad_analytics_queries(api: Api, path: str, field: str) -> None:
    r = await api.get(path)
    assert r.status in (400, 422), r.json
    assert r.json["errors"][0]["field"] == field, r.json


async def test_forecast_of_an_empty_store_is_sensible(api: Api) -> None:
    r = await api.get("/api/analytics/forecast?metric=cost_usd&horizon=6h&history=2d")
    assert r.status in (200, 409), r.json
    if r.status == 200:
        assert all(v == 0 for v in r.json["mean"])
    else:
        assert r.json["type"].endswith("/not-enough-data")


def _ms(text: str) -> int:
    from ezdash.timeutil import parse_time

    return parse_time(text)


async def test_horizons_are_whole_steps_and_capped(api: Api) -> None:
    """Schema-valid horizons are answered: rounded up to whole steps, at most 2000."""
    r = await api.get("/api/analytics/forecast?metric=requests&step=7m&horizon=1h&history=1d")
    assert r.status == 200, r.json
    assert r.json["horizon"] == 9 and r.json["step"] == "7m"
    r = await api.get("/api/analytics/forecast?metric=requests&horizon=3000d&history=2d")
    assert r.status == 200, r.json
    assert r.json["horizon"] == 2000 and len(r.json["mean"]) == 2000
