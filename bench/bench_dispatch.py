"""Issue 12: task dispatch, create -> agent receipt, HTTP agents against direct-Redis agents.

The same number of agents of each kind, in the same run, against one server process
and one Redis: Python runtime agents on Redis (``Agent(redis_url=...)``), and bare
HTTP agents on the gateway (one kept-alive connection each, long-poll take, then
finish with the lease token: what an agent in any language does).  Two figures per
kind: throughput (a backlog of tasks worked off as fast as the agents go) and dispatch
latency at a steady 100 tasks/s (from the create call returning to the handler
starting, both clocks this process's).
Target: HTTP >= 0.5x direct throughput, HTTP p99 dispatch < 50 ms at 100 tasks/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from ezdash.agent import Agent, AgentConfig, TaskContext

from .common import BENCH_ADMIN_KEY, project_server, redis_server, report

AGENTS = 8
BACKLOG = 1000
RATE = 100  # tasks/s for the latency phase
STEADY_S = 8
ADMIN = {"Authorization": f"Bearer {BENCH_ADMIN_KEY}", "Content-Type": "application/json"}


class Dispatch:
    """Create times and receipt times of tasks, by task id, for one phase at a time."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.created: dict[str, float] = {}
        self.received: dict[str, float] = {}
        self.done = asyncio.Event()
        self.expected = 0

    def receive(self, task_id: str) -> None:
        self.received.setdefault(task_id, time.perf_counter())
        if self.expected and len(self.received) >= self.expected:
            self.done.set()


async def _call(
    client: AsyncHTTPClient,
    base: str,
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
    timeout: float = 60,
) -> tuple[int, Any]:
    req = HTTPRequest(
        base + path,
        method=method,
        body=orjson.dumps(body),
        headers=headers,
        request_timeout=timeout,
    )
    resp = await client.fetch(req, raise_error=False)
    return resp.code, (orjson.loads(resp.body) if resp.body else None)


async def _create(client: AsyncHTTPClient, base: str, queue: str, dispatch: Dispatch) -> None:
    """One task; its dispatch is timed from the moment its create call is made."""
    started = time.perf_counter()
    body = {"type": "b", "queue": queue}
    code, doc = await _call(client, base, "POST", "/api/tasks", body, ADMIN)
    assert code == 201, doc
    dispatch.created[doc["task"]["id"]] = started


async def _backlog(client: AsyncHTTPClient, base: str, queue: str, dispatch: Dispatch) -> None:
    """``BACKLOG`` tasks, 16 create calls at a time."""
    todo = iter(range(BACKLOG))

    async def worker() -> None:
        for _ in todo:
            await _create(client, base, queue, dispatch)

    await asyncio.gather(*(worker() for _ in range(16)))


async def _http_agent(base: str, key: str, agent_id: str, queue: str, dispatch: Dispatch) -> None:
    """What an agent in any language does: one kept-alive connection (as Node's fetch,
    Go's net/http or the Python runtime's aiohttp session keep it), a long-poll take,
    then a finish with the lease token."""
    me = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    v1 = f"{base}/api/agent/v1/agents/{agent_id}"
    take = orjson.dumps({"queues": [queue], "wait_s": 20})
    async with aiohttp.ClientSession() as session:
        async with session.put(v1, data=orjson.dumps({"queues": [queue]}), headers=me) as r:
            assert r.status == 200, await r.text()
        while True:
            async with session.post(v1 + "/take", data=take, headers=me) as r:
                if r.status != 200:
                    continue
                task = orjson.loads(await r.read())["task"]
            dispatch.receive(task["id"])
            body = {"token": task["lease"]["token"], "status": "succeeded", "result": {}}
            finish = f"{base}/api/agent/v1/tasks/{task['id']}/finish"
            async with session.post(finish, data=orjson.dumps(body), headers=me) as r:
                await r.read()


async def _ws_agent(base: str, key: str, agent_id: str, queue: str, dispatch: Dispatch) -> None:
    """The same agent on the gateway's WebSocket: take and finish as messages on one
    connection (``GET /api/agent/v1/agents/{id}/ws``)."""
    me = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    v1 = f"{base}/api/agent/v1/agents/{agent_id}"
    take = orjson.dumps({"op": "take", "id": 0, "queues": [queue], "wait_s": 20}).decode()
    async with aiohttp.ClientSession() as session:
        async with session.put(v1, data=orjson.dumps({"queues": [queue]}), headers=me) as r:
            assert r.status == 200, await r.text()
        async with session.ws_connect(v1 + "/ws", headers=me) as ws:
            await ws.receive_json()  # hello
            while True:
                await ws.send_str(take)
                reply = orjson.loads((await ws.receive()).data)
                if reply.get("status") != 200:
                    continue
                task = reply["data"]["task"]
                dispatch.receive(task["id"])
                finish = {
                    "op": "finish",
                    "id": 1,
                    "task_id": task["id"],
                    "token": task["lease"]["token"],
                    "status": "succeeded",
                    "result": {},
                }
                await ws.send_str(orjson.dumps(finish).decode())
                await ws.receive()


async def _phase(
    base: str, queue: str, start_agents: Callable[[Dispatch], Awaitable[list[asyncio.Task[Any]]]]
) -> tuple[float, list[float]]:
    """(backlog tasks/s, steady-rate dispatch latencies in ms) for one kind of agent."""
    client = AsyncHTTPClient(force_instance=True, max_clients=32)
    d = Dispatch()
    try:
        await _backlog(client, base, queue, d)
        d.expected = BACKLOG
        t0 = time.perf_counter()
        agents = await start_agents(d)
        await asyncio.wait_for(d.done.wait(), 300)
        throughput = BACKLOG / (time.perf_counter() - t0)
        d.reset()
        d.expected = RATE * STEADY_S
        for _ in range(RATE * STEADY_S):
            target = time.perf_counter() + 1 / RATE
            await _create(client, base, queue, d)
            await asyncio.sleep(max(0.0, target - time.perf_counter()))
        await asyncio.wait_for(d.done.wait(), 60)
        lat = [(d.received[t] - c) * 1000 for t, c in d.created.items() if t in d.received]
        for a in agents:
            a.cancel()
        for a in agents:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await a
        return throughput, lat
    finally:
        client.close()


async def _measure(redis_url: str, base: str) -> dict[str, tuple[float, list[float]]]:
    client = AsyncHTTPClient(force_instance=True)
    body = {"name": "bench", "scopes": ["agent"], "agent": {"ids": "bench-*", "queues": ["http"]}}
    code, doc = await _call(client, base, "POST", "/api/auth/keys", body, ADMIN)
    assert code == 201, doc
    key = doc["key"]
    client.close()
    direct_agents: list[Agent] = []

    async def direct(dispatch: Dispatch) -> list[asyncio.Task[Any]]:
        async def handler(ctx: TaskContext) -> Any:
            dispatch.receive(ctx.id)
            return {}

        cfg = AgentConfig(queues=["direct"], block_s=5.0, record_logs=False, capture_logging=False)
        out = []
        for i in range(AGENTS):
            agent = Agent(f"direct-{i}", handler, redis_url=redis_url, config=cfg)
            direct_agents.append(agent)
            out.append(asyncio.ensure_future(agent.run()))
        return out

    async def http(dispatch: Dispatch) -> list[asyncio.Task[Any]]:
        return [
            asyncio.ensure_future(_http_agent(base, key, f"bench-{i}", "http", dispatch))
            for i in range(AGENTS)
        ]

    async def ws(dispatch: Dispatch) -> list[asyncio.Task[Any]]:
        return [
            asyncio.ensure_future(_ws_agent(base, key, f"bench-ws-{i}", "http", dispatch))
            for i in range(AGENTS)
        ]

    results = {"direct": await _phase(base, "direct", direct)}
    for agent in direct_agents:
        with contextlib.suppress(Exception):
            await agent.kill()
    results["http"] = await _phase(base, "http", http)
    results["ws"] = await _phase(base, "http", ws)
    return results


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run() -> None:
    with redis_server() as url, project_server(url) as base:
        results = asyncio.run(_measure(url, base))
    report(
        f"task dispatch, {AGENTS} agents of each kind: backlog of {BACKLOG} tasks, then "
        f"{RATE} tasks/s for {STEADY_S} s (create called -> handler started)"
    )
    for kind, (tps, lat) in results.items():
        report(
            f"  {kind:6}: {tps:8.1f} tasks/s   dispatch p50 {statistics.median(lat):6.1f} ms"
            f"  p99 {_pct(lat, 0.99):6.1f} ms  ({len(lat)} tasks)"
        )
    for kind in ("http", "ws"):
        ratio = results[kind][0] / results["direct"][0]
        p99 = _pct(results[kind][1], 0.99)
        report(f"  ratio ({kind}/direct throughput): {ratio:.2f}   target: >= 0.5")
        report(f"  {kind} p99 at {RATE} tasks/s: {p99:.1f} ms   target: < 50 ms")
