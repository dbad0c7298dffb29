"""The analyst page: the same numbers as the API, sign-in with API keys, and a real
browser session in which the page fills itself in over its WebSocket."""

from __future__ import annotations

import asyncio
import io
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from analytics.files import read_file
from ezdash.analysis.pool import AnalyticsPool
from ezdash.analyst.app import serve_analyst, websocket_origins
from ezdash.analyst.data import DAY, HOUR, AnalystData, Query
from ezdash.analyst.page import AnalystPage
from ezdash.backfill import backfill
from ezdash.settings import Settings

from .conftest import Api, wait_for

pytestmark = pytest.mark.timeout(240)


@dataclass
class Page:
    page: AnalystPage
    data: AnalystData


@pytest.fixture
async def history(api: Api) -> None:
    s = api.services.settings
    assert s.redis_url
    await backfill(s.redis_url, days=3, agents=6, prefix=s.redis_prefix, tiers=s.rollup_tiers)


@pytest.fixture
async def page(api: Api, history: None) -> AsyncIterator[Page]:
    s = api.services.settings
    assert s.redis_url
    pool = AnalyticsPool(1)
    data = AnalystData(s, s.redis_url, pool)
    analyst = AnalystPage(data, user="key_test")
    yield Page(analyst, data)
    await analyst.close()
    pool.close()
    await data.close()


def _fleet_line(page: AnalystPage) -> np.ndarray[Any, Any]:
    fig = page.chart.object
    line = next(r for r in fig.renderers if r.name == "fleet")
    return np.asarray(line.data_source.data["y"], dtype=float)


@pytest.mark.parametrize("settings_overrides", [{"monthly_budget_usd": 50.0}])
async def test_page_shows_what_the_api_answers(api: Api, page: Page) -> None:
    p = page.page
    await p.refresh()
    assert p.status.object.startswith("Complete buckets up to"), p.status.object
    assert p.progress.value == p.progress.max

    # The chart's fleet line is the API's history, bucket for bucket.
    hist = (await api.get("/api/analytics/history?metric=cost_usd&from=now-7d&step=1h")).json
    api_values = np.array(hist["series"][0]["values"]["cost_usd"], dtype=float)
    line = _fleet_line(p)
    assert line.sum() > 0
    assert line.size == 168
    # The page shows complete buckets only; the API's range runs to now.
    np.testing.assert_allclose(line, api_values[-line.size - 1 : -1], atol=1e-9)

    # Trends and month-end figures are the API's (same jobs, same loader).
    trends = (await api.get("/api/analytics/trends?metric=cost_usd&window=7d")).json
    row = p.trends_table.value.iloc[0]
    assert row["slope_per_day"] == pytest.approx(trends["items"][0]["slope_per_day"])
    assert row["direction"] == trends["items"][0]["direction"]
    pred = (await api.get("/api/analytics/predictions")).json
    cards = {c.label: c.value for c in p.kpis.objects}
    assert cards["Month to date"] == f"${pred['month_end_cost']['spent']:,.2f}"
    assert "Budget $50.00 runs out" in cards

    # The forecast is drawn with both intervals and explained with its backtest.
    names = {r.name for r in p.chart.object.renderers}
    assert {"fleet", "forecast"} <= names
    assert "backtest over" in p.model_note.object and "MASE" in p.model_note.object


async def test_grouping_draws_a_line_per_group_and_exports_them(page: Page) -> None:
    p = page.page
    p.group_by.value = "model"
    await p.refresh()
    await wait_for(lambda: _done(p), timeout=60, what="the refresh after choosing group_by=model")
    groups = set(p.loaded.frame.columns) if p.loaded else set()
    assert len(groups) >= 3
    drawn = {r.name for r in p.chart.object.renderers}
    assert groups & drawn == groups  # at most 8 groups: every one is drawn
    assert set(p.trends_table.value["group"]) == groups
    # The grouped lines add up to the fleet line for a counter.
    assert p.loaded is not None
    np.testing.assert_allclose(p.loaded.frame.sum(axis=1).to_numpy(), _fleet_line(p), atol=1e-9)

    # The export reads back with the loader's own file reader.
    text = p._csv().read()
    path = io.StringIO(text)
    back = pd.read_csv(path)
    assert set(back.columns) == {"ts", "group", "value"}


async def test_a_second_refresh_of_the_same_view_fits_nothing(page: Page) -> None:
    p = page.page
    await p.refresh()
    cache = page.data.cache
    misses, hits = cache.misses, cache.hits
    assert misses == 4  # forecast, anomalies, trends, predictions
    await p.refresh()
    assert cache.misses == misses and cache.hits == hits + 4
    assert p.status.object.startswith("Complete buckets up to")


async def test_export_round_trips_through_read_file(page: Page, tmp_path: Any) -> None:
    p = page.page
    await p.refresh()
    target = tmp_path / "cost.csv"
    target.write_text(p._csv().read())
    assert p.loaded is not None
    back = read_file(target)
    np.testing.assert_allclose(back["all"].to_numpy(), p.loaded.frame["all"].to_numpy(), atol=1e-12)


async def test_a_step_too_fine_for_the_window_is_coarsened_and_said(page: Page) -> None:
    p = page.page
    p.window.value = "90 days"
    p.step.value = "5 minutes"
    await p.refresh()
    await wait_for(lambda: _settled(p), timeout=30, what="the refresh to settle")
    assert p.loaded is not None and p.loaded.plan.step_ms > 5 * 60_000
    assert "5 minutes steps are finer than the rollups keep" in p.status.object, p.status.object
    assert re.search(r"showing 1h steps", p.status.object), p.status.object


async def test_a_query_the_page_builds_matches_the_controls(page: Page) -> None:
    p = page.page
    p.metric.value = "requests"
    p.window.value = "24 hours"
    p.horizon.value = "1 day"
    q = p.current_query()
    assert q == Query(metric="requests", window_ms=DAY, step_ms=HOUR, horizon_ms=DAY)


async def _done(p: AnalystPage) -> bool:
    return await _settled(p) and p.status.object.startswith("Complete")


async def _settled(p: AnalystPage) -> bool:
    await asyncio.sleep(0)
    return not str(p.status.object).startswith(("Loading", "Fitting"))


# -- the server: sign-in, revocation, resources ------------------------------------


@dataclass
class Served:
    base: str
    stop: asyncio.Event
    task: asyncio.Task[None]


@pytest.fixture
async def served(api: Api, history: None) -> AsyncIterator[Served]:
    s = api.services.settings
    assert s.redis_url
    settings = Settings(**{**s.model_dump(), "analyst_port": 0})
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(serve_analyst(settings, s.redis_url, ready=ready, stop=stop))
    base = await asyncio.wait_for(ready, 30)
    yield Served(base, stop, task)
    stop.set()
    await asyncio.wait_for(task, 30)


async def _fetch(url: str, **kw: Any) -> HTTPResponse:
    client = AsyncHTTPClient()
    return await client.fetch(url, raise_error=False, follow_redirects=False, **kw)


async def _login(base: str, key: str) -> HTTPResponse:
    return await _fetch(
        base + "login",
        method="POST",
        body=urlencode({"username": "api-key", "password": key}),
    )


def _cookie(resp: HTTPResponse) -> str:
    cookies = resp.headers.get_list("Set-Cookie")
    user = next(c for c in cookies if c.startswith("user="))
    return user.split(";", 1)[0]


async def test_sign_in_with_an_api_key_and_revocation_ends_it(api: Api, served: Served) -> None:
    base = served.base
    first = await _fetch(base)
    assert first.code == 302 and "login" in first.headers["Location"]
    form = await _fetch(base + "login")
    assert form.code == 200 and b'name="password"' in form.body

    bad = await _login(base, "ezk_not-a-key")
    assert bad.code == 302 and "error=" in bad.headers["Location"]
    assert not any(c.startswith("user=") for c in bad.headers.get_list("Set-Cookie"))

    writer = (await api.post("/api/auth/keys", json={"name": "w", "scopes": ["write"]})).json
    refused = await _login(base, writer["key"])
    assert refused.code == 302 and "read" in refused.headers["Location"]

    reader = (await api.post("/api/auth/keys", json={"name": "r", "scopes": ["read"]})).json
    ok = await _login(base, reader["key"])
    assert ok.code == 302 and "error" not in ok.headers["Location"]
    cookie = _cookie(ok)
    page = await _fetch(base, headers={"Cookie": cookie})
    assert page.code == 200
    html = page.body.decode()
    assert "bokeh" in html
    # Everything the page loads comes from this server: analysts may be offline.
    external = re.findall(r'(?:src|href)="(https?://[^"]+)"', html)
    assert external == []

    assert (await api.fetch("DELETE", f"/api/auth/keys/{reader['id']}")).status == 200
    after = await _fetch(base, headers={"Cookie": cookie})
    assert after.code == 302 and "login" in after.headers["Location"]

    audit = (await api.get("/api/audit?limit=50")).json["items"]
    logins = [a for a in audit if a["action"] == "analyst.login"]
    assert {a["result"] for a in logins} == {"ok", "denied"}


def test_websocket_origins_are_this_server_and_the_cors_list() -> None:
    s = Settings(host="0.0.0.0", cors_origins=["https://dash.example.com"], redis_url="redis://x")
    origins = websocket_origins(s, 8889)
    assert "dash.example.com" in origins and "localhost:8889" in origins
    assert "*" not in origins


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
async def test_a_browser_signs_in_and_sees_the_page_fill_in(api: Api, served: Served) -> None:
    from playwright.async_api import async_playwright

    reader = (await api.post("/api/auth/keys", json={"name": "b", "scopes": ["read"]})).json
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            tab = await browser.new_page()
            errors: list[str] = []
            tab.on("pageerror", lambda e: errors.append(str(e)))
            await tab.goto(served.base)
            assert "/login" in tab.url
            await tab.fill("#password", reader["key"])
            await tab.click("button[type=submit]")
            # onload -> refresh -> history, then every fit, pushed over the WebSocket.
            await tab.wait_for_selector("text=Complete buckets up to", timeout=60_000)
            await tab.wait_for_selector("text=Month to date", timeout=30_000)
            await tab.wait_for_selector("text=backtest over", timeout=30_000)
            assert errors == []
        finally:
            await browser.close()


@pytest.mark.parametrize("dim", ["model", "provider"])
async def test_filtering_to_one_group_shows_that_slice(page: Page, dim: str) -> None:
    """Grouped by a dimension, then filtered to its busiest group: the same line.
    ``provider`` reached the page through the metric catalog alone."""
    p = page.page
    p.group_by.value = dim
    await p.refresh()
    await wait_for(lambda: _done(p), timeout=60, what="the grouped view")
    assert p.loaded is not None
    by_group = p.loaded.frame.copy()
    assert len(by_group.columns) >= 2
    p.group_by.value = "none"
    p.filter_dim.value = dim
    await wait_for(lambda: _async(bool(p.filter_value.options)), timeout=30, what="the group list")
    assert set(p.filter_value.options) == set(by_group.columns)
    busiest = str(p.filter_value.value)  # most requests first (the default choice)
    assert busiest == p.filter_value.options[0]
    await p.refresh()
    await wait_for(lambda: _done(p), timeout=60, what="the filtered view")
    assert p.current_query().filters == ((dim, busiest),)
    # the same buckets (the window moves on if an hour ended between the two loads)
    assert p.loaded is not None
    shown = pd.Series(_fleet_line(p), index=p.loaded.frame.index)
    common = shown.index.intersection(by_group.index)
    assert len(common) >= len(shown) - 1, (shown.index, by_group.index)
    np.testing.assert_allclose(shown[common], by_group[busiest][common], atol=1e-9)


async def _async(value: bool) -> bool:
    return value


async def test_firing_alerts_are_listed(api: Api, page: Page) -> None:
    from ezdash.alerts.evaluate import evaluate_all

    rule = {"id": "backlog", "kind": "queue_age", "threshold": 0.05}
    assert (await api.fetch("PUT", "/api/alerts/rules", json={"rules": [rule]})).status == 200
    await api.post("/api/tasks", json={"type": "t", "queue": "stuck"})

    async def fired() -> bool:
        return (await evaluate_all(api.services))["fired"] == 1 or bool(
            (await api.get("/api/alerts")).json["active"]
        )

    await wait_for(fired, what="the queue_age alert")
    p = page.page
    await p.refresh()
    table = p.alerts_table.value
    assert list(table["subject"]) == ["stuck"]
    assert "stuck" in table["message"].iloc[0]


async def test_the_page_and_the_api_fit_through_one_service(api: Api, page: Page) -> None:
    """The same view asked of the page and of the API is the same plan and fit: the same
    forecast to the digit, and every cached answer is keyed by a typed value (never a
    tuple read by position)."""
    from ezdash.analysis import service

    q = Query(metric="requests", window_ms=3 * DAY, step_ms=HOUR, horizon_ms=DAY)
    url = "/api/analytics/forecast?metric=requests&history=72h&horizon=24h&step=1h"
    for _ in range(2):  # an hour may complete between the two: then ask both again
        loaded = await page.data.load(q, await page.data.now_ms())
        ours = await page.data.forecast(loaded, q)
        r = await api.get(url)
        assert r.status == 200, r.json
        if r.json["t"][0] == ours["t"][0]:
            break
    assert r.json["history"]["values"] == [round(v, 9) for v in loaded.total.tolist()]
    for k in ("model", "t", "mean", "backtest"):
        assert r.json[k] == ours[k], k
    await page.page.refresh()
    await wait_for(lambda: _done(page.page), timeout=60, what="the refresh")
    keys = [*page.data.cache._data, *api.services.cache._data]
    typed: tuple[type, ...] = (service.TrendsKey, service.ForecastKey, service.AnomaliesKey)
    typed += (service.PredictionsKey, service.SpendBoundKey)
    assert keys and all(isinstance(k, typed) or k == "summary" for k in keys), keys
