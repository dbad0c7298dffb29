"""Metrics: usage ingest through the agent runtime's UsageRecorder against bare XADDs
of the same events; GET /api/metrics/costs over 30 backfilled days of 100 agents
against pandas computing the same answer from the raw events.  Both in one run, on
the same kind of Redis (bench.common.redis_server)."""

from __future__ import annotations

import asyncio
import http.client
import time
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson
import pandas as pd
from redis.asyncio import Redis

from ezdash.backfill import backfill
from ezdash.backfill.fleet import DAY_MS, MODELS
from ezdash.backfill.simulation import Calls, Simulation
from ezdash.keys import Keys
from ezdash.metrics.events import UsageEvent
from ezdash.metrics.pricing import load_price_table
from ezdash.metrics.recorder import RAW_MAXLEN, UsageRecorder
from ezdash.metrics.rollup import DEFAULT_TIERS, parse_tiers
from ezdash.timeutil import parse_time

from .bench_api import AUTH
from .common import median, project_server, redis_server, report

EVENTS = 200_000
AGENTS = 100
BATCH = 5000  # UsageRecorder's default max_batch: the baseline pipelines as many XADDs
ROUNDS = 3
YIELD_EVERY = 50
"""Events recorded between returns to the event loop: agents record from coroutines
that await between LLM calls, so background flushes run while usage is recorded."""
QUERY_DAYS = 30
QUERY = f"/api/metrics/costs?from=now-{QUERY_DAYS}d&step=1h&group_by=agent"
REQUESTS = 20
PANDAS_RUNS = 5
HOUR = 3_600_000
SPAN = 60_000


# -- ingest -------------------------------------------------------------------------------


def make_events(now_ms: int) -> tuple[list[UsageEvent], list[tuple[str, str]]]:
    """EVENTS calls of 100 agents and 6 models, as the backfill simulates them (tokens,
    latency, errors), squeezed in time order into the minute before ``now_ms``: a
    recorder records calls as they happen, so one batch spans seconds of call times,
    not hours (spreading them over an hour multiplies the rollup cells per batch
    sixty-fold, which no live agent produces).
    Built without validation: validating is the ingest API's job, not the recorder's."""
    sim = Simulation(
        agents=AGENTS,
        start_ms=10 * DAY_MS,  # two weekdays, about 230k calls
        end_ms=12 * DAY_MS,
        prices=load_price_table(),
        seed=5,
    )
    parts = [sim.chunk(s, e).calls for s, e in sim.chunks()]

    def cat(name: str) -> np.ndarray[Any, Any]:
        return np.concatenate([getattr(c, name) for c in parts])[:EVENTS]

    ts = cat("ts_ms")
    order = np.argsort(ts, kind="stable")
    span = int(ts.max() - ts.min()) + 1
    when = now_ms - SPAN + (ts[order] - ts.min()) * SPAN // span
    cols = {
        name: cat(name)[order].tolist()
        for name in (
            "agent",
            "model",
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "cache_creation_tokens",
            "reasoning_tokens",
            "latency_ms",
            "error",
        )
    }
    models = sim.models
    errors = ("RateLimitError", "APITimeoutError", "InternalServerError", "OverloadedError")
    events, labels = [], []
    for i, ts_ms in enumerate(when.tolist()):
        agent = sim.agents[cols["agent"][i]]
        model = models[cols["model"][i]]
        err = cols["error"][i]
        events.append(
            UsageEvent.model_construct(
                ts=ts_ms,
                agent_id=agent.id,
                task_id=None,
                model=model,
                provider=MODELS[model].provider,
                input_tokens=cols["input_tokens"][i],
                output_tokens=cols["output_tokens"][i],
                cached_tokens=cols["cached_tokens"][i],
                cache_creation_tokens=cols["cache_creation_tokens"][i],
                reasoning_tokens=cols["reasoning_tokens"][i],
                cost_usd=None,
                latency_ms=round(cols["latency_ms"][i], 3),
                status="ok" if err < 0 else "error",
                error_type=None if err < 0 else errors[err % len(errors)],
            )
        )
        labels.append((agent.kind, agent.queue))
    return events, labels


async def _now_ms(redis: Redis) -> int:
    sec, usec = await redis.time()
    return int(sec) * 1000 + int(usec) // 1000


async def recorder_round(
    url: str, events: list[UsageEvent], labels: list[tuple[str, str]]
) -> tuple[float, int]:
    """Events/s from the first record() to close() returning (every batch acknowledged),
    and the number of script calls it took."""
    redis = Redis.from_url(url, decode_responses=True)  # as the agent runtime connects
    await redis.flushall()
    await redis.config_resetstat()
    keys = Keys("bench")
    rec = UsageRecorder(redis, keys, parse_tiers(DEFAULT_TIERS), load_price_table())
    t0 = time.perf_counter()
    for i, (e, (kind, queue)) in enumerate(zip(events, labels, strict=True)):
        rec.record(e, kind=kind, queue=queue)
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)
    await rec.close()
    seconds = time.perf_counter() - t0
    stored = await redis.xlen(keys.metrics.raw)
    stats = await redis.info("commandstats")
    await redis.aclose()
    assert stored == len(events), (stored, len(events))
    return len(events) / seconds, int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def xadd_round(url: str, events: list[UsageEvent], labels: list[tuple[str, str]]) -> float:
    """The bare minimum: each event as JSON, XADDed to one capped stream, pipelines of
    BATCH commands (no pricing, no rollups, no atomicity)."""
    redis = Redis.from_url(url, decode_responses=True)
    await redis.flushall()
    stream = Keys("bench").metrics.raw
    t0 = time.perf_counter()
    for start in range(0, len(events), BATCH):
        async with redis.pipeline(transaction=False) as pipe:
            for e, (kind, queue) in zip(
                events[start : start + BATCH], labels[start : start + BATCH], strict=True
            ):
                doc = e.model_dump(mode="json")
                doc["kind"], doc["queue"] = kind, queue
                pipe.xadd(stream, {"e": orjson.dumps(doc)}, maxlen=RAW_MAXLEN, approximate=True)
            await pipe.execute()
    seconds = time.perf_counter() - t0
    stored = await redis.xlen(stream)
    await redis.aclose()
    assert stored == len(events)
    return len(events) / seconds


def run_ingest() -> None:
    with redis_server() as url:

        async def now() -> int:
            redis = Redis.from_url(url)
            try:
                return await _now_ms(redis)
            finally:
                await redis.aclose()

        events, labels = make_events(asyncio.run(now()))
        ours: list[float] = []
        base: list[float] = []
        scripts: list[int] = []
        for _ in range(ROUNDS):
            rate, calls = asyncio.run(recorder_round(url, events, labels))
            ours.append(rate)
            scripts.append(calls)
            base.append(asyncio.run(xadd_round(url, events, labels)))
    o, b = median(ours), median(base)
    report(
        f"usage ingest, {len(events):,} events of {AGENTS} agents and 6 models "
        f"(median of {ROUNDS} rounds)"
    )
    report(
        f"  UsageRecorder : {o:9,.0f} events/s  (record() to close(); "
        f"{median([float(s) for s in scripts]):.0f} script calls)"
    )
    report(f"  XADD baseline : {b:9,.0f} events/s  (pipelines of {BATCH})")
    report(f"  ratio (recorder/baseline): {o / b:.2f}   target: >= 0.25")
    report(f"  recorder >= 20,000 events/s: {'yes' if o >= 20_000 else 'NO'}   target: yes")


# -- query --------------------------------------------------------------------------------


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    conn.request("GET", path, headers=AUTH)
    resp = conn.getresponse()
    body = resp.read()
    elapsed = (time.perf_counter() - t0) * 1000
    if resp.status != 200:
        raise RuntimeError(f"GET {path}: {resp.status} {body[:300]!r}")
    return elapsed, body


def pandas_answer(df: pd.DataFrame, hours: pd.DatetimeIndex) -> pd.DataFrame:
    """Cost per hour and agent from the raw events, zero-filled over the whole range."""
    table = (
        df.groupby([pd.Grouper(key="ts", freq="1h"), "agent"], observed=True)["cost"]
        .sum()
        .unstack(fill_value=0)
    )
    return table.reindex(hours, fill_value=0)


def run_query() -> None:
    raw: list[tuple[np.ndarray[Any, Any], ...]] = []
    agent_ids: list[str] = []

    def keep(calls: Calls, sim: Simulation) -> None:
        if not agent_ids:
            agent_ids.extend(a.id for a in sim.agents)
        raw.append((calls.ts_ms.copy(), calls.agent.copy(), calls.cost_pico.copy()))

    with redis_server() as url:
        summary = asyncio.run(
            backfill(url, days=QUERY_DAYS, agents=AGENTS, progress=True, on_calls=keep)
        )
        report(
            f"backfill {QUERY_DAYS} d x {AGENTS} agents: {summary['calls']:,} calls "
            f"in {summary['seconds']:.1f} s ({summary['calls_per_s']:,} calls/s, "
            f"{summary['batches']} script calls)"
        )
        df = pd.DataFrame(
            {
                "ts": pd.to_datetime(np.concatenate([r[0] for r in raw]), unit="ms"),
                "agent": pd.Categorical.from_codes(
                    np.concatenate([r[1] for r in raw]), categories=pd.Index(agent_ids)
                ),
                "cost": np.concatenate([r[2] for r in raw]) / 1e12,
            }
        )
        del raw[:]
        with project_server(url, EZ_BACKFILL_DAYS="0") as base:
            parts = urlsplit(base)
            conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port)
            _, body = _get(conn, QUERY)  # warm-up: connection, script cache, first import
            doc = orjson.loads(body)
            hours = pd.date_range(
                pd.Timestamp(parse_time(doc["from"]), unit="ms"),
                periods=len(doc["t"]),
                freq="1h",
            )
            # alternate the two, as bench_api alternates servers: both see the same machine
            latencies: list[float] = []
            exec_ms: list[float] = []
            timings: list[float] = []
            answer = pd.DataFrame()
            for _ in range(PANDAS_RUNS):
                for _ in range(REQUESTS // PANDAS_RUNS):
                    ms, body = _get(conn, QUERY)
                    latencies.append(ms)
                    exec_ms.append(orjson.loads(body)["stats"]["exec_ms"])
                t0 = time.perf_counter()
                answer = pandas_answer(df, hours)
                timings.append((time.perf_counter() - t0) * 1000)
            conn.close()
        doc = orjson.loads(body)
    # the two answers agree: they could differ by the per-minute rounding to nano-dollars,
    # but at the shipped rates every call costs a whole number of nano-dollars
    worst = 0.0
    for s in doc["series"]:
        ours = np.array(s["values"]["cost_usd"])
        theirs = answer[s["group"]["agent"]].to_numpy()
        worst = max(worst, float(np.abs(ours - theirs).max()))
    assert len(doc["series"]) == AGENTS and worst < 1e-6, worst
    api_ms, pandas_ms = median(latencies), median(timings)
    report(
        f"GET {QUERY}  ({len(doc['series'])} series x {len(doc['t'])} buckets, "
        f"{len(body) / 1e6:.1f} MB; {len(df):,} raw events)"
    )
    report(
        f"  API (median of {len(latencies)} sequential): {api_ms:8.1f} ms  "
        f"(server exec_ms, median: {median(exec_ms):.1f})"
    )
    report(f"  pandas on raw events (median of {PANDAS_RUNS}): {pandas_ms:8.1f} ms")
    report(f"  speed-up (pandas/API): {pandas_ms / api_ms:.1f}x   target: >= 50x")
    report(f"  API median < 100 ms: {'yes' if api_ms < 100 else 'NO'}   target: yes")
    report(f"  largest difference in any bucket: ${worst:.2e}")


def run() -> None:
    run_ingest()
    run_query()
