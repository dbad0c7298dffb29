"""Nothing accepted is lost across restarts of the server and of the embedded Redis."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from ezdash.serve import DataDirBusy, serve
from ezdash.settings import Settings

from .conftest import ADMIN_KEY, FAST, Fleet, start_api, stop_api


async def call(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    client = AsyncHTTPClient(force_instance=True)
    try:
        req = HTTPRequest(
            base + path,
            method=method,
            body=orjson.dumps(body) if body is not None else (b"" if method == "POST" else None),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN_KEY}"},
        )
        resp = await client.fetch(req, raise_error=False)
        return resp.code, orjson.loads(resp.body) if resp.body else None
    finally:
        client.close()


async def run_server(settings: Settings) -> tuple[str, asyncio.Event, asyncio.Task[None]]:
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, ready=ready, stop=stop))
    base = await asyncio.wait_for(ready, 30)
    return base, stop, task


async def test_data_survives_restart_of_server_and_embedded_redis(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", port=0, demo_agents=0, admin_key=ADMIN_KEY, **FAST
    )
    base, stop, server = await run_server(settings)
    url = (tmp_path / "data" / "redis.url").read_text().strip()
    fleet = Fleet(url)
    fleet.start("keeper")
    try:
        status, body = await call(base, "POST", "/api/tasks", {"type": "t", "payload": {"k": 1}})
        assert status == 201
        done_id = body["task"]["id"]
        status, body = await call(
            base, "POST", "/api/tasks", {"type": "t", "queue": "later", "payload": {"k": 2}}
        )
        queued_id = body["task"]["id"]
        for _ in range(200):
            _, doc = await call(base, "GET", f"/api/tasks/{done_id}")
            if doc["status"] == "succeeded":
                break
            await asyncio.sleep(0.05)
        assert doc["status"] == "succeeded"
        status, body = await call(base, "POST", "/api/agents/keeper/restart")
        assert status == 202
        cmd_id = body["command"]["id"]
    finally:
        await fleet.close()
    stop.set()
    await asyncio.wait_for(server, 30)  # stops the embedded Redis with SIGTERM (AOF fsync)
    probe = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        with pytest.raises(redis.ConnectionError):
            probe.ping()  # the embedded Redis really stopped
    finally:
        probe.close()

    base, stop, server = await run_server(settings)
    try:
        _, done = await call(base, "GET", f"/api/tasks/{done_id}")
        assert done["status"] == "succeeded" and done["result"] == {"echo": {"k": 1}}
        assert [h["status"] for h in done["history"]] == ["succeeded"]
        _, queued = await call(base, "GET", f"/api/tasks/{queued_id}")
        assert queued["status"] == "queued"
        _, agent = await call(base, "GET", "/api/agents/keeper")
        assert agent["id"] == "keeper" and agent["kind"] == "generic"
        _, cmd = await call(base, "GET", f"/api/control/commands/{cmd_id}")
        assert cmd["action"] == "restart"
        _, queues = await call(base, "GET", "/api/queues")
        assert {q["name"]: q["depth"] for q in queues} == {"default": 0, "later": 1}
        # the queued task is still deliverable after the restart
        fleet = Fleet((tmp_path / "data" / "redis.url").read_text().strip())
        fleet.start("later-worker", queues=["later"])
        try:
            for _ in range(200):
                _, queued = await call(base, "GET", f"/api/tasks/{queued_id}")
                if queued["status"] == "succeeded":
                    break
                await asyncio.sleep(0.05)
            assert queued["status"] == "succeeded"
        finally:
            await fleet.close()
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)


async def test_second_instance_on_same_data_dir_is_told_to_share(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", port=0, demo_agents=0, admin_key=ADMIN_KEY, **FAST
    )
    _, stop, server = await run_server(settings)
    try:
        # the file to read the URL from, not the URL: it holds the server's password
        with pytest.raises(DataDirBusy, match=r"REDIS_URL=\$\(cat .*/data/redis\.url\)"):
            await asyncio.wait_for(serve(settings, stop=asyncio.Event()), 10)
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)


async def test_shutdown_does_not_wait_for_ever_on_a_task_that_ignores_its_cancel(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A background task that takes its cancellation for something else and carries on
    (as a loop may when a Redis client turns it into a connection error) is named in
    the log after the shutdown grace, and the server still closes."""
    api = await start_api(settings.model_copy(update={"shutdown_grace": 0.5}))
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                continue  # not for me, it thinks

    task = asyncio.create_task(stubborn(), name="stubborn")
    api.services.background.append(task)
    started = time.monotonic()
    await asyncio.wait_for(stop_api(api), 10)
    assert time.monotonic() - started < 5
    assert not task.done()
    assert any("stubborn did not end" in r.getMessage() for r in caplog.records)
    release.set()
    await task
