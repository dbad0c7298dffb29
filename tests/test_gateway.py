"""The agent gateway (/api/agent/v1): agents with their own keys, over HTTP only.

Agents here are plain HTTP clients of a real server on a real Redis: what a Node or
Go agent would do.  The binding of an agent key (ids, queues) is tested from every
side it can be crossed; delivery (long poll, leases, finishing once) is tested
against the same scripts the Redis agents use."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from typing import Any

import pytest

from .conftest import Api, start_api, stop_api, wait_for

V1 = "/api/agent/v1"
CALL = {
    "model": "gpt-4o",
    "provider": "openai",
    "input_tokens": 1000,
    "output_tokens": 10,
    "latency_ms": 250.0,
    "status": "ok",
}


async def agent_key(api: Api, ids: str = "ci-*", queues: list[str] | None = None) -> str:
    r = await api.post(
        "/api/auth/keys",
        json={
            "name": f"agents {ids}",
            "scopes": ["agent"],
            "agent": {"ids": ids, "queues": queues or ["code", "summarize"]},
        },
    )
    assert r.status == 201, r.json
    assert r.json["agent"] == {"ids": ids, "queues": queues or ["code", "summarize"]}
    return str(r.json["key"])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def register(api: Api, key: str, agent_id: str, queues: list[str]) -> dict[str, Any]:
    r = await api.fetch(
        "PUT",
        f"{V1}/agents/{agent_id}",
        json={"name": agent_id, "kind": "ci", "model": "gpt-4o", "queues": queues},
        headers=bearer(key),
    )
    assert r.status == 200, r.json
    doc: dict[str, Any] = r.json
    return doc


async def take(api: Api, key: str, agent_id: str, queues: list[str], wait_s: float = 5.0) -> Any:
    r = await api.post(
        f"{V1}/agents/{agent_id}/take",
        json={"queues": queues, "wait_s": wait_s},
        headers=bearer(key),
    )
    assert r.status in (200, 204), r.json
    return r.json["task"] if r.status == 200 else None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "a", "scopes": ["agent"]}, "agent"),
        (
            {"name": "a", "scopes": ["agent", "read"], "agent": {"ids": "*", "queues": ["*"]}},
            "scopes",
        ),
        ({"name": "a", "scopes": ["read"], "agent": {"ids": "*", "queues": ["*"]}}, "agent"),
        ({"name": "a", "scopes": ["agent"], "agent": {"ids": "a b", "queues": ["*"]}}, "agent.ids"),
        ({"name": "a", "scopes": ["agent"], "agent": {"ids": "*", "queues": []}}, "agent.queues"),
    ],
)
async def test_agent_keys_have_the_scope_alone_and_a_binding(
    api: Api, body: dict[str, Any], field: str
) -> None:
    r = await api.post("/api/auth/keys", json=body)
    assert r.status == 422, r.json
    assert r.json["errors"][0]["field"] == field, r.json


async def test_a_key_acts_only_within_its_binding(api: Api) -> None:
    key = await agent_key(api)
    me = bearer(key)
    # not an id of its glob: register, heartbeat, take, usage, logs are all refused
    r = await api.fetch("PUT", f"{V1}/agents/prod-1", json={"queues": ["code"]}, headers=me)
    assert r.status == 403 and r.json["type"].endswith("/forbidden"), r.json
    for tail, body in (
        ("heartbeat", {}),
        ("take", {"queues": ["code"], "wait_s": 0}),
        ("usage", [{"model": "m", "provider": "p", "input_tokens": 1, "output_tokens": 1}]),
        ("logs", [{"message": "hi"}]),
    ):
        r = await api.post(f"{V1}/agents/prod-1/{tail}", json=body, headers=me)
        assert r.status == 403, (tail, r.json)
    # a queue it was not granted
    r = await api.fetch("PUT", f"{V1}/agents/ci-1", json={"queues": ["billing"]}, headers=me)
    assert r.status == 403 and r.json["errors"][0]["field"] == "queues.0", r.json
    await register(api, key, "ci-1", ["code"])
    r = await api.post(f"{V1}/agents/ci-1/take", json={"queues": ["billing"]}, headers=me)
    assert r.status == 403 and r.json["errors"][0]["field"] == "queues.0", r.json
    # nothing else of the API: reads, writes, token exchange
    for method, path in (
        ("GET", "/api/agents"),
        ("POST", "/api/tasks"),
        ("POST", "/api/auth/token"),
    ):
        r = await api.fetch(method, path, json={} if method == "POST" else None, headers=me)
        assert r.status == 403, (method, path, r.json)
    # usage or logs naming another agent: the whole batch is refused, nothing written
    r = await api.post(
        f"{V1}/agents/ci-1/usage",
        json=[
            {"model": "gpt-4o", "provider": "openai", "input_tokens": 5, "output_tokens": 1},
            {
                "agent_id": "ci-2",
                "model": "gpt-4o",
                "provider": "openai",
                "input_tokens": 5,
                "output_tokens": 1,
            },
        ],
        headers=me,
    )
    assert r.status == 422 and r.json["errors"][0]["field"] == "events[1].agent_id", r.json
    r = await api.post(
        f"{V1}/agents/ci-1/logs", json=[{"agent_id": "ci-9", "message": "x"}], headers=me
    )
    assert r.status == 422, r.json
    tokens = (await api.get("/api/metrics/tokens?from=now-1h")).json
    assert tokens["totals"]["input_tokens"] == 0


async def test_a_task_is_finished_only_by_its_holder(api: Api) -> None:
    key = await agent_key(api)
    other = await agent_key(api, ids="ci-2")
    await register(api, key, "ci-1", ["code"])
    await register(api, other, "ci-2", ["code"])
    r = await api.post("/api/tasks", json={"type": "fix", "queue": "code", "payload": {"n": 1}})
    tid = r.json["task"]["id"]
    task = await take(api, key, "ci-1", ["code"])
    assert task["id"] == tid and task["attempt"] == 1 and task["payload"] == {"n": 1}
    token = task["lease"]["token"]
    # the task as the take script left it: what a read finds now
    stored = (await api.get(f"/api/tasks/{tid}")).json
    stored.pop("history")
    assert {k: v for k, v in task.items() if k not in ("attempt", "lease")} == stored
    assert stored["status"] == "running" and stored["agent_id"] == "ci-1"
    # another key cannot use the token (it names an agent outside its glob) ...
    r = await api.post(
        f"{V1}/tasks/{tid}/finish",
        json={"token": token, "status": "succeeded"},
        headers=bearer(other),
    )
    assert r.status == 403, r.json
    # ... nor make one up
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    r = await api.post(
        f"{V1}/tasks/{tid}/finish",
        json={"token": forged, "status": "succeeded"},
        headers=bearer(key),
    )
    assert r.status == 422 and r.json["errors"][0]["field"] == "token", r.json
    r = await api.post(f"{V1}/tasks/{tid}/lease", json={"token": token}, headers=bearer(key))
    assert r.status == 200 and r.json["expires_at"].endswith("Z"), r.json
    r = await api.post(
        f"{V1}/tasks/{tid}/finish",
        json={"token": token, "status": "succeeded", "result": {"ok": True}},
        headers=bearer(key),
    )
    assert r.status == 200 and r.json["task"]["status"] == "succeeded", r.json
    assert r.json["task"]["result"] == {"ok": True}
    # answered from what the script left, which is what a read finds
    assert r.json["task"] == {
        k: v for k, v in (await api.get(f"/api/tasks/{tid}")).json.items() if k != "history"
    }
    # the same token again: the attempt is over; the answer says what the task is now
    r = await api.post(
        f"{V1}/tasks/{tid}/finish", json={"token": token, "status": "failed"}, headers=bearer(key)
    )
    assert r.status == 409 and r.json["type"].endswith("/lease-lost"), r.json
    assert r.json["task_status"] == "succeeded", r.json
    r = await api.post(f"{V1}/tasks/{tid}/lease", json={"token": token}, headers=bearer(key))
    assert r.status == 409 and r.json["task_status"] == "succeeded", r.json


async def test_task_outcomes_of_gateway_agents_reach_the_rollups(api: Api) -> None:
    """The server counts what a gateway agent finishes, as a Redis agent counts its
    own: completed and failed by agent and kind, with the attempt's duration; a retry
    (failed, back to queued) is not an outcome."""
    key = await agent_key(api)
    await register(api, key, "ci-1", ["code"])
    for payload in ({"n": 1}, {"n": 2}, {"n": 3}):
        r = await api.post("/api/tasks", json={"type": "fix", "queue": "code", "payload": payload})
        assert r.status == 201, r.json
    finishes = [
        {"status": "succeeded", "result": {}},
        {"status": "failed", "error": {"type": "Boom", "message": "x", "permanent": True}},
        {"status": "failed", "error": {"type": "Flaky", "message": "y"}},  # retried
    ]
    for body in finishes:
        task = await take(api, key, "ci-1", ["code"])
        r = await api.post(
            f"{V1}/tasks/{task['id']}/finish",
            json={"token": task["lease"]["token"], **body},
            headers=bearer(key),
        )
        assert r.status == 200, r.json
    assert r.json["task"]["status"] == "queued"

    async def counted() -> dict[str, Any] | None:
        q = "/api/metrics/performance?from=now-1h&group_by=kind&agent=ci-1"
        perf: dict[str, Any] = (await api.get(q)).json
        return perf if perf["totals"]["tasks_completed"] == 1 else None

    perf = await wait_for(counted, 10, what="the outcomes to be rolled up")
    assert perf["totals"]["task_duration_p95_s"] is not None
    h = await api.get("/api/analytics/history?metric=tasks_failed&agent=ci-1&from=now-1h")
    assert h.status == 200 and sum(h.json["series"][0]["values"]["tasks_failed"]) == 1, h.json
    assert [s["group"] for s in perf["series"]] == [{"kind": "ci"}]


async def test_long_poll_gets_a_task_created_while_it_waits(api: Api) -> None:
    key = await agent_key(api)
    await register(api, key, "ci-1", ["code"])
    started = time.monotonic()
    assert await take(api, key, "ci-1", ["code"], wait_s=0.3) is None  # 204 after wait_s
    assert 0.25 < time.monotonic() - started < 3
    waiting = asyncio.ensure_future(take(api, key, "ci-1", ["code"], wait_s=20))
    await wait_for(lambda: _true(api.services.waker.waiting == 1), 10, what="the agent to wait")
    created = time.monotonic()
    r = await api.post("/api/tasks", json={"type": "fix", "queue": "code"})
    task = await asyncio.wait_for(waiting, 10)
    assert task["id"] == r.json["task"]["id"]
    assert time.monotonic() - created < 2.0
    assert api.services.waker.waiting == 0


async def _true(value: bool) -> bool:
    return value


async def test_a_client_that_leaves_while_waiting_is_given_nothing(api: Api) -> None:
    """A waiting agent whose connection closes takes nothing: the task created next
    goes to an agent that is still there, at its first attempt."""
    import socket

    key = await agent_key(api)
    await register(api, key, "ci-1", ["code"])
    await register(api, key, "ci-2", ["code"])
    host, port = api.base.removeprefix("http://").split(":")
    body = b'{"queues": ["code"], "wait_s": 20}'
    raw = socket.create_connection((host, int(port)))
    raw.sendall(
        b"POST " + f"{V1}/agents/ci-1/take".encode() + b" HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + key.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    await wait_for(lambda: _true(api.services.waker.waiting == 1), 10, what="the agent to wait")
    raw.close()
    await wait_for(lambda: _true(api.services.waker.waiting == 0), 10, what="the wait to end")
    r = await api.post("/api/tasks", json={"type": "fix", "queue": "code"})
    task = await take(api, key, "ci-2", ["code"], wait_s=5)
    assert task is not None and task["id"] == r.json["task"]["id"] and task["attempt"] == 1


async def test_commands_reach_an_http_agent_and_its_reports_count(api: Api) -> None:
    key = await agent_key(api)
    await register(api, key, "ci-1", ["code"])
    r = await api.post("/api/agents/ci-1/restart")
    assert r.status == 202, r.json
    cid = r.json["command"]["id"]
    beat = await api.post(
        f"{V1}/agents/ci-1/heartbeat", json={"status": "idle"}, headers=bearer(key)
    )
    assert beat.status == 200 and [c["id"] for c in beat.json["commands"]] == [cid], beat.json
    for status in ("acknowledged", "completed"):
        r = await api.post(f"{V1}/commands/{cid}", json={"status": status}, headers=bearer(key))
        assert r.status == 200 and r.json["command"]["status"] == status, r.json
    r = await api.post(f"{V1}/commands/{cid}", json={"status": "failed"}, headers=bearer(key))
    assert r.status == 409 and r.json["command_status"] == "completed", r.json
    assert (await api.get("/api/agents/ci-1")).json["restarts"] == 1  # counted by the server
    outsider = await agent_key(api, ids="zz-*")
    r = await api.post(f"{V1}/commands/{cid}", json={"status": "failed"}, headers=bearer(outsider))
    assert r.status == 403, r.json
    # usage and logs stamped with the path's agent
    r = await api.post(
        f"{V1}/agents/ci-1/usage",
        json={"events": [{**CALL, "ts": time.time() - 5}]},
        headers=bearer(key),
    )
    assert r.status == 202, r.json
    tok = (await api.get("/api/metrics/tokens?from=now-1h&agent=ci-1")).json
    assert tok["totals"]["input_tokens"] == 1000
    r = await api.post(f"{V1}/agents/ci-1/logs", json=[{"message": "hello"}], headers=bearer(key))
    assert r.status == 202, r.json
    logs = (await api.get("/api/logs/search?agent=ci-1")).json
    assert [e["message"] for e in logs["items"]] == ["hello"]
    # registering again (a restarted process) keeps what the server knows of it
    before = (await api.get("/api/agents/ci-1")).json
    again = await register(api, key, "ci-1", ["code", "summarize"])
    assert again["agent"]["started_at"] == before["started_at"]
    assert again["agent"]["queues"] == ["code", "summarize"]
    assert (await api.get("/api/agents/ci-1")).json["queues"] == ["code", "summarize"]


@pytest.mark.parametrize("settings_overrides", [{"rate_limit": False}])
async def test_an_agent_on_one_instance_gets_tasks_created_through_another(
    api: Api, settings_overrides: dict[str, Any]
) -> None:
    other = await start_api(api.services.settings)
    try:
        key = await agent_key(api)
        await register(api, key, "ci-1", ["code"])
        latencies = []
        for _ in range(10):
            waiting = asyncio.ensure_future(take(api, key, "ci-1", ["code"], wait_s=20))
            await wait_for(lambda: _true(api.services.waker.waiting == 1), 10, what="a waiter")
            created = time.monotonic()
            r = await other.post("/api/tasks", json={"type": "fix", "queue": "code"})
            task = await asyncio.wait_for(waiting, 10)
            latencies.append(time.monotonic() - created)
            assert task["id"] == r.json["task"]["id"]
        assert statistics.median(latencies) < 0.1, latencies
    finally:
        await stop_api(other)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.parametrize("settings_overrides", [{"rate_limit": False, "redis_max_connections": 16}])
async def test_a_thousand_idle_long_polls_hold_no_redis_connection_each(
    api: Api, settings_overrides: dict[str, Any]
) -> None:
    """1,000 agents waiting for work cost the server memory bounded per waiter and no
    Redis connection each: the pool (16 here) and one blocking reader, whatever waits."""
    key = await agent_key(api, ids="idle-*", queues=["code"])
    redis = api.services.redis
    clients_before = len(await redis.client_list())
    rss_before = _rss_mb()
    host, port = api.base.removeprefix("http://").split(":")
    body = b'{"queues": ["code"], "wait_s": 30}'
    streams = []
    try:
        for i in range(1000):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                f"POST {V1}/agents/idle-{i}/take HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            streams.append((reader, writer))
        waker = api.services.waker
        await wait_for(lambda: _true(waker.waiting == 1000), 60, what="1,000 waiting agents")
        clients = len(await redis.client_list())
        grown = _rss_mb() - rss_before
        print(f"1,000 waiting: Redis clients {clients_before} -> {clients}, RSS +{grown:.1f} MB")
        assert clients - clients_before <= 16 + 1, (clients_before, clients)
        assert grown < 200, grown  # client and server ends both live in this process
        # one task: one of them gets it, the others go on waiting
        r = await api.post("/api/tasks", json={"type": "fix", "queue": "code"})
        assert r.status == 201
        await wait_for(lambda: _true(waker.waiting == 999), 10, what="one agent to get it")
        t = (await api.get(f"/api/tasks/{r.json['task']['id']}")).json
        assert t["status"] == "running" and t["agent_id"].startswith("idle-"), t
    finally:
        for _, writer in streams:
            writer.close()
        for _, writer in streams:
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    await wait_for(lambda: _true(api.services.waker.waiting == 0), 30, what="the waits to end")
