"""Backfilled history: what the HTTP API shows after ``backfill`` (every agent, the
daily cycle, tiers that agree, the 1m tier's 48 h, errors, percentiles, a price
change, the cost to the nano-dollar), and that the vectorised rollup writer writes
exactly what ``Aggregator`` would for the same cells."""

from __future__ import annotations

import io
import json
from collections import defaultdict
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from redis.asyncio import Redis

from ezdash.backfill import Progress, ProgressBar, backfill
from ezdash.backfill.cells import LabelTable, base_cells, keep_retained, latency_buckets, roll_up
from ezdash.backfill.fleet import DAY_MS, ERROR_TYPES, INCIDENTS, MODELS, fleet
from ezdash.backfill.run import prepare_chunk
from ezdash.backfill.simulation import Simulation
from ezdash.backfill.writer import CellAggregator, reference_aggregator
from ezdash.keys import Keys
from ezdash.metrics import histogram
from ezdash.metrics.catalog import COUNTERS
from ezdash.metrics.pricing import PriceTable, load_price_table, parse_price_table
from ezdash.metrics.rollup import DEFAULT_TIERS, Aggregator, parse_tiers
from ezdash.timeutil import format_ms
from tests.conftest import REPO, Api

HOUR = 3_600_000
MINUTE = 60_000
AGENTS = 5
DAYS = 3
CHANGED = ("openai", "gpt-4o-mini")
FACTOR = 4


def table_with_change(day_ms: int) -> PriceTable:
    """The shipped table plus a dated gpt-4o-mini price, FACTOR times the old one,
    from ``day_ms`` (00:00 UTC) on: a price change inside the backfilled range."""
    data = json.loads((REPO / "server/ezdash/data/prices.json").read_text())
    old = next(m for m in data["models"] if (m["provider"], m["model"]) == CHANGED)
    day = np.datetime64(day_ms, "ms").astype("datetime64[D]").astype(str)
    new = {k: v for k, v in old.items() if k not in ("note", "aliases")}
    new["effective_from"] = day
    for rate in (
        "input_per_mtok",
        "output_per_mtok",
        "cache_read_per_mtok",
        "cache_write_per_mtok",
    ):
        new[rate] = round(old[rate] * FACTOR, 6)
    data["models"].append(new)
    return parse_price_table(json.dumps(data), origin="test")


def nanos_by_hand(tokens: dict[str, int], rates: dict[str, Any]) -> Decimal:
    """Nano-dollars of summed tokens, each part at its own rate (USD per 1e6 tokens)."""
    fresh = tokens["input_tokens"] - tokens["cached_tokens"] - tokens["cache_creation_tokens"]
    usd = (
        Decimal(fresh) * Decimal(str(rates["input_per_mtok"]))
        + Decimal(tokens["cached_tokens"]) * Decimal(str(rates["cache_read_per_mtok"]))
        + Decimal(tokens["cache_creation_tokens"]) * Decimal(str(rates["cache_write_per_mtok"]))
        + Decimal(tokens["output_tokens"]) * Decimal(str(rates["output_per_mtok"]))
    ) / 10**6
    return usd * 10**9


async def test_backfilled_history_through_the_api(api: Api) -> None:
    svc = api.services
    now = await svc.redis_now_ms()
    today = now // DAY_MS * DAY_MS
    change = today - DAY_MS
    table = table_with_change(change)
    raw: list[Any] = []
    summary = await backfill(
        svc.redis,
        days=DAYS,
        agents=AGENTS,
        prefix=svc.settings.redis_prefix,
        tiers=svc.tiers,
        prices=table,
        seed=3,
        now_ms=now,
        on_calls=lambda calls, sim: raw.append(calls),
    )
    latency = np.concatenate([c.latency_ms for c in raw])
    assert summary["calls"] == latency.size > 5_000
    assert summary["unpriced_calls"] == 0
    assert summary["seconds"] < 15

    # every agent has data, and their kinds are labels
    agents = fleet(AGENTS, 3)
    r = (await api.get("/api/metrics/costs?from=now-4d&step=1h&group_by=agent")).json
    per_agent = {s["group"]["agent"]: sum(s["values"]["cost_usd"]) for s in r["series"]}
    assert set(per_agent) == {a.id for a in agents}
    assert all(v > 0 for v in per_agent.values())
    # the summary's cost, to the nano-dollar
    assert round(r["totals"]["cost_usd"] * 1e9) == summary["cost_nanos"]
    pico = sum(int(c.cost_pico.sum()) for c in raw)
    assert abs(summary["cost_nanos"] - pico / 1000) <= 0.5 * summary["calls"]
    r = (await api.get("/api/metrics/tokens?from=now-4d&step=1d&group_by=kind")).json
    assert {s["group"]["kind"] for s in r["series"]} == {a.kind for a in agents}
    assert r["totals"]["input_tokens"] == summary["input_tokens"]

    # the daily cycle: nights are quieter than afternoons
    r = (await api.get("/api/metrics/performance?from=now-3d&step=1h")).json
    by_hour: dict[int, list[int]] = defaultdict(list)
    for t, n in zip(r["t"], r["series"][0]["values"]["requests"], strict=True):
        by_hour[int(t[11:13])].append(n)
    night = np.mean([n for h in range(1, 6) for n in by_hour[h]])
    day = np.mean([n for h in range(12, 18) for n in by_hour[h]])
    assert night < 0.6 * day, (night, day)

    # hourly and daily tiers agree over a day-aligned range
    q = f"from={(today - 2 * DAY_MS) // 1000}&to={today // 1000}"
    for path in ("tokens", "costs", "performance", "errors"):
        hourly = (await api.get(f"/api/metrics/{path}?{q}&step=1h&group_by=agent")).json
        daily = (await api.get(f"/api/metrics/{path}?{q}&step=1d&group_by=agent")).json
        assert (hourly["stats"]["tier"], daily["stats"]["tier"]) == ("1h", "1d")
        for key in ("input_tokens", "cost_usd", "requests", "errors", "tasks_completed"):
            if key in hourly["totals"]:
                assert hourly["totals"][key] == daily["totals"][key], (path, key)
        h_series = {s["group"]["agent"]: s["values"] for s in hourly["series"]}
        for s in daily["series"]:
            for name, values in s["values"].items():
                if name in ("requests", "errors", "input_tokens", "output_tokens"):
                    assert sum(values) == sum(h_series[s["group"]["agent"]][name])

    # the 1m tier holds the last 48 h and nothing older, and agrees with the 1h tier
    keys, rawc = svc.keys.metrics, svc.metrics.raw
    oldest = None
    async for k in rawc.scan_iter(match=keys.counter("1m", "all", "*", "requests", 0)[:-1] + "*"):
        chunk = int(k.rsplit(b":", 1)[1])
        data = await rawc.get(k)
        assert isinstance(data, bytes)
        arr = np.frombuffer(data, dtype=">i8")
        first = chunk * 1440 + int(np.flatnonzero(arr)[0])
        oldest = first if oldest is None else min(oldest, first)
    assert oldest is not None
    window = now - 48 * HOUR
    assert (oldest + 1) * MINUTE > window  # nothing older than 48 h
    assert oldest * MINUTE <= window + 30 * MINUTE  # and the whole 48 h are there
    frm, to = -(-window // HOUR) * HOUR, now // HOUR * HOUR
    q = f"from={frm // 1000}&to={to // 1000}"
    minute = (await api.get(f"/api/metrics/tokens?{q}&step=1m")).json
    hourly = (await api.get(f"/api/metrics/tokens?{q}&step=1h")).json
    assert minute["stats"]["tier"] == "1m"
    assert minute["totals"] == hourly["totals"]

    # errors by type, and percentiles within the histogram's 5 % of the exact ones
    r = (await api.get("/api/metrics/errors?from=now-4d&step=1h")).json
    assert r["totals"]["errors"] == summary["errors"] > 0
    assert {b["type"]: b["count"] for b in r["by_type"]} == summary["errors_by_type"]
    assert "OverloadedError" in summary["errors_by_type"]  # the incident of a 3-day range
    r = (await api.get("/api/metrics/performance?from=now-4d&step=1h")).json
    totals = r["totals"]
    for q_, name in ((50, "latency_p50_ms"), (95, "latency_p95_ms"), (99, "latency_p99_ms")):
        exact = float(np.percentile(latency, q_))
        assert abs(totals[name] - exact) / exact < 0.05, (name, totals[name], exact)
    assert totals["task_duration_p95_s"] > 0
    assert totals["tasks_completed"] == summary["tasks_completed"]
    assert 0.9 < totals["success_rate"] < 1

    # the price change applies from its date: each day's cost is that day's rates
    q = f"from={(change - DAY_MS) // 1000}&to={(change + DAY_MS) // 1000}&step=1d"
    tok = (await api.get(f"/api/metrics/tokens?{q}&group_by=model")).json
    cost = (await api.get(f"/api/metrics/costs?{q}&group_by=model")).json
    t_series = next(s["values"] for s in tok["series"] if s["group"]["model"] == CHANGED[1])
    c_series = next(s["values"] for s in cost["series"] if s["group"]["model"] == CHANGED[1])
    per_token = []
    for day_index, day_ms in enumerate((change - DAY_MS, change)):
        price = table.price(*CHANGED, day_ms)
        assert price is not None
        rates = {
            "input_per_mtok": price.input_per_mtok,
            "output_per_mtok": price.output_per_mtok,
            "cache_read_per_mtok": price.cache_read_per_mtok,
            "cache_write_per_mtok": price.cache_write_per_mtok,
        }
        tokens = {m: t_series[m][day_index] for m in t_series}
        expected = nanos_by_hand(tokens, rates)
        got = round(c_series["cost_usd"][day_index] * 1e9)
        assert abs(got - expected) <= 0.5 * 1440 * AGENTS  # one rounding per minute cell
        per_token.append(got / tokens["input_tokens"])
    assert 0.6 * FACTOR < per_token[1] / per_token[0] < 1.6 * FACTOR


async def test_backfill_from_a_url_with_progress(redis_url: str) -> None:
    seen: list[Progress] = []
    summary = await backfill(redis_url, days=1, agents=2, prefix="bf", seed=9, progress=seen.append)
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert seen[-1].calls == summary["calls"] > 0
    client = Redis.from_url(redis_url)
    try:
        as_of = await client.get(Keys("bf").metrics.as_of)
        assert as_of is not None and format_ms(int(as_of) + 1) == summary["to"]
        assert not [k async for k in client.scan_iter(match="{bf}:usage*")]  # no raw events
    finally:
        await client.aclose()


def _normalise(ops: list[str | int]) -> tuple[dict[Any, Any], ...]:
    """Records as sums per key and field, set members, and TTLs (order-free)."""
    incr: dict[Any, dict[Any, int]] = defaultdict(lambda: defaultdict(int))
    members: dict[Any, set[Any]] = defaultdict(set)
    ttls: dict[Any, Any] = {}
    i = 0
    while i < len(ops):
        tag, key, ttl, n = ops[i : i + 4]
        assert isinstance(n, int)
        ttls[key] = ttl
        if tag in ("B", "H"):
            for j in range(n):
                incr[(tag, key)][ops[i + 4 + 2 * j]] += int(ops[i + 5 + 2 * j])
            i += 4 + 2 * n
        else:
            assert tag == "S"
            members[key] |= set(ops[i + 4 : i + 4 + n])
            i += 4 + n
    return {k: dict(v) for k, v in incr.items()}, dict(members), ttls


def test_fast_writer_writes_what_aggregator_would() -> None:
    """Every tier's batches of a chunk together equal ``Aggregator.ops`` of the same
    cells, filled through ``add_bulk``: the same keys, increments, fields, TTLs."""
    tiers = parse_tiers(DEFAULT_TIERS)
    now = 1_795_860_000_000 + 17 * HOUR + 23 * MINUTE + 5_000
    end = now // MINUTE * MINUTE
    sim = Simulation(agents=4, start_ms=end - 3 * DAY_MS, end_ms=end, prices=load_price_table())
    names = LabelTable.of(sim)
    mk = Keys("t").metrics
    seen_1m_cut = False
    for start, stop in sim.chunks():
        prepared = prepare_chunk(sim, names, tiers, start, stop, now)
        for tier in tiers:
            ours: list[str | int] = []
            for batch in prepared.batches:
                if batch.tiers[0] == tier:
                    assert isinstance(batch, CellAggregator)
                    ours += batch.ops(mk, now)
            factor = tier.step_ms // MINUTE
            calls = keep_retained(roll_up(prepared.calls, factor), tier, now)
            tasks = keep_retained(roll_up(prepared.tasks, factor), tier, now)
            seen_1m_cut |= tier.name == "1m" and 0 < len(calls) < len(prepared.calls)
            ref = reference_aggregator(tier, names, [(calls, False), (tasks, True)])
            assert _normalise(ours) == _normalise(ref.ops(mk, now)), (tier.name, start)
    assert seen_1m_cut  # one chunk straddled the 48 h edge of the 1m tier


def test_cells_add_up_to_the_calls() -> None:
    sim = Simulation(
        agents=3, start_ms=10 * DAY_MS, end_ms=11 * DAY_MS, prices=load_price_table(), seed=4
    )
    chunk = sim.chunk(10 * DAY_MS, 11 * DAY_MS)
    c = chunk.calls
    calls, tasks = base_cells(chunk, 3, len(sim.models))
    col = {name: i for i, name in enumerate(COUNTERS)}
    sums = calls.values.sum(axis=0)
    assert sums[col["requests"]] == len(c) == calls.hist_count.sum()
    assert sums[col["errors"]] == (c.error >= 0).sum()
    for name in ("input_tokens", "output_tokens", "cached_tokens", "cache_creation_tokens"):
        assert sums[col[name]] == getattr(c, name).sum()
    assert abs(sums[col["cost_nanos"]] - c.cost_pico.sum() / 1000) <= 0.5 * len(calls)
    assert (c.cached_tokens + c.cache_creation_tokens <= c.input_tokens).all()
    assert (c.reasoning_tokens <= c.output_tokens).all()
    assert c.reasoning_tokens.sum() > 0 and c.cache_creation_tokens.sum() > 0
    failed = c.error >= 0
    assert (c.input_tokens[failed] == 0).all() and (c.cost_pico[failed] == 0).all()
    t = tasks.values.sum(axis=0)
    assert t[col["tasks_completed"]] + t[col["tasks_failed"]] == tasks.hist_count.sum() > 0
    daily = roll_up(calls, 1440)
    assert set(daily.bucket.tolist()) == {10} and len(daily) <= 3 * len(sim.models)
    assert (daily.values.sum(axis=0) == calls.values.sum(axis=0)).all()
    assert daily.hist_count.sum() == calls.hist_count.sum()


def test_simulation_has_cycles_growth_and_incidents() -> None:
    start = 20_003 * DAY_MS  # a Monday (1970-01-01 was a Thursday): two whole weeks
    assert (start // DAY_MS + 3) % 7 == 0
    sim = Simulation(
        agents=8, start_ms=start, end_ms=start + 14 * DAY_MS, prices=load_price_table(), seed=2
    )
    per_day, errors, slow = [], [], []
    for s, e in sim.chunks():
        c = sim.chunk(s, e).calls
        per_day.append(len(c))
        for inc in sim.incidents:
            inside = (c.ts_ms >= inc.start_ms) & (c.ts_ms < inc.end_ms)
            models = [sim.models.index(m) for m in inc.models]
            hit = inside & np.isin(c.model, models)
            if hit.sum() > 20:
                kind = ERROR_TYPES.index(inc.error_type)
                errors.append(((c.error[hit] == kind).mean(), (c.error[~inside] == kind).mean()))
                ok = c.error < 0
                slow.append(
                    (np.median(c.latency_ms[hit & ok]), np.median(c.latency_ms[~inside & ok]))
                )
    weekdays = [n for i, n in enumerate(per_day) if i % 7 < 5]
    weekends = [n for i, n in enumerate(per_day) if i % 7 >= 5]
    assert np.mean(weekends) < 0.7 * np.mean(weekdays)
    assert np.mean(weekdays[5:]) > np.mean(weekdays[:5])  # growth, week on week
    assert len(sim.incidents) == 3 and sim.incidents[0].name == INCIDENTS[0].name
    assert errors and all(during > 5 * before for during, before in errors)
    assert any(during > 1.5 * before for during, before in slow)  # a latency spike
    again = Simulation(
        agents=8, start_ms=start, end_ms=start + 14 * DAY_MS, prices=load_price_table(), seed=2
    )
    a, b = again.chunk(start, start + DAY_MS).calls, sim.chunk(start, start + DAY_MS).calls
    assert (a.ts_ms == b.ts_ms).all() and (a.cost_pico == b.cost_pico).all()


def test_fleet_matches_the_demo_and_uses_priced_models() -> None:
    from ezdash.agent.demo import fleet_configs

    agents = fleet(12, 1)
    demo = fleet_configs(12, prefix="ez", heartbeat=5, visibility=60)
    assert [a.id for a in agents] == [aid for aid, _, _ in demo]
    assert [a.kind for a in agents] == [k.name for _, k, _ in demo]
    sim = Simulation(agents=12, start_ms=0, end_ms=DAY_MS, prices=load_price_table())
    table = load_price_table()
    for model in sim.models:
        assert table.price(MODELS[model].provider, model, 1_795_860_000_000) is not None


def test_latency_buckets_match_bucket_of() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [rng.lognormal(np.log(2_000), 1.5, 50_000), [0.0, 0.0005, 0.001, 3_600_000.0, 9e6]]
    )
    fast = latency_buckets(values)
    assert fast.tolist() == [histogram.bucket_of(float(v)) for v in values]


def test_add_bulk_equals_add_call() -> None:
    tiers = parse_tiers(DEFAULT_TIERS)
    one, bulk = Aggregator(tiers), Aggregator(tiers)
    labels = ("a1", "gpt-4o", "coder", "code")
    rng = np.random.default_rng(1)
    counters = [0] * len(COUNTERS)
    errors: dict[str, int] = {}
    latency: dict[int, int] = {}
    for i in range(50):
        inp, out = int(rng.integers(100, 5000)), int(rng.integers(1, 900))
        err = "Timeout" if i % 7 == 0 else None
        lat = float(rng.lognormal(7, 0.5))
        one.add_call(
            60_000 * 5 + i,
            labels,
            input_tokens=inp,
            output_tokens=out,
            cached_tokens=inp // 3,
            cache_creation_tokens=0,
            reasoning_tokens=out // 4,
            cost_nanos=inp * 3,
            priced=True,
            latency_ms=lat,
            error_type=err,
        )
        for name, v in (
            ("requests", 1),
            ("input_tokens", inp),
            ("output_tokens", out),
            ("cached_tokens", inp // 3),
            ("reasoning_tokens", out // 4),
            ("cost_nanos", inp * 3),
            ("errors", err is not None),
        ):
            counters[COUNTERS.index(name)] += int(v)
        if err:
            errors[err] = errors.get(err, 0) + 1
        b = histogram.bucket_of(lat)
        latency[b] = latency.get(b, 0) + 1
    bulk.add_bulk(60_000 * 5 + 49, labels, counters, errors=errors, latency=latency, events=50)
    assert one.cells == bulk.cells and len(one) == len(bulk) == 50
    assert one.newest == bulk.newest
    assert one.ops(Keys().metrics, 10**12) == bulk.ops(Keys().metrics, 10**12)
    with pytest.raises(ValueError, match="counters"):
        bulk.add_bulk(0, labels, [1, 2])
    with pytest.raises(ValueError, match="errors"):
        bulk.add_bulk(0, labels, [1, 1, *[0] * (len(COUNTERS) - 2)], errors={})
    with pytest.raises(ValueError, match="bucket"):
        bulk.add_bulk(0, labels, [1, *[0] * (len(COUNTERS) - 1)], latency={-1: 1})


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_redraws_on_a_tty_and_logs_every_ten_percent_otherwise() -> None:
    updates = [Progress(i / 40, i * DAY_MS // 40, DAY_MS, i * 100, 1.0 + i) for i in range(41)]
    log = io.StringIO()
    bar = ProgressBar(log)
    for p in updates:
        bar(p)
    lines = log.getvalue().splitlines()
    assert len(lines) == 11 and "\r" not in log.getvalue()
    assert "100.0 %" in lines[-1] and "events/s" in lines[-1] and "ETA" in lines[0]
    tty = _Tty()
    bar = ProgressBar(tty)
    for p in updates:
        bar(p)
    assert tty.getvalue().startswith("\r") and tty.getvalue().endswith("\n")
    assert "1.0/1 days" in tty.getvalue()
