"""The agent runtime records usage and task outcomes; they show up in the metrics."""

from __future__ import annotations

from typing import Any

from ezdash.agent import TaskContext

from .conftest import Api, Fleet, wait_for


async def test_runtime_records_usage_and_tasks(api: Api, fleet: Fleet) -> None:
    async def handler(ctx: TaskContext) -> Any:
        ctx.record_usage(
            model="gpt-4o",
            provider="openai",
            input_tokens=1000,
            cached_tokens=400,
            output_tokens=200,
            latency_ms=850.0,
        )
        ctx.record_usage(
            model="gpt-4o",
            provider="openai",
            input_tokens=10,
            output_tokens=0,
            latency_ms=50.0,
            status="error",
            error_type="RateLimited",
        )
        if ctx.payload.get("fail"):
            raise ValueError("no")
        return "ok"

    agent = fleet.start("rec-1", handler, kind="coder", usage_flush_s=0.1)
    await api.post("/api/tasks", json={"type": "t", "queue": "default"})
    await api.post("/api/tasks", json={"type": "t", "payload": {"fail": True}, "max_attempts": 1})

    async def recorded() -> dict[str, Any] | None:
        r = (await api.get("/api/metrics/performance?from=now-1h&group_by=kind")).json
        tot = r["totals"]
        return r if tot["requests"] == 4 and tot["tasks_completed"] == 1 else None

    perf = await wait_for(recorded, 10, what="usage to be written")
    assert perf["series"][0]["group"] == {"kind": "coder"}
    tokens = (await api.get("/api/metrics/tokens?from=now-1h&queue=default")).json
    assert tokens["totals"]["input_tokens"] == 2020
    assert tokens["totals"]["cached_tokens"] == 800
    costs = (await api.get("/api/metrics/costs?from=now-1h&agent=rec-1")).json
    # gpt-4o since 2024-08-06: $2.50 in, $1.25 cached, $10 out per million tokens
    per_task = (600 * 2.5 + 400 * 1.25 + 200 * 10 + 10 * 2.5) / 1e6
    assert abs(costs["totals"]["cost_usd"] - 2 * per_task) < 1e-9
    errors = (await api.get("/api/metrics/errors?from=now-1h")).json
    assert errors["by_type"] == [{"type": "RateLimited", "count": 2}]
    assert agent.recorder is not None
    stats = (await api.get("/api/agents/rec-1")).json["stats"]
    assert stats["tokens_24h"] == 2020 + 400 and abs(stats["cost_usd_24h"] - 2 * per_task) < 1e-9
    assert 800 < stats["latency_p95_ms_1h"] < 900
