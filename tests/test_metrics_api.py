"""Metrics end to end: ingest a known set of events through the API and check every
sum to the token and the nano-dollar, at every tier and grouping; percentiles within
the stated 5 %; price changes; bad batches; persistence across a Redis restart."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from ezdash.metrics import catalog
from ezdash.redis_server import RedisServer
from ezdash.timeutil import format_ms, parse_time

from .conftest import REPO, Api, start_api, stop_api

PRICES = json.loads((REPO / "server/ezdash/data/prices.json").read_text())
AGENTS = {"ag-1": "coder", "ag-2": "coder", "ag-3": "researcher"}
MODELS = [("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4"), ("acme", "mystery-1")]
HOUR = 3_600_000


def price_of(provider: str, model: str, ts: int) -> dict[str, Any] | None:
    entries = [
        m
        for m in PRICES["models"]
        if m["provider"] == provider
        and m["model"] == model
        and np.datetime64(m["effective_from"]).astype("datetime64[ms]").astype(int) <= ts
    ]
    return max(entries, key=lambda m: m["effective_from"]) if entries else None


def nanos(e: dict[str, Any]) -> int:
    """The cost of one event, by hand: every part at its own rate (USD per 1e6 tokens)."""
    if e.get("cost_usd") is not None:
        return int(Decimal(str(e["cost_usd"])) * 10**9)
    p = price_of(e["provider"], e["model"], e["_ms"])
    if p is None:
        return 0
    fresh = e["input_tokens"] - e["cached_tokens"] - e["cache_creation_tokens"]
    usd = (
        Decimal(fresh) * Decimal(str(p["input_per_mtok"]))
        + Decimal(e["cached_tokens"]) * Decimal(str(p["cache_read_per_mtok"]))
        + Decimal(e["cache_creation_tokens"]) * Decimal(str(p["cache_write_per_mtok"]))
        + Decimal(e["output_tokens"]) * Decimal(str(p["output_per_mtok"]))
    ) / 10**6
    return int((usd * 10**9).to_integral_value())


def make_events(now_ms: int, n: int = 360, seed: int = 5) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        # spread over the last 40 h, with some exactly on hour and minute boundaries
        if i % 17 == 0:
            ts = (now_ms - rng.randrange(1, 40) * HOUR) // HOUR * HOUR
        elif i % 13 == 0:
            ts = (now_ms - rng.randrange(1, 2400) * 60_000) // 60_000 * 60_000 - 1
        else:
            ts = now_ms - rng.randrange(60_000, 40 * HOUR)
        provider, model = MODELS[i % 3]
        inp = rng.randrange(100, 20_000)
        cached = rng.randrange(0, inp // 2)
        creation = rng.randrange(0, (inp - cached) // 2)
        out_t = rng.randrange(10, 4000)
        e: dict[str, Any] = {
            "agent_id": list(AGENTS)[i % 3],
            "model": model,
            "provider": provider,
            "input_tokens": inp,
            "output_tokens": out_t,
            "cached_tokens": cached,
            "cache_creation_tokens": creation,
            "reasoning_tokens": rng.randrange(0, out_t),
            "latency_ms": round(rng.lognormvariate(6.5, 0.6), 3),
            "status": "error" if i % 11 == 0 else "ok",
            "_ms": ts,
        }
        if e["status"] == "error":
            e["error_type"] = ["RateLimited", "Timeout"][i % 2]
        if i % 29 == 0:
            e["cost_usd"] = round(rng.random(), 6)  # agents may price events themselves
        # times as RFC 3339 in several zones, or unix seconds
        if i % 3 == 0:
            e["ts"] = ts / 1000
        elif i % 3 == 1:
            e["ts"] = format_ms(ts)
        else:
            import datetime as dt

            zone = dt.timezone(dt.timedelta(hours=5, minutes=30))
            e["ts"] = dt.datetime.fromtimestamp(ts / 1000, zone).isoformat(timespec="milliseconds")
        out.append(e)
    return out


async def put_agents(api: Api) -> None:
    svc = api.services
    for agent_id, kind in AGENTS.items():
        doc = {
            "id": agent_id,
            "name": agent_id,
            "kind": kind,
            "status": "idle",
            "restarts": 0,
            "tags": {},
            "started_at": 0,
        }
        await svc.scripts.run(
            "agent_put",
            [svc.keys.agents],
            [svc.keys.base, agent_id, orjson.dumps(doc).decode(), 1000],
        )


def expected(
    events: list[dict[str, Any]], start: int, step: int, n: int, dim: str
) -> dict[str, dict[str, list[int]]]:
    out: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0] * n))
    for e in events:
        b = (e["_ms"] - start) // step
        if not 0 <= b < n:
            continue
        group = {
            "none": "",
            "agent": e["agent_id"],
            "model": e["model"],
            "provider": e["provider"],
            "kind": AGENTS[e["agent_id"]],
            "queue": e.get("_queue", ""),
        }[dim]
        if dim == "queue" and not group:
            continue
        v = out[group]
        v["input_tokens"][b] += e["input_tokens"]
        v["output_tokens"][b] += e["output_tokens"]
        v["cached_tokens"][b] += e["cached_tokens"]
        v["cache_creation_tokens"][b] += e["cache_creation_tokens"]
        v["reasoning_tokens"][b] += e["reasoning_tokens"]
        v["cost_nanos"][b] += nanos(e)
        v["requests"][b] += 1
        v["errors"][b] += e["status"] == "error"
    return out


async def ingest(api: Api, events: list[dict[str, Any]]) -> None:
    clean = [{k: v for k, v in e.items() if not k.startswith("_")} for e in events]
    for i in range(0, len(clean), 100):
        r = await api.post("/api/ingest/usage", json=clean[i : i + 100])
        assert r.status == 202, r.json
        assert r.json == {"accepted": len(clean[i : i + 100])}


async def test_exact_sums_at_every_tier_and_grouping(api: Api) -> None:
    await put_agents(api)
    now = await api.services.redis_now_ms()
    events = make_events(now)
    # some events belong to tasks, whose queue the server looks up
    t = (await api.post("/api/tasks", json={"type": "x", "queue": "research"})).json["task"]
    for e in events[::4]:
        e["task_id"], e["_queue"] = t["id"], "research"
    await ingest(api, events)

    for step, tier in (("1m", "1m"), ("5m", "1m"), ("1h", "1h"), ("1d", "1d")):
        step_ms = {"1m": 60_000, "5m": 300_000, "1h": HOUR, "1d": 86_400_000}[step]
        frm = now - 41 * HOUR
        for dim in ("none", *catalog.NAMES):
            q = f"from={frm // 1000}&to={(now + 60_000) // 1000}&step={step}&group_by={dim}"
            tok = (await api.get(f"/api/metrics/tokens?{q}")).json
            cost = (await api.get(f"/api/metrics/costs?{q}")).json
            perf = (await api.get(f"/api/metrics/performance?{q}")).json
            assert tok["stats"]["tier"] == tier and tok["step"] == step
            start = frm // step_ms * step_ms
            assert tok["t"][0] == format_ms(start)
            n = len(tok["t"])
            assert tok["stats"]["buckets"] == n
            exp = expected(events, start, step_ms, n, dim)
            got_groups = {(s["group"].get(dim, "") if dim != "none" else "") for s in tok["series"]}
            assert got_groups == set(exp), (step, dim)
            for series, cseries, pseries in zip(
                tok["series"], cost["series"], perf["series"], strict=True
            ):
                g = series["group"].get(dim, "") if dim != "none" else ""
                for m in (
                    "input_tokens",
                    "output_tokens",
                    "cached_tokens",
                    "cache_creation_tokens",
                    "reasoning_tokens",
                ):
                    assert series["values"][m] == exp[g][m], (step, dim, g, m)
                got_nanos = [round(v * 1e9) for v in cseries["values"]["cost_usd"]]
                assert got_nanos == exp[g]["cost_nanos"], (step, dim, g)
                assert pseries["values"]["requests"] == exp[g]["requests"]
            total_nanos = sum(sum(v["cost_nanos"]) for v in exp.values())
            assert round(cost["totals"]["cost_usd"] * 1e9) == total_nanos
            assert round(cost["totals"]["cost_usd"], 2) == round(total_nanos / 1e9, 2)
            assert cost["price_table"]["version"] == PRICES["version"]

    # the unknown model is counted, priced at zero, never guessed
    q = f"from={(now - 41 * HOUR) // 1000}&step=1h"
    costs = (await api.get(f"/api/metrics/costs?{q}&group_by=model")).json
    mystery = next(s for s in costs["series"] if s["group"]["model"] == "mystery-1")
    priced_by_agent = sum(nanos(e) for e in events if e["model"] == "mystery-1")
    assert round(sum(mystery["values"]["cost_usd"]) * 1e9) == priced_by_agent
    assert costs["totals"]["unpriced_requests"] == sum(
        1 for e in events if e["model"] == "mystery-1" and e.get("cost_usd") is None
    )

    # percentiles within 5 % of the exact value
    perf = (await api.get(f"/api/metrics/performance?{q}")).json
    lat = np.array([e["latency_ms"] for e in events])
    for qv, name in ((50, "latency_p50_ms"), (95, "latency_p95_ms"), (99, "latency_p99_ms")):
        exact = float(np.percentile(lat, qv))
        assert abs(perf["totals"][name] - exact) / exact < 0.05, (name, perf["totals"][name])
    errors = (await api.get(f"/api/metrics/errors?{q}")).json
    n_err = sum(e["status"] == "error" for e in events)
    assert errors["totals"]["errors"] == n_err
    assert {b["type"]: b["count"] for b in errors["by_type"]} == {
        t: sum(1 for e in events if e.get("error_type") == t) for t in ("RateLimited", "Timeout")
    }
    assert perf["totals"]["success_rate"] == round(1 - n_err / len(events), 6)


async def test_hourly_tier_matches_minute_tier(api: Api) -> None:
    await put_agents(api)
    now = await api.services.redis_now_ms()
    events = make_events(now, n=200, seed=9)
    await ingest(api, events)
    frm = (now - 40 * HOUR) // HOUR * HOUR
    to = now // HOUR * HOUR
    q = f"from={frm // 1000}&to={to // 1000}"
    by_min = (await api.get(f"/api/metrics/tokens?{q}&step=60m")).json
    by_hour = (await api.get(f"/api/metrics/tokens?{q}&step=1h")).json
    minute = (await api.get(f"/api/metrics/tokens?{q}&step=1m")).json
    assert by_min["stats"]["tier"] == "1h"  # 60m is a multiple of 1h: the coarsest tier
    assert minute["stats"]["tier"] == "1m"
    assert minute["totals"] == by_hour["totals"]
    hourly_from_minutes = (
        np.array(minute["series"][0]["values"]["input_tokens"]).reshape(-1, 60).sum(axis=1)
    )
    assert hourly_from_minutes.tolist() == by_hour["series"][0]["values"]["input_tokens"]


async def test_zero_filled_buckets(api: Api) -> None:
    now = await api.services.redis_now_ms()
    r = (await api.get("/api/metrics/costs?from=now-6h&step=1h")).json
    assert len(r["t"]) in (6, 7) and r["totals"]["cost_usd"] == 0
    assert r["series"] == [{"group": {}, "values": {"cost_usd": [0.0] * len(r["t"])}}]
    await ingest(api, make_events(now, n=5))
    r = (await api.get("/api/metrics/performance?from=now-2d&step=1h")).json
    values = r["series"][0]["values"]
    assert len(values["requests"]) == len(r["t"])
    empty = [i for i, v in enumerate(values["requests"]) if v == 0]
    assert empty and all(values["latency_p95_ms"][i] is None for i in empty)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("step=soon", "step"),
        ("group_by=colour", "group_by"),
        ("from=yesterday", "from"),
        ("group_by=queue&agent=a1", "agent"),
        ("agent=a&queue=q", "queue"),
        ("unknown=1", "unknown"),
    ],
)
async def test_bad_queries(api: Api, query: str, field: str) -> None:
    r = await api.get(f"/api/metrics/tokens?{query}")
    assert r.status in (400, 422), r.json
    assert r.headers["Content-Type"] == "application/problem+json"
    assert r.json["errors"][0]["field"] == field


@pytest.mark.parametrize(
    ("query", "step", "empty"),
    [
        ("from=now&to=now-1h", None, True),  # a to before from: an empty range
        ("from=now-30d&step=1m", "1h", False),  # 1m data is kept 48 h: coarsened
        ("from=now-5d&step=1m", "1h", False),  # nor 5m or 15m: they come from 1m data
        ("from=now-700d&step=1h", "1d", False),  # only 1d data is kept 700 days
        ("step=7s", "1m", False),  # whole buckets of the finest tier
        ("from=now-3000d", None, False),  # older than anything kept: starts at 730d
    ],
)
async def test_ranges_and_steps_are_answered_as_kept(
    api: Api, query: str, step: str | None, empty: bool
) -> None:
    """Schema-valid ranges and steps are never refused: the answer says what it read."""
    r = await api.get(f"/api/metrics/tokens?{query}")
    assert r.status == 200, r.json
    assert (r.json["t"] == []) is empty
    if step is not None:
        assert r.json["step"] == step, r.json["step"]
    oldest = await api.services.redis_now_ms() - 730 * 86_400_000  # the longest retention
    assert parse_time(r.json["from"]) >= oldest - 7 * 86_400_000  # ...less one aligned bucket


async def test_bad_batches_refused_whole(api: Api) -> None:
    now = await api.services.redis_now_ms()
    good = {k: v for k, v in make_events(now, n=1)[0].items() if not k.startswith("_")}
    batch = [
        good,
        {**good, "cached_tokens": good["input_tokens"] + 1},
        {**good, "ts": (now + 120_000) / 1000},
        {**good, "status": "maybe"},
        {**good, "colour": "red"},
        "not an event",
        {**good, "input_tokens": -5},
        {**good, "cost_usd": -1},
    ]
    r = await api.post("/api/ingest/usage", json=batch)
    assert r.status == 422
    fields = {e["field"] for e in r.json["errors"]}
    for expected_field in (
        "events[1].cached_tokens",
        "events[2].ts",
        "events[3].status",
        "events[4].colour",
        "events[5]",
        "events[6].input_tokens",
        "events[7].cost_usd",
    ):
        assert expected_field in fields, (expected_field, fields)
    assert "events[0]" not in {f.split(".")[0] for f in fields}
    tokens = (await api.get("/api/metrics/tokens?from=now-1d")).json
    assert tokens["totals"]["input_tokens"] == 0  # nothing half-written
    assert await api.services.redis.xlen(api.services.keys.metrics.raw) == 0
    for body, status in (
        (b"[]", 422),
        (b"{", 400),
        (b'{"events": 1}', 422),
        (b'{"events": [], "x": 1}', 422),
    ):
        r = await api.post(
            "/api/ingest/usage", body=body, headers={"Content-Type": "application/json"}
        )
        assert r.status == status, (body, r.json)
    # a resent batch with the same Idempotency-Key is counted once
    for _ in range(2):
        r = await api.post("/api/ingest/usage", json=[good], headers={"Idempotency-Key": "b1"})
        assert r.status == 202
    tokens = (await api.get("/api/metrics/tokens?from=now-1d")).json
    assert tokens["totals"]["input_tokens"] == good["input_tokens"]


async def test_prices_endpoint(api: Api) -> None:
    r = (await api.get("/api/metrics/prices")).json
    assert r["version"] == PRICES["version"] and r["source_date"]
    entry = r["models"][0]
    assert set(entry) == {
        "provider",
        "model",
        "effective_from",
        "input_per_mtok",
        "output_per_mtok",
        "cache_read_per_mtok",
        "cache_write_per_mtok",
    }


async def test_totals_survive_redis_restart(tmp_path: Path, settings: Any) -> None:
    server = RedisServer(tmp_path / "redis")
    url = server.start()
    s = settings.model_copy(update={"redis_url": url})
    api = await start_api(s)
    try:
        now = await api.services.redis_now_ms()
        events = make_events(now, n=120, seed=3)
        await put_agents(api)
        await ingest(api, events)
        before = (await api.get("/api/metrics/costs?from=now-2d&step=1h")).json["totals"]
        assert before["cost_usd"] > 0
    finally:
        await stop_api(api)
    server.stop()
    server.start()
    api = await start_api(s)
    try:
        after = (await api.get("/api/metrics/costs?from=now-2d&step=1h")).json["totals"]
        assert after == before
    finally:
        await stop_api(api)
        server.stop()


async def test_price_change_applies_from_its_date(tmp_path: Path, settings: Any) -> None:
    import datetime as dt

    today = dt.datetime.now(dt.UTC).date()
    table = {
        "version": "test.1",
        "source_date": str(today),
        "source": "test",
        "currency": "USD",
        "models": [
            {
                "provider": "acme",
                "model": "flux",
                "effective_from": "2020-01-01",
                "input_per_mtok": 10,
                "output_per_mtok": 20,
                "cache_read_per_mtok": 1,
                "cache_write_per_mtok": 12.5,
            },
            {
                "provider": "acme",
                "model": "flux",
                "effective_from": str(today),
                "input_per_mtok": 5,
                "output_per_mtok": 10,
                "cache_read_per_mtok": 0.5,
                "cache_write_per_mtok": 6.25,
            },
        ],
    }
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(table))
    api = await start_api(settings.model_copy(update={"prices_file": path}))
    try:
        now = await api.services.redis_now_ms()
        midnight = now // 86_400_000 * 86_400_000
        base = {
            "agent_id": "p1",
            "model": "flux",
            "provider": "acme",
            "input_tokens": 1_000_000,
            "cached_tokens": 200_000,
            "cache_creation_tokens": 100_000,
            "output_tokens": 300_000,
            "reasoning_tokens": 100_000,
            "latency_ms": 10,
            "status": "ok",
        }
        before = {**base, "ts": (midnight - 3_600_000) / 1000}
        after = {**base, "ts": min(now, midnight + 1000) / 1000}
        r = await api.post("/api/ingest/usage", json=[before, after])
        assert r.status == 202
        # by hand: 700k fresh input, 200k cache reads, 100k cache writes, 300k output
        old = 0.7 * 10 + 0.2 * 1 + 0.1 * 12.5 + 0.3 * 20
        new = 0.7 * 5 + 0.2 * 0.5 + 0.1 * 6.25 + 0.3 * 10
        costs = (
            await api.get(
                f"/api/metrics/costs?from={(midnight - 86_400_000) // 1000}"
                f"&to={(midnight + 86_400_000) // 1000}&step=1d"
            )
        ).json
        assert costs["series"][0]["values"]["cost_usd"] == [old, new]
        assert costs["price_table"]["version"] == "test.1"
        assert abs(costs["totals"]["cost_usd"] - (old + new)) < 1e-9
        prices = (await api.get("/api/metrics/prices")).json
        assert [m["effective_from"] for m in prices["models"]] == ["2020-01-01", str(today)]
    finally:
        await stop_api(api)


def _by(events: list[dict[str, Any]], dim: str, field: str, **only: str) -> dict[str, int]:
    """Per value of ``dim`` (a catalog dimension), the sum of ``field`` over events."""
    out: dict[str, int] = defaultdict(int)
    for e in events:
        labels = {"agent": e["agent_id"], "kind": AGENTS[e["agent_id"]], **e}
        if all(labels[k] == v for k, v in only.items()):
            out[labels[dim]] += e[field]
    return dict(out)


async def test_provider_is_a_dimension_everywhere_the_catalog_reaches(api: Api) -> None:
    """``provider`` came in as one line of the catalog: it groups and filters the
    metrics and the analytics, refuses what the rollups do not keep, and pairs that
    the catalog keeps together answer both ways round (kind by agent as agent by kind)."""
    await put_agents(api)
    now = await api.services.redis_now_ms()
    events = [e for e in make_events(now, n=240, seed=11) if e["_ms"] >= now - 23 * HOUR]
    await ingest(api, events)
    q = "from=now-24h&step=1h"

    tok = (await api.get(f"/api/metrics/tokens?{q}&group_by=provider")).json
    got = {s["group"]["provider"]: sum(s["values"]["input_tokens"]) for s in tok["series"]}
    assert got == _by(events, "provider", "input_tokens") and len(got) == 3
    one = (await api.get(f"/api/metrics/tokens?{q}&provider=anthropic")).json
    assert one["totals"]["input_tokens"] == _by(events, "provider", "input_tokens")["anthropic"]
    costs = (await api.get(f"/api/metrics/costs?{q}&group_by=provider")).json
    by_cost = {
        s["group"]["provider"]: round(sum(s["values"]["cost_usd"]) * 1e9) for s in costs["series"]
    }
    want: dict[str, int] = defaultdict(int)
    for e in events:
        want[e["provider"]] += nanos(e)
    assert by_cost == dict(want)

    hist = await api.get(f"/api/analytics/history?metric=input_tokens&{q}&group_by=provider")
    assert hist.status == 200, hist.json
    got = {s["group"]["provider"]: sum(s["values"]["input_tokens"]) for s in hist.json["series"]}
    assert got == _by(events, "provider", "input_tokens")
    trends = await api.get("/api/analytics/trends?metric=requests&window=1d&group_by=provider")
    assert trends.status == 200, trends.json
    assert {i["group"]["provider"] for i in trends.json["items"]} == set(want)

    # a pair kept together answers grouped either way round
    by_kind = (await api.get(f"/api/metrics/tokens?{q}&group_by=kind&agent=ag-3")).json
    got = {s["group"]["kind"]: sum(s["values"]["input_tokens"]) for s in by_kind["series"]}
    assert (
        got
        == _by(events, "kind", "input_tokens", agent_id="ag-3")
        == {"researcher": _by(events, "agent", "input_tokens")["ag-3"]}
    )

    for query, field in (
        ("provider=a|b", "provider"),
        ("group_by=provider&agent=ag-1", "agent"),
        ("provider=openai&model=gpt-4o", "provider"),
    ):
        r = await api.get(f"/api/metrics/tokens?{query}")
        assert r.status in (400, 422), (query, r.json)
        assert r.json["errors"][0]["field"] == field, (query, r.json)
    r = await api.get("/api/analytics/trends?metric=requests&group_by=provider&queue=q")
    assert r.status in (400, 422) and r.json["errors"][0]["field"] == "queue", r.json
