"""Nothing grows without bound and nothing waits forever: retention of finished tasks,
finished commands and silent agents; commands orphaned by a dead agent fail."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ezdash.agent import Agent

from .conftest import Api, Fleet, wait_for


@pytest.mark.parametrize(
    "settings_overrides",
    [{"task_retention": 1.0, "agent_retention": 2.0}],
)
async def test_retention(api: Api, fleet: Fleet) -> None:
    agent = fleet.start("short-lived")
    t = (await api.post("/api/tasks", json={"type": "x"})).json["task"]

    async def gone(path: str) -> bool:
        return (await api.get(path)).status == 404

    cmd = (await api.post("/api/agents/short-lived/restart")).json["command"]
    await wait_for(lambda: gone(f"/api/tasks/{t['id']}"), 10, what="task purge")
    await wait_for(lambda: gone(f"/api/control/commands/{cmd['id']}"), 10, what="command purge")
    assert (await api.get("/api/tasks")).json["items"] == []
    await agent.kill()
    await wait_for(lambda: gone("/api/agents/short-lived"), 10, what="agent purge")
    r = api.services.redis
    keys = api.services.keys
    assert not await r.exists(keys.agent_errors("short-lived"), keys.agent_commands("short-lived"))
    assert await r.zcard(keys.tasks_finished) == 0


async def test_acknowledged_command_of_dead_agent_fails(api: Api, fleet: Fleet) -> None:
    started = asyncio.Event()

    async def slow_restart(agent: Agent) -> None:
        started.set()
        await asyncio.sleep(3600)

    agent = fleet.start("fragile")
    agent.on_restart = slow_restart

    async def idle() -> bool:
        return (await api.get("/api/agents/fragile")).json.get("status") == "idle"

    await wait_for(idle, 10)
    cmd = (await api.post("/api/agents/fragile/restart")).json["command"]
    await asyncio.wait_for(started.wait(), 10)
    await agent.kill()

    async def failed() -> dict[str, Any] | None:
        doc: dict[str, Any] = (await api.get(f"/api/control/commands/{cmd['id']}")).json
        return doc if doc["status"] == "failed" else None

    doc = await wait_for(failed, 10, what="orphaned command to fail")
    assert doc["acknowledged_at"] is not None and "stopped responding" in doc["error"]
