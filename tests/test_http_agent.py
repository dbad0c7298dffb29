"""The Python agent runtime over HTTP (``Agent(..., url=, key=)``): the same agent as
on Redis, speaking only to the gateway with an agent key.

Each test runs a real server on a real Redis and an HTTP agent in the test's event
loop, and checks through the public API what a Redis agent's tests check: tasks
complete, usage and logs arrive exactly once, commands are obeyed, and a server
restart is only a pause."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
from tornado.netutil import bind_sockets

from ezdash.agent import Agent, AgentConfig, TaskContext
from ezdash.agent.http_transport import GatewayRefused, HttpTransport
from ezdash.api.app import make_app
from ezdash.api.httpserver import make_http_server
from ezdash.api.services import Services
from ezdash.settings import Settings

from .conftest import FAST, Api, Fleet, ok_handler, stop_api, wait_for
from .test_agents import agent_status, command_reaches, registered
from .test_gateway import agent_key

Handler = Callable[[TaskContext], Coroutine[Any, Any, Any]]


class HttpFleet(Fleet):
    """HTTP agents started by a test, each in the test's event loop, with an agent key;
    ``socket``: on the gateway's WebSocket (``gateway_socket``) rather than requests."""

    def __init__(self, api: Api, socket: bool = False) -> None:
        super().__init__("")
        self.api = api
        self.socket = socket

    def make(self, agent_id: str, key: str, handler: Handler = ok_handler, **config: Any) -> Agent:
        cfg = AgentConfig(
            **{
                "queues": ["code"],
                "heartbeat_interval": FAST["heartbeat_interval"],
                "visibility_timeout": FAST["visibility_timeout"],
                "block_s": 0.5,
                "retry_backoff_s": 0.05,
                "usage_flush_s": 0.1,
                "log_flush_s": 0.1,
                "gateway_socket": self.socket,
                **config,
            }
        )
        return Agent(agent_id, handler, url=self.api.base, key=key, config=cfg)

    def start(  # type: ignore[override]
        self, agent_id: str, key: str, handler: Handler = ok_handler, **cfg: Any
    ) -> Agent:
        agent = self.make(agent_id, key, handler, **cfg)
        self.agents.append((agent, asyncio.create_task(agent.run(), name=agent_id)))
        return agent


@pytest.fixture(params=["requests", "socket"])
async def http_fleet(api: Api, request: pytest.FixtureRequest) -> AsyncIterator[HttpFleet]:
    """Every test of the HTTP agent runs over requests and over the socket."""
    f = HttpFleet(api, socket=request.param == "socket")
    yield f
    await f.close()


async def create(api: Api, payload: Any, **extra: Any) -> str:
    r = await api.post(
        "/api/tasks", json={"type": "fix", "queue": "code", "payload": payload, **extra}
    )
    assert r.status == 201, r.json
    return str(r.json["task"]["id"])


async def finished(api: Api, tid: str, status: str = "succeeded") -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        doc: dict[str, Any] = (await api.get(f"/api/tasks/{tid}")).json
        return doc if doc["status"] == status else None

    done: dict[str, Any] = await wait_for(check, 15, what=f"task {tid} {status}")
    return done


async def test_tasks_usage_and_logs_over_http(api: Api, http_fleet: HttpFleet) -> None:
    async def handler(ctx: TaskContext) -> Any:
        ctx.info("working on it", n=ctx.payload["n"])
        ctx.record_usage(
            model="gpt-4o", provider="openai", input_tokens=100, output_tokens=7, latency_ms=20.0
        )
        return {"double": ctx.payload["n"] * 2}

    key = await agent_key(api, ids="py-*", queues=["code"])
    agent = http_fleet.start("py-1", key, handler, kind="coder")
    await registered(api, "py-1")
    doc = (await api.get("/api/agents/py-1")).json
    assert (doc["transport"], doc["kind"], doc["queues"]) == ("http", "coder", ["code"])
    ids = [await create(api, {"n": n}) for n in range(5)]
    for n, tid in enumerate(ids):
        assert (await finished(api, tid))["result"] == {"double": n * 2}

    async def tokens() -> Any:
        tot = (await api.get("/api/metrics/tokens?from=now-1h&agent=py-1")).json["totals"]
        return tot if tot["input_tokens"] >= 500 else None

    totals = await wait_for(tokens, 10, what="usage")
    await asyncio.sleep(0.5)  # a batch counted twice would show by now
    totals = (await api.get("/api/metrics/tokens?from=now-1h&agent=py-1")).json["totals"]
    assert (totals["input_tokens"], totals["output_tokens"]) == (500, 35)
    costs = (await api.get("/api/metrics/costs?from=now-1h&agent=py-1")).json
    # gpt-4o since 2024-08-06: $2.50 in, $10 out per million tokens; exact to the nano
    assert round(costs["totals"]["cost_usd"] * 1e9) == 5 * (100 * 2500 + 7 * 10_000), costs

    async def logged() -> Any:
        items = (await api.get("/api/logs/search?agent=py-1&limit=500")).json["items"]
        return items if sum(e["message"] == "working on it" for e in items) == 5 else None

    items = await wait_for(logged, 10, what="log lines")
    mine = [e for e in items if e["message"] == "working on it"]
    assert {e["task_id"] for e in mine} == set(ids)
    assert any(e["message"].startswith("agent started") for e in items)
    await wait_for(lambda: _true(agent.completed == 5), 10, what="the finishes answered")

    # the server counted the outcomes (the transport writes no rollups itself)
    async def outcomes() -> Any:
        perf = (await api.get("/api/metrics/performance?from=now-1h&agent=py-1")).json
        return perf if perf["totals"]["tasks_completed"] >= 5 else None

    assert (await wait_for(outcomes, 10, what="outcomes"))["totals"]["tasks_completed"] == 5
    sockets = {s.agent_id for s in api.services.agent_sockets}
    assert ("py-1" in sockets) == http_fleet.socket, sockets


async def test_restart_and_graceful_stop_over_http(api: Api, http_fleet: HttpFleet) -> None:
    gate = asyncio.Event()

    async def handler(ctx: TaskContext) -> Any:
        await gate.wait()
        return "finished"

    key = await agent_key(api, ids="py-*", queues=["code"])
    http_fleet.start("py-1", key, handler)
    await registered(api, "py-1")
    cmd = (await api.post("/api/agents/py-1/restart")).json["command"]
    await command_reaches(api, cmd["id"], "completed")
    assert (await api.get("/api/agents/py-1")).json["restarts"] == 1
    await registered(api, "py-1", "idle")

    tid = await create(api, {})
    await registered(api, "py-1", "busy")
    r = await api.fetch("DELETE", "/api/agents/py-1")
    assert r.status == 202, r.json
    await registered(api, "py-1", "stopping")
    gate.set()
    await command_reaches(api, r.json["command"]["id"], "completed")
    assert (await finished(api, tid))["result"] == "finished"
    assert await agent_status(api, "py-1") == "stopped"
    task = http_fleet.agents[0][1]
    await asyncio.wait_for(task, 10)  # run() returned: the agent process would exit


async def test_a_key_bound_to_other_ids_cannot_start_the_agent(
    api: Api, http_fleet: HttpFleet
) -> None:
    key = await agent_key(api, ids="ci-*", queues=["code"])
    agent = http_fleet.make("py-1", key)
    with pytest.raises(GatewayRefused, match="403") as caught:
        await asyncio.wait_for(agent.run(), 10)
    assert caught.value.status == 403 and "ci-*" in caught.value.detail
    assert (await api.get("/api/agents/py-1")).status == 404


def test_the_transport_is_chosen_by_the_arguments() -> None:
    agent = Agent("py-1", ok_handler, url="http://127.0.0.1:1", key="ezk_x")
    assert isinstance(agent.transport, HttpTransport)
    cases: tuple[tuple[dict[str, Any], str], ...] = (
        ({"url": "http://x", "key": "k", "redis_url": "redis://x"}, "not both"),
        ({"url": "http://x"}, "key="),
        ({"key": "k", "redis_url": "redis://x"}, "url="),
        ({"url": "ftp://x", "key": "k"}, "http://"),
        ({}, "give redis_url"),
    )
    for kwargs, words in cases:
        with pytest.raises(ValueError, match=words):
            Agent("py-1", ok_handler, **kwargs)


async def start_api_on(settings: Settings, port: int) -> Api:
    """A server on this port (``start_api`` takes any free one)."""
    services = Services.create(settings, settings.redis_url or "")
    server = make_http_server(make_app(services), settings)
    server.add_sockets(bind_sockets(port, "127.0.0.1"))
    await services.check_secrets()
    services.start_background()
    return Api(services, f"http://127.0.0.1:{port}", server)


async def test_the_agent_goes_on_after_a_server_restart(api: Api, http_fleet: HttpFleet) -> None:
    key = await agent_key(api, ids="py-*", queues=["code"])
    probe = bind_sockets(0, "127.0.0.1")
    port = probe[0].getsockname()[1]
    for sock in probe:
        sock.close()
    settings = api.services.settings
    running: Api | None = None
    running = server = await start_api_on(settings, port)
    try:
        http_fleet.api = server
        agent = http_fleet.start("py-1", key)
        await registered(api, "py-1")
        await finished(api, await create(api, {"w": "before"}))
        running = None
        await stop_api(server)
        await asyncio.sleep(1.0)  # the agent meets refused connections meanwhile
        running = server = await start_api_on(settings, port)
        tid = await create(api, {"w": "after"})
        assert (await finished(api, tid))["result"] == {"echo": {"w": "after"}}
        # counted when the finish's answer is back, which may be just after the read above
        await wait_for(lambda: _true(agent.completed == 2), 10, what="the second finish")
        # the registry forgot it (a wiped Redis): the next heartbeat registers it again
        await api.services.redis.hdel(api.services.keys.agents, "py-1")
        await registered(api, "py-1")
        assert (await finished(api, await create(api, {"w": "again"})))["status"] == "succeeded"
    finally:
        await http_fleet.close()
        if running is not None:
            await stop_api(running)


async def _true(value: bool) -> bool:
    return value


async def test_an_agent_whose_key_is_revoked_stops_and_closes_its_connections(
    api: Api, http_fleet: HttpFleet
) -> None:
    """Revoked under it, the agent's calls are refused (401, not retried); asked to
    stop, it still stops, and leaves no connection open."""
    r = await api.post(
        "/api/auth/keys",
        json={"name": "short", "scopes": ["agent"], "agent": {"ids": "py-*", "queues": ["code"]}},
    )
    agent = http_fleet.start("py-1", r.json["key"])
    await registered(api, "py-1")
    assert (await api.fetch("DELETE", f"/api/auth/keys/{r.json['id']}")).status in (200, 204)
    await asyncio.wait_for(agent.stop(), 15)
    task = http_fleet.agents[-1][1]
    await asyncio.wait_for(task, 15)  # run() returns
    transport = agent.transport
    assert isinstance(transport, HttpTransport)
    assert transport._session is None  # closed
