"""Issue 2: GET /api/agents?limit=500 with 1,000 agents against the naive baseline
(one HGETALL per agent hash in a pipeline, then json.dumps); POST /api/tasks
throughput and GET /api/tasks/{id} p99 against bare handlers doing the same I/O."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time

import orjson
from redis.asyncio import Redis

from ezdash.keys import Keys
from ezdash.store.scripts import Scripts

from .baseline_server import NAIVE_AGENTS, naive_agent_key
from .common import (
    BENCH_ADMIN_KEY,
    baseline_server,
    median,
    project_server,
    redis_server,
    report,
)
from .loadgen import LoadResult, load

AGENTS = 1000
AUTH = {"Authorization": f"Bearer {BENCH_ADMIN_KEY}"}
ROUNDS = int(os.environ.get("EZ_BENCH_ROUNDS", "3"))


def agent_doc(i: int, rng: random.Random) -> dict[str, object]:
    kind = rng.choice(["researcher", "coder", "summarizer", "support"])
    return {
        "id": f"agent-{i:05d}",
        "name": f"{kind} #{i}",
        "kind": kind,
        "status": rng.choice(["idle", "busy"]),
        "model": rng.choice(["gpt-4o", "claude-sonnet-4"]),
        "host": f"worker-{i % 40}.fleet.internal",
        "pid": 1000 + i,
        "version": "0.1.0",
        "current_task": f"tsk_{rng.getrandbits(100):026X}"[:30],
        "started_at": 1795860000000 + i,
        "restarts": rng.randint(0, 3),
        "tags": {"env": "prod", "region": "eu-west"},
        "queues": [kind],
        "concurrency": 1,
    }


async def seed_agents(url: str) -> None:
    redis = Redis.from_url(url, decode_responses=True)
    keys = Keys()
    scripts = Scripts(redis)
    rng = random.Random(1)
    for i in range(AGENTS):
        doc = agent_doc(i, rng)
        await scripts.run(
            "agent_put", [keys.agents], [keys.base, doc["id"], orjson.dumps(doc).decode(), 100000]
        )
        naive: dict[str | bytes | bytearray | memoryview | int | float, str | int] = {
            k: json.dumps(v) if isinstance(v, dict | list) else str(v) for k, v in doc.items()
        }
        naive["last_heartbeat"] = str(int(time.time() * 1000))
        await redis.hset(naive_agent_key(str(doc["id"])), mapping=naive)
        await redis.zadd(NAIVE_AGENTS, {str(doc["id"]): 0})
    await redis.aclose()


def fmt(r: LoadResult) -> str:
    return f"{r.rps:8.1f} req/s  p50 {r.p50_ms:7.1f} ms  p99 {r.p99_ms:7.1f} ms  errors {r.errors}"


def compare(
    name: str,
    target: str,
    project: str,
    baseline: str,
    paths: list[str],
    *,
    method: str = "GET",
    bodies: list[bytes] | None = None,
    concurrency: int = 16,
    seconds: float = 5.0,
    headers: tuple[dict[str, str], dict[str, str]] | None = None,
    labels: tuple[str, str] = ("project", "baseline"),
) -> float:
    """Alternate the two servers for ROUNDS rounds; report medians and the ratio."""
    ours: list[LoadResult] = []
    base: list[LoadResult] = []
    h_ours, h_base = headers or (AUTH, {})
    for _ in range(ROUNDS):
        ours.append(
            load(
                project,
                paths,
                method=method,
                bodies=bodies,
                concurrency=concurrency,
                seconds=seconds,
                headers=h_ours,
            )
        )
        base.append(
            load(
                baseline,
                paths,
                method=method,
                bodies=bodies,
                concurrency=concurrency,
                seconds=seconds,
                headers=h_base,
            )
        )
    o_rps, b_rps = median([r.rps for r in ours]), median([r.rps for r in base])
    o_p99, b_p99 = median([r.p99_ms for r in ours]), median([r.p99_ms for r in base])
    a, b = labels
    report(f"{name}  (median of {ROUNDS} x {seconds:.0f}s, {concurrency} connections)")
    report(
        f"  {a:<10}: {o_rps:8.1f} req/s  p99 {o_p99:7.1f} ms  errors {sum(r.errors for r in ours)}"
    )
    report(
        f"  {b:<10}: {b_rps:8.1f} req/s  p99 {b_p99:7.1f} ms  errors {sum(r.errors for r in base)}"
    )
    # Each round runs the two back to back, so the ratio within a round cancels the
    # machine's drift between rounds; its median is the figure compared with the target.
    paired = median([o.rps / b.rps for o, b in zip(ours, base, strict=True)])
    report(
        f"  ratio ({a}/{b} throughput): {paired:.2f} median of rounds "
        f"({o_rps / b_rps:.2f} of medians)   target: {target}"
    )
    return paired


def run() -> None:
    with redis_server() as url:
        asyncio.run(seed_agents(url))
        with project_server(url) as project, baseline_server(url) as baseline:
            compare(
                "GET /api/agents?limit=500 with 1,000 agents",
                ">= 1.0",
                project,
                baseline,
                ["/api/agents?limit=500"],
            )
            bodies = [
                orjson.dumps(
                    {
                        "type": "summarize",
                        "queue": "bench",
                        "payload": {"prompt": "x" * 200, "n": i},
                    }
                )
                for i in range(64)
            ]
            compare(
                "POST /api/tasks",
                "report",
                project,
                baseline,
                ["/api/tasks"],
                method="POST",
                bodies=bodies,
            )
            ids = asyncio.run(_task_ids(url))
            compare(
                "GET /api/tasks/{id} (p99 is the figure asked for)",
                "report",
                project,
                baseline,
                [f"/api/tasks/{t}" for t in ids],
            )


async def _task_ids(url: str) -> list[str]:
    redis = Redis.from_url(url, decode_responses=True)
    ids = await redis.zrange(Keys().tasks, 0, 499)
    await redis.aclose()
    return [str(i) for i in ids]
