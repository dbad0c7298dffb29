"""Issue 5: GET /api/summary with 1,000 agents and 30 days of rollups, median latency
cached (target < 20 ms) and cold (target < 200 ms).

The summary reads the fleet-wide rollups (dimension ``all``), so their cost depends
on the number of buckets, not on how many agents produced them: 30 days are
backfilled for 30 agents, and 1,000 agent documents are registered for the
by-status counts.  The cold server keeps its answer for a millisecond only, so
every request recomputes it; the cached one keeps it for a minute.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import urllib.request

from ezdash.backfill import backfill

from .bench_api import AUTH, seed_agents
from .common import project_server, redis_server, report

REQUESTS = 40


def timed_gets(base: str, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        req = urllib.request.Request(base + path, headers=AUTH)
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def run() -> None:
    with redis_server() as url:
        asyncio.run(seed_agents(url))
        asyncio.run(backfill(url, days=30, agents=30))
        with (
            project_server(url, EZ_SUMMARY_CACHE="0.001") as cold,
            project_server(url, EZ_SUMMARY_CACHE="60") as cached,
        ):
            timed_gets(cold, "/api/summary", 3)  # warm connections and the price table
            timed_gets(cached, "/api/summary", 3)
            cold_ms = timed_gets(cold, "/api/summary", REQUESTS)
            cached_ms = timed_gets(cached, "/api/summary", REQUESTS)
    report(f"GET /api/summary, 1,000 agents, 30 days of rollups ({REQUESTS} sequential requests)")
    report(
        f"  cold  : median {statistics.median(cold_ms):7.1f} ms  "
        f"p90 {sorted(cold_ms)[int(REQUESTS * 0.9)]:7.1f} ms   target: median < 200 ms"
    )
    report(
        f"  cached: median {statistics.median(cached_ms):7.1f} ms  "
        f"p90 {sorted(cached_ms)[int(REQUESTS * 0.9)]:7.1f} ms   target: median < 20 ms"
    )
