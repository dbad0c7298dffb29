"""Task lifecycle through the HTTP API with real agents on a real Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ezdash.agent import PermanentError, TaskContext

from .conftest import Api, Fleet, wait_for


async def create(api: Api, **body: Any) -> dict[str, Any]:
    r = await api.post("/api/tasks", json={"type": "echo", **body})
    assert r.status == 201, r.json
    assert r.headers["Location"] == f"/api/tasks/{r.json['task']['id']}"
    task: dict[str, Any] = r.json["task"]
    return task


async def status_of(api: Api, tid: str) -> dict[str, Any]:
    r = await api.get(f"/api/tasks/{tid}")
    assert r.status == 200
    doc: dict[str, Any] = r.json
    return doc


async def reaches(api: Api, tid: str, status: str, timeout: float = 10.0) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        doc = await status_of(api, tid)
        return doc if doc["status"] == status else None

    doc: dict[str, Any] = await wait_for(check, timeout, what=f"{tid} to be {status}")
    return doc


async def test_create_and_get(api: Api) -> None:
    task = await create(api, payload={"text": "hi", "n": [1, 2]}, queue="q1", priority=3)
    assert task["status"] == "queued"
    assert task["payload"] == {"text": "hi", "n": [1, 2]}
    assert (task["queue"], task["priority"], task["attempts"], task["max_attempts"]) == (
        "q1",
        3,
        0,
        3,
    )
    assert task["created_at"].endswith("Z") and len(task["created_at"]) == 24
    doc = await status_of(api, task["id"])
    assert doc["history"] == []
    queues = (await api.get("/api/queues")).json
    assert [q["name"] for q in queues] == ["q1"]
    assert queues[0]["depth"] == 1 and queues[0]["running"] == 0


async def test_lifecycle_success(api: Api, fleet: Fleet) -> None:
    gate = asyncio.Event()

    async def handler(ctx: TaskContext) -> Any:
        await gate.wait()
        return {"done": ctx.payload["x"]}

    fleet.start("worker-1", handler)
    task = await create(api, payload={"x": 42})
    running = await reaches(api, task["id"], "running")
    assert running["agent_id"] == "worker-1" and running["attempts"] == 1
    assert running["history"][0]["status"] == "running"
    agent = (await api.get("/api/agents/worker-1")).json
    assert agent["status"] == "busy" and agent["current_task"] == task["id"]
    gate.set()
    done = await reaches(api, task["id"], "succeeded")
    assert done["result"] == {"done": 42}
    assert done["finished_at"] >= done["started_at"]
    assert [h["status"] for h in done["history"]] == ["succeeded"]
    stats = (await api.get("/api/agents/worker-1")).json["stats"]
    assert stats["tasks_succeeded_1h"] == 1


async def test_failed_then_retry_succeeds(api: Api, fleet: Fleet) -> None:
    calls: list[int] = []

    async def handler(ctx: TaskContext) -> Any:
        calls.append(ctx.attempt)
        if len(calls) == 1:
            raise PermanentError("bad prompt")
        return "ok"

    fleet.start("worker-1", handler)
    task = await create(api)
    failed = await reaches(api, task["id"], "failed")
    assert failed["error"] == {"type": "PermanentError", "message": "bad prompt"}
    assert failed["attempts"] == 1
    errors = (await api.get("/api/agents/worker-1")).json["recent_errors"]
    assert errors[0]["task_id"] == task["id"] and errors[0]["type"] == "PermanentError"

    r = await api.fetch("PUT", f"/api/tasks/{task['id']}/retry")
    assert r.status == 200 and r.json["task"]["status"] in ("queued", "running", "succeeded")
    done = await reaches(api, task["id"], "succeeded")
    assert done["attempts"] == 2 and done["error"] is None
    assert [h["status"] for h in done["history"]] == ["failed", "succeeded"]
    assert calls == [1, 2]


async def test_attempts_exhausted_is_dead(api: Api, fleet: Fleet) -> None:
    async def handler(ctx: TaskContext) -> Any:
        raise TimeoutError("provider timeout")

    fleet.start("worker-1", handler)
    task = await create(api, max_attempts=3)
    dead = await reaches(api, task["id"], "dead")
    assert dead["attempts"] == 3
    assert [h["status"] for h in dead["history"]] == ["failed"] * 3
    assert dead["error"]["type"] == "TimeoutError"


async def test_retry_conflicts(api: Api, fleet: Fleet) -> None:
    queued = await create(api, queue="nobody-reads-this")
    r = await api.fetch("PUT", f"/api/tasks/{queued['id']}/retry")
    assert r.status == 409
    assert r.headers["Content-Type"] == "application/problem+json"
    assert "queued" in r.json["detail"]
    fleet.start("worker-1")
    done = await create(api)
    await reaches(api, done["id"], "succeeded")
    r = await api.fetch("PUT", f"/api/tasks/{done['id']}/retry")
    assert r.status == 409 and r.json["status"] == 409
    r = await api.fetch("PUT", f"/api/tasks/{done['id']}/retry?dry_run=true")
    assert r.status == 409


async def test_cancel_queued_and_running(api: Api, fleet: Fleet) -> None:
    queued = await create(api, queue="idle")
    r = await api.post(f"/api/tasks/{queued['id']}/cancel?dry_run=true")
    assert r.status == 200 and r.json["dry_run"] is True
    assert (await status_of(api, queued["id"]))["status"] == "queued"
    r = await api.post(f"/api/tasks/{queued['id']}/cancel")
    assert r.status == 200 and r.json["task"]["status"] == "cancelled"
    assert (await api.post(f"/api/tasks/{queued['id']}/cancel")).status == 409

    started, cancelled = asyncio.Event(), asyncio.Event()

    async def handler(ctx: TaskContext) -> Any:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    fleet.start("worker-1", handler)
    task = await create(api)
    await asyncio.wait_for(started.wait(), 10)
    r = await api.post(f"/api/tasks/{task['id']}/cancel")
    assert r.status == 200
    await asyncio.wait_for(cancelled.wait(), 10)  # the agent notices at its next lease renewal
    doc = await status_of(api, task["id"])
    assert doc["status"] == "cancelled"
    assert doc["history"][-1]["status"] == "cancelled"

    # the cancelled one can be retried; the queue is then drained by a new agent
    r = await api.fetch("PUT", f"/api/tasks/{queued['id']}/retry")
    assert r.json["task"]["status"] == "queued"


async def test_priority_order(api: Api, fleet: Fleet) -> None:
    low = [await create(api, queue="p", payload={"i": i}) for i in range(3)]
    high = await create(api, queue="p", priority=9)
    order: list[str] = []

    async def handler(ctx: TaskContext) -> Any:
        order.append(ctx.id)

    fleet.start("worker-1", handler, queues=["p"])
    for t in [*low, high]:
        await reaches(api, t["id"], "succeeded")
    assert order == [high["id"], *(t["id"] for t in low)]


async def test_list_paging_and_filters(api: Api) -> None:
    ids = [
        (await create(api, queue="a" if i % 2 else "b", payload={"i": i}))["id"] for i in range(7)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        path = "/api/tasks?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = (await api.get(path)).json
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # newest first, each exactly once

    only_a = (await api.get("/api/tasks?queue=a&limit=500")).json
    assert [t["id"] for t in only_a["items"]] == [
        i for n, i in enumerate(reversed(ids)) if (6 - n) % 2
    ]
    queued_b = (await api.get("/api/tasks?status=queued&queue=b")).json["items"]
    assert {t["queue"] for t in queued_b} == {"b"} and len(queued_b) == 4
    assert (await api.get("/api/tasks?status=running")).json == {"items": [], "next_cursor": None}
    assert (await api.get("/api/tasks?from=now-1h&to=now")).json["next_cursor"] is None
    assert len((await api.get("/api/tasks?to=now-1h")).json["items"]) == 0

    page = (await api.get("/api/tasks?limit=2&queue=a")).json
    r = await api.get(f"/api/tasks?limit=2&queue=b&cursor={page['next_cursor']}")
    assert r.status == 404 and r.json["errors"][0]["field"] == "cursor"


async def test_idempotency_key(api: Api) -> None:
    hdr = {"Idempotency-Key": "order-77"}
    first = await api.post("/api/tasks", json={"type": "t", "payload": {"a": 1}}, headers=hdr)
    again = await api.post("/api/tasks", json={"type": "t", "payload": {"a": 1}}, headers=hdr)
    assert first.status == again.status == 201
    assert again.json["task"]["id"] == first.json["task"]["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await api.post("/api/tasks", json={"type": "t", "payload": {"a": 2}}, headers=hdr)
    assert other.status == 422 and "Idempotency-Key" in other.json["detail"]
    listed = (await api.get("/api/tasks")).json["items"]
    assert len(listed) == 1


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, "body"),
        (b'{"payload": {}}', 422, "type"),
        (b'{"type": 5}', 422, "type"),
        (b'{"type": "x", "payload": []}', 422, "payload"),
        (b'{"type": "x", "priority": "3"}', 422, "priority"),
        (b'{"type": "x", "priority": 10}', 422, "priority"),
        (b'{"type": "x", "max_attempts": 0}', 422, "max_attempts"),
        (b'{"type": "x", "queue": "no spaces"}', 422, "queue"),
        (b'{"type": "x", "colour": "red"}', 422, "colour"),
        (b'{"type": "x", "max_attempts": true}', 422, "max_attempts"),
        (b'{"type": ""}', 422, "type"),
    ],
)
async def test_create_bad_input(api: Api, body: bytes, status: int, field: str | None) -> None:
    r = await api.post("/api/tasks", body=body, headers={"Content-Type": "application/json"})
    assert r.status == status, r.json
    assert r.headers["Content-Type"] == "application/problem+json"
    assert r.json["status"] == status and r.json["title"] and r.json["detail"]
    if field:
        assert field in [e["field"] for e in r.json["errors"]]


async def test_size_limits(api: Api) -> None:
    big = {"type": "x", "payload": {"blob": "a" * (65 * 1024)}}
    r = await api.post("/api/tasks", json=big)
    assert r.status == 413 and r.json["errors"][0]["field"] == "payload"
    huge = b'{"type": "x", "payload": {"blob": "' + b"a" * (1 << 20) + b'"}}'
    r = await api.post("/api/tasks", body=huge, headers={"Content-Type": "application/json"})
    assert r.status == 413 and r.headers["Content-Type"] == "application/problem+json"
    r = await api.post(
        "/api/tasks", body=b"type=x", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert r.status == 415


@pytest.mark.parametrize(
    ("method", "path", "status", "field"),
    [
        ("GET", "/api/tasks/tsk_01M8GTE1GYDMJ6ZJP9XZZAER13", 404, None),
        ("GET", "/api/tasks/nope", 404, None),
        ("PUT", "/api/tasks/tsk_01M8GTE1GYDMJ6ZJP9XZZAER13/retry", 404, None),
        ("POST", "/api/tasks/tsk_01M8GTE1GYDMJ6ZJP9XZZAER13/cancel", 404, None),
        ("GET", "/api/tasks?status=done", 422, "status"),
        ("GET", "/api/tasks?limit=0", 422, "limit"),
        ("GET", "/api/tasks?limit=501", 422, "limit"),
        ("GET", "/api/tasks?limit=ten", 422, "limit"),
        ("GET", "/api/tasks?cursor=garbage", 404, "cursor"),
        ("GET", "/api/tasks?cursor=not%2Fone", 400, "cursor"),
        ("GET", "/api/tasks?from=yesterday", 422, "from"),
        ("GET", "/api/tasks?from=2026-11-28T10:00:00", 422, "from"),
        ("GET", "/api/tasks?stauts=queued", 400, "stauts"),
        ("GET", "/api/tasks?queue=a&queue=b", 400, "queue"),
        ("GET", "/api/tasks?queue=bad%20name", 422, "queue"),
        ("PUT", "/api/tasks/tsk_01M8GTE1GYDMJ6ZJP9XZZAER13/retry?dry_run=maybe", 422, "dry_run"),
        ("DELETE", "/api/tasks", 405, None),
        ("GET", "/api/nothing-here", 404, None),
        ("GET", "/nothing", 404, None),
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


async def test_a_to_before_from_selects_nothing(api: Api) -> None:
    """A schema-valid range that is empty is an empty list, not an error."""
    assert (await api.post("/api/tasks", json={"type": "t", "payload": {}})).status == 201
    r = await api.get("/api/tasks?from=now&to=now-1h")
    assert r.status == 200 and r.json == {"items": [], "next_cursor": None}
    assert len((await api.get("/api/tasks?from=now-1h")).json["items"]) == 1


async def test_a_whole_number_written_with_a_point_is_an_integer(api: Api) -> None:
    """JSON (and so the document's JSON Schema) has one number type: 3.0 is the integer
    3 wherever an integer is asked for; 3.5 is not one."""
    task = await create(api, priority=3.0, max_attempts=2.0)
    assert (task["priority"], task["max_attempts"]) == (3, 2)
    r = await api.post("/api/tasks", json={"type": "echo", "priority": 3.5})
    assert r.status == 422 and r.json["errors"][0]["field"] == "priority", r.json
    r = await api.post("/api/tasks", json={"type": "echo", "priority": "3"})
    assert r.status == 422 and r.json["errors"][0]["field"] == "priority", r.json
