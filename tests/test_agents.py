"""Agents and control commands end to end: restart, stop, liveness, expiry."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ezdash.agent import Agent, TaskContext

from .conftest import Api, Fleet, wait_for


async def command_reaches(api: Api, cid: str, status: str, timeout: float = 10.0) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        doc: dict[str, Any] = (await api.get(f"/api/control/commands/{cid}")).json
        return doc if doc["status"] == status else None

    doc: dict[str, Any] = await wait_for(check, timeout, what=f"command {cid} {status}")
    return doc


async def agent_status(api: Api, agent_id: str) -> str:
    r = await api.get(f"/api/agents/{agent_id}")
    status: str = r.json["status"]
    return status


async def registered(api: Api, agent_id: str, status: str = "idle") -> None:
    async def check() -> bool:
        r = await api.get(f"/api/agents/{agent_id}")
        return r.status == 200 and r.json["status"] == status

    await wait_for(check, 10, what=f"{agent_id} {status}")


async def test_list_and_detail(api: Api, fleet: Fleet) -> None:
    fleet.start("b-agent", kind="coder", model="gpt-4o", tags={"team": "x"})
    fleet.start("a-agent", kind="researcher", name="Alice")
    await registered(api, "a-agent")
    await registered(api, "b-agent")
    page = (await api.get("/api/agents")).json
    assert [a["id"] for a in page["items"]] == ["a-agent", "b-agent"]
    assert page["next_cursor"] is None
    b = page["items"][1]
    assert (b["kind"], b["model"], b["tags"], b["restarts"]) == (
        "coder",
        "gpt-4o",
        {"team": "x"},
        0,
    )
    assert b["last_heartbeat"].endswith("Z") and 0 <= b["heartbeat_age_s"] < 1
    assert {a["transport"] for a in page["items"]} == {"redis"}  # agents on Redis
    first = (await api.get("/api/agents?limit=1")).json
    assert [a["id"] for a in first["items"]] == ["a-agent"]
    second = (await api.get(f"/api/agents?limit=1&cursor={first['next_cursor']}")).json
    assert [a["id"] for a in second["items"]] == ["b-agent"] and second["next_cursor"] is None
    assert [a["id"] for a in (await api.get("/api/agents?kind=coder")).json["items"]] == ["b-agent"]
    assert [a["id"] for a in (await api.get("/api/agents?q=ALI")).json["items"]] == ["a-agent"]
    detail = (await api.get("/api/agents/a-agent")).json
    assert detail["stats"] == {
        "tasks_succeeded_1h": 0,
        "tasks_failed_1h": 0,
        "tokens_24h": 0,
        "cost_usd_24h": 0.0,
        "latency_p95_ms_1h": None,
    }
    assert detail["recent_errors"] == [] and detail["pending_commands"] == []


async def test_restart_flow(api: Api, fleet: Fleet) -> None:
    inits: list[int] = []

    async def on_restart(agent: Agent) -> None:
        inits.append(agent.restarts)

    agent = fleet.start("worker-1")
    agent.on_restart = on_restart
    await registered(api, "worker-1")
    dry = await api.post("/api/agents/worker-1/restart?dry_run=true")
    assert dry.status == 200 and dry.json["dry_run"] is True
    assert (await api.get("/api/control/commands")).json["items"] == []

    r = await api.post("/api/agents/worker-1/restart", headers={"Idempotency-Key": "r1"})
    assert r.status == 202
    cmd = r.json["command"]
    assert (cmd["action"], cmd["agent_id"], cmd["status"]) == ("restart", "worker-1", "pending")
    assert r.headers["Location"] == f"/api/control/commands/{cmd['id']}"
    done = await command_reaches(api, cmd["id"], "completed")
    assert done["acknowledged_at"] <= done["completed_at"]
    assert inits == [0]
    detail = (await api.get("/api/agents/worker-1")).json
    assert detail["restarts"] == 1 and detail["status"] == "idle"
    again = await api.post("/api/agents/worker-1/restart", headers={"Idempotency-Key": "r1"})
    assert again.status == 202 and again.json["command"]["id"] == cmd["id"]
    listed = (await api.get("/api/control/commands?agent=worker-1")).json["items"]
    assert [c["id"] for c in listed] == [cmd["id"]]
    events: list[tuple[str, dict[str, str]]] = await api.services.redis.xrange(
        api.services.keys.events
    )  # type: ignore[assignment]
    kinds = [f["type"] for _, f in events]
    assert "command.updated" in kinds and "agent.updated" in kinds


async def test_restart_waits_for_running_task(api: Api, fleet: Fleet) -> None:
    gate = asyncio.Event()

    async def handler(ctx: TaskContext) -> Any:
        await gate.wait()
        return 1

    fleet.start("worker-1", handler)
    t = (await api.post("/api/tasks", json={"type": "x"})).json["task"]
    await registered(api, "worker-1", "busy")
    cmd = (await api.post("/api/agents/worker-1/restart")).json["command"]
    await command_reaches(api, cmd["id"], "acknowledged")
    await registered(api, "worker-1", "restarting")
    gate.set()
    await command_reaches(api, cmd["id"], "completed")
    assert (await api.get(f"/api/tasks/{t['id']}")).json["status"] == "succeeded"


async def test_graceful_stop_finishes_task(api: Api, fleet: Fleet) -> None:
    gate = asyncio.Event()

    async def handler(ctx: TaskContext) -> Any:
        await gate.wait()
        return "finished"

    fleet.start("worker-1", handler)
    t = (await api.post("/api/tasks", json={"type": "x"})).json["task"]
    await registered(api, "worker-1", "busy")
    r = await api.fetch("DELETE", "/api/agents/worker-1")
    assert r.status == 202 and r.json["command"]["action"] == "stop"
    assert r.json["command"]["force"] is False
    await registered(api, "worker-1", "stopping")
    gate.set()
    await command_reaches(api, r.json["command"]["id"], "completed")
    task = (await api.get(f"/api/tasks/{t['id']}")).json
    assert task["status"] == "succeeded" and task["result"] == "finished"
    assert await agent_status(api, "worker-1") == "stopped"
    r = await api.post("/api/agents/worker-1/restart")
    assert r.status == 409
    assert (await api.fetch("DELETE", "/api/agents/worker-1")).status == 409


async def test_forced_stop_requeues_task(api: Api, fleet: Fleet) -> None:
    started = asyncio.Event()

    async def stuck(ctx: TaskContext) -> Any:
        started.set()
        await asyncio.sleep(3600)

    fleet.start("worker-1", stuck)
    t = (await api.post("/api/tasks", json={"type": "x", "max_attempts": 1})).json["task"]
    await asyncio.wait_for(started.wait(), 10)
    dry = await api.fetch("DELETE", "/api/agents/worker-1?force=true&dry_run=true")
    assert dry.status == 200 and t["id"] in dry.json["would"]
    r = await api.fetch("DELETE", "/api/agents/worker-1?force=true")
    assert r.status == 202 and r.json["command"]["force"] is True
    await command_reaches(api, r.json["command"]["id"], "completed")
    task = (await api.get(f"/api/tasks/{t['id']}")).json
    # back on its queue even though it was its last attempt: a forced stop is not its fault
    assert task["status"] == "queued" and task["agent_id"] is None
    assert [h["status"] for h in task["history"]] == ["abandoned"]
    queues = (await api.get("/api/queues")).json
    assert queues[0]["depth"] == 1 and queues[0]["running"] == 0

    fleet.start("worker-2")

    async def finished() -> bool:
        return (await api.get(f"/api/tasks/{t['id']}")).json["status"] == "succeeded"

    await wait_for(finished, 10, what="requeued task to succeed")
    hist = (await api.get(f"/api/tasks/{t['id']}")).json["history"]
    assert [(h["agent_id"], h["status"]) for h in hist] == [
        ("worker-1", "abandoned"),
        ("worker-2", "succeeded"),
    ]


async def test_unresponsive_after_heartbeat_timeout(api: Api, fleet: Fleet) -> None:
    agent = fleet.start("worker-1")
    await registered(api, "worker-1")
    await agent.kill()  # no more heartbeats, no goodbye
    await registered(api, "worker-1", "unresponsive")
    listed = (await api.get("/api/agents?status=unresponsive")).json["items"]
    assert [a["id"] for a in listed] == ["worker-1"]
    assert listed[0]["heartbeat_age_s"] > 1.0  # the configured timeout


async def test_command_expires_when_not_acknowledged(api: Api, fleet: Fleet) -> None:
    agent = fleet.start("worker-1")
    await registered(api, "worker-1")
    await agent.kill()
    cmd = (await api.post("/api/agents/worker-1/restart")).json["command"]
    expired = await command_reaches(api, cmd["id"], "expired", timeout=10)
    assert "acknowledge" in expired["error"]
    # an agent coming back late must not act on it
    status = await api.services.commands.update(cmd["id"], "acknowledged", agent_id="worker-1")
    assert status == "refused:expired"


@pytest.mark.parametrize(
    ("method", "path", "status", "field"),
    [
        ("GET", "/api/agents/ghost", 404, None),
        ("GET", "/api/agents/bad%20id", 404, None),
        ("POST", "/api/agents/ghost/restart", 404, None),
        ("DELETE", "/api/agents/ghost", 404, None),
        ("GET", "/api/agents?status=sleeping", 422, "status"),
        ("GET", "/api/agents?limit=-1", 422, "limit"),
        ("GET", "/api/agents?cursor=AAAA", 404, "cursor"),
        ("GET", "/api/agents?colour=red", 400, "colour"),
        ("DELETE", "/api/agents/ghost?force=perhaps", 422, "force"),
        ("GET", "/api/control/commands/cmd_nothing", 404, None),
        ("GET", "/api/control/commands?status=done", 422, "status"),
        ("GET", "/api/control/commands?agent=bad%20id", 422, "agent"),
        ("PUT", "/api/agents/ghost", 405, None),
    ],
)
async def test_bad_requests(
    api: Api, method: str, path: str, status: int, field: str | None
) -> None:
    r = await api.fetch(method, path)
    assert r.status == status, r.json
    assert r.headers["Content-Type"] == "application/problem+json"
    assert r.json["status"] == status
    if field:
        assert r.json["errors"][0]["field"] == field


async def test_restart_rejects_body(api: Api, fleet: Fleet) -> None:
    fleet.start("worker-1")
    await registered(api, "worker-1")
    r = await api.post("/api/agents/worker-1/restart", json={"now": True})
    assert r.status == 400 and r.json["errors"][0]["field"] == "body"
