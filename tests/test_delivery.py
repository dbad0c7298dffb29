"""At-least-once delivery: a task held by a killed agent is finished by another,
the record shows both attempts, and a late report from the dead attempt is ignored."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from ezdash.store.tasks import Delivery

from .conftest import REPO, Api, Fleet, wait_for


async def task_doc(api: Api, tid: str) -> dict[str, Any]:
    doc: dict[str, Any] = (await api.get(f"/api/tasks/{tid}")).json
    return doc


async def test_killed_agent_task_finished_by_another(
    api: Api, fleet: Fleet, redis_url: str
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.agent_proc",
        redis_url,
        "doomed",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        t = (await api.post("/api/tasks", json={"type": "x", "payload": {"n": 1}})).json["task"]
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.decode().strip() == f"started {t['id']}"
        running = await task_doc(api, t["id"])
        assert (running["status"], running["agent_id"]) == ("running", "doomed")
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    fleet.start("rescuer")

    async def done() -> dict[str, Any] | None:
        doc = await task_doc(api, t["id"])
        return doc if doc["status"] == "succeeded" else None

    doc = await wait_for(done, 15, what="the rescuer to finish the task")
    assert doc["attempts"] == 2 and doc["result"] == {"echo": {"n": 1}}
    assert [(h["attempt"], h["agent_id"], h["status"]) for h in doc["history"]] == [
        (1, "doomed", "lost"),
        (2, "rescuer", "succeeded"),
    ]
    assert doc["history"][0]["error"]["type"] == "AgentLost"
    assert (await api.get("/api/agents/doomed")).json["status"] == "unresponsive"
    # the queue holds nothing in flight any more
    q = (await api.get("/api/queues")).json[0]
    assert (q["depth"], q["running"]) == (0, 0)
    pending = await api.services.redis.xpending(
        api.services.keys.queue_stream("default", 0), "workers"
    )
    assert pending["pending"] == 0


async def test_late_report_from_reclaimed_attempt_is_ignored(api: Api) -> None:
    tasks = api.services.tasks
    task, _ = await tasks.create(type="x", payload={}, max_attempts=3)
    first = await tasks.take("slow", ["default"])
    assert isinstance(first, Delivery) and first.attempt == 1

    # the visibility timeout passes without a lease renewal: the server reclaims it
    async def reclaimed() -> bool:
        return (await tasks.get(task["id"]) or {}).get("status") == "queued"

    await wait_for(reclaimed, 10, what="reclaim")
    second = await tasks.take("fast", ["default"])
    assert isinstance(second, Delivery) and second.attempt == 2
    assert await tasks.lease(first, "slow") is False
    assert await tasks.finish(first, "slow", result="late") == ("stale", "running")
    assert await tasks.finish(second, "fast", result="on time") == ("ok", "succeeded")
    assert await tasks.finish(first, "slow", result="later") == ("stale", "succeeded")
    doc = await tasks.get(task["id"], history=True)
    assert doc is not None
    assert doc["status"] == "succeeded" and doc["agent_id"] == "fast"
    assert [h["status"] for h in doc["history"]] == ["lost", "succeeded"]


async def test_poison_task_ends_dead(api: Api) -> None:
    """A task whose every delivery is lost stops at max_attempts instead of looping."""
    tasks = api.services.tasks
    task, _ = await tasks.create(type="x", payload={}, max_attempts=2)
    for attempt in (1, 2):
        d = await tasks.take(f"victim-{attempt}", ["default"])
        assert isinstance(d, Delivery)

        async def moved(n: int = attempt) -> bool:
            doc = await tasks.get(task["id"]) or {}
            return doc.get("status") != "running" and doc.get("attempts") == n

        await wait_for(moved, 10, what=f"reclaim of attempt {attempt}")
    doc = await tasks.get(task["id"], history=True)
    assert doc is not None and doc["status"] == "dead"
    assert [h["status"] for h in doc["history"]] == ["lost", "lost"]
    assert doc["error"]["type"] == "AgentLost"
