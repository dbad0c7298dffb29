"""Fixtures: a real redis-server per test session (started here, on a free port),
a real HTTP server on a real socket, and real agent runtimes.

Nothing here talks to the Redis on 127.0.0.1:6379.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from redis.asyncio import Redis
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.netutil import bind_sockets

from ezdash.agent import Agent, AgentConfig, TaskContext
from ezdash.api.app import make_app
from ezdash.api.httpserver import Server, make_http_server
from ezdash.api.services import Services
from ezdash.redis_server import RedisServer
from ezdash.settings import Settings

ADMIN_KEY = "test-admin-key-0123456789abcdefghijklmnop"
FAST: dict[str, Any] = {
    "heartbeat_interval": 0.2,
    "heartbeat_timeout": 1.0,
    "visibility_timeout": 1.5,
    "command_ttl": 3.0,
    "maintenance_interval": 0.2,
    "rate_read": "100000/1m",
    "rate_write": "100000/1m",
    "rate_control": "100000/1m",
    "rate_public": "100000/1m",
    "backfill_days": 0,  # tests that want history make it themselves
    "analyst": False,  # tests/test_analyst.py starts the page itself
}


async def wait_for(
    cond: Callable[[], Awaitable[Any]],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll an async condition until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {value!r}")
        await asyncio.sleep(interval)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own (AOF on), for tests that kill and restart it."""
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    yield server
    if server.running:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if not redis_server.running:  # a test stopped it: bring it back for the next
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
async def rds(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Parametrise this (indirectly) to change the server's configuration in a test."""
    return {}


@pytest.fixture
def settings(redis_url: str, settings_overrides: dict[str, Any], tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        port=0,
        demo_agents=0,
        data_dir=tmp_path / "data",
        admin_key=ADMIN_KEY,
        **{**FAST, **settings_overrides},
    )


@dataclass
class Response:
    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


class Api:
    """A running server and a client for it (through a real socket)."""

    def __init__(self, services: Services, base: str, server: Server) -> None:
        self.services = services
        self.base = base
        self.server = server
        self.client = AsyncHTTPClient(force_instance=True)
        self.default_headers: dict[str, str] = {"Authorization": f"Bearer {ADMIN_KEY}"}

    async def fetch(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        hdrs = {**self.default_headers, **(headers or {})}
        if json is not None:
            body = orjson.dumps(json)
            hdrs.setdefault("Content-Type", "application/json")
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        req = HTTPRequest(
            self.base + path,
            method=method,
            body=body,
            headers=hdrs,
            allow_nonstandard_methods=True,
            request_timeout=30,
        )
        resp = await self.client.fetch(req, raise_error=False)
        if resp.code == 599:
            raise AssertionError(f"{method} {path}: no HTTP answer ({resp.error})")
        return Response(resp.code, resp.headers, resp.body or b"")

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.fetch("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> Response:
        return await self.fetch("POST", path, **kw)


async def start_api(settings: Settings, port: int = 0) -> Api:
    """A server on ``port`` (0: any free one; a server restarted in a test gets the
    port it had, so its clients reconnect where they were)."""
    assert settings.redis_url
    services = Services.create(settings, settings.redis_url)
    server = make_http_server(make_app(services), settings)
    sockets = bind_sockets(port, "127.0.0.1")
    server.add_sockets(sockets)
    await services.check_secrets()
    await services.bootstrap_admin_key()
    services.start_background()
    return Api(services, f"http://127.0.0.1:{sockets[0].getsockname()[1]}", server)


async def stop_api(api: Api) -> None:
    api.server.stop()
    await api.server.close_all_connections()
    api.client.close()
    await api.services.close()


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    instance = await start_api(settings)
    yield instance
    await stop_api(instance)


async def ok_handler(ctx: TaskContext) -> Any:
    return {"echo": ctx.payload}


class Fleet:
    """Agents started by a test, each running in the test's event loop."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.agents: list[tuple[Agent, asyncio.Task[None]]] = []

    def start(
        self,
        agent_id: str,
        handler: Callable[[TaskContext], Coroutine[Any, Any, Any]] = ok_handler,
        **config: Any,
    ) -> Agent:
        cfg = AgentConfig(
            **{
                "heartbeat_interval": FAST["heartbeat_interval"],
                "visibility_timeout": FAST["visibility_timeout"],
                "block_s": 0.5,
                "retry_backoff_s": 0.05,
                **config,
            }
        )
        agent = Agent(agent_id, handler, redis_url=self.redis_url, config=cfg)
        task = asyncio.create_task(agent.run(), name=agent_id)
        self.agents.append((agent, task))
        return agent

    async def close(self) -> None:
        for agent, task in self.agents:
            if not task.done():
                await agent.kill()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            exc = task.exception() if task.done() and not task.cancelled() else None
            if exc is not None:
                raise exc


@pytest.fixture
async def fleet(redis_url: str) -> AsyncIterator[Fleet]:
    f = Fleet(redis_url)
    yield f
    await f.close()


REPO = Path(__file__).resolve().parent.parent
