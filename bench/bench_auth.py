"""Issues 3 and 9: authenticated GET /api/agents (API key, and JWT) against the same endpoint
with authentication and rate limiting switched off, in the same run; and the cost of
the authorize/rate-limit script per request."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

from redis.asyncio import Redis

from ezdash.keys import Keys
from ezdash.store.scripts import Scripts

from .bench_api import AUTH, compare, seed_agents
from .common import project_server, redis_server, report

CALLS = 5000


def _token(base: str) -> str:
    req = urllib.request.Request(base + "/api/auth/token", method="POST", data=b"", headers=AUTH)
    with urllib.request.urlopen(req, timeout=5) as resp:
        token: str = json.loads(resp.read())["access_token"]
    return token


async def script_cost(url: str) -> None:
    """Redis-side time per call (INFO commandstats) and the client round trip of the
    authorize script against a PING on the same connection."""
    redis = Redis.from_url(url, decode_responses=True)
    keys = Keys()
    scripts = Scripts(redis)
    args = [keys.base, "jwt", "", "key:bench", "read", 1_000_000_000, 60_000, 1, "ip:bench"]
    await scripts.run("authorize", [keys.api_key_digests], args)
    await redis.config_resetstat()
    t0 = time.perf_counter()
    for _ in range(CALLS):
        await scripts.run("authorize", [keys.api_key_digests], args)
    script_us = (time.perf_counter() - t0) / CALLS * 1e6
    t0 = time.perf_counter()
    for _ in range(CALLS):
        await redis.ping()
    ping_us = (time.perf_counter() - t0) / CALLS * 1e6
    stats = await redis.info("commandstats")
    server_us = float(stats.get("cmdstat_evalsha", {}).get("usec_per_call", 0.0))
    await redis.aclose()
    report("authorize/rate-limit script, per request (sequential, one connection)")
    report(f"  inside Redis (commandstats usec_per_call): {server_us:6.1f} us")
    report(f"  client round trip: {script_us:6.1f} us   (PING round trip: {ping_us:6.1f} us)")


def run() -> None:
    with redis_server() as url:
        asyncio.run(seed_agents(url))
        with (
            project_server(url) as secured,
            project_server(url, EZ_AUTH="false", EZ_RATE_LIMIT="false") as open_,
        ):
            token = _token(secured)
            compare(
                "GET /api/agents, API key vs auth and rate limits off",
                ">= 0.9 (issue 9: the structural gate)",
                secured,
                open_,
                ["/api/agents"],
                headers=(AUTH, {}),
                labels=("api key", "off"),
            )
            compare(
                "GET /api/agents, JWT vs auth and rate limits off",
                ">= 0.9 (issue 9: the structural gate)",
                secured,
                open_,
                ["/api/agents"],
                headers=({"Authorization": f"Bearer {token}"}, {}),
                labels=("jwt", "off"),
            )
        asyncio.run(script_cost(url))
