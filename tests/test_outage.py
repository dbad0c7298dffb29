"""Redis goes away under load: SIGKILLed and restarted from its AOF, or full
(``maxmemory`` with ``noeviction``). Every answer meanwhile is a success or a 503
problem JSON with Retry-After, never a 500; the probes say what is true; nothing
accepted is lost; the audit records made during the outage are written after it;
and the server logs the outage once, not once per request.

These tests run their own redis-server (the suite's shared one is not killed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import Redis as RedisClient

from ezdash.keys import Keys
from ezdash.redis_server import RedisServer, free_port
from ezdash.security.audit import AuditLog
from ezdash.settings import Settings

from .conftest import ADMIN_KEY, FAST, Api, Fleet, Response, start_api, stop_api, wait_for

pytestmark = pytest.mark.slow


async def own_api(server: RedisServer, tmp_path: Path) -> Api:
    settings = Settings(
        redis_url=server.url,
        port=0,
        demo_agents=0,
        data_dir=tmp_path / "data",
        admin_key=ADMIN_KEY,
        **FAST,
    )
    return await start_api(settings)


def acceptable(r: Response) -> str | None:
    """Why an answer breaks the outage contract, or None when it keeps it."""
    if 200 <= r.status < 300:
        return None
    if r.status != 503:
        return f"status {r.status}: {r.body[:200]!r}"
    if r.headers.get("Content-Type") != "application/problem+json":
        return f"503 without problem JSON: {r.headers.get('Content-Type')}"
    if not r.json["type"].endswith("/redis-unavailable"):
        return f"503 of type {r.json['type']}"
    if not r.headers.get("Retry-After", "").isdigit():
        return "503 without Retry-After"
    return None


class Load:
    """Creates tasks and reads lists as fast as one client can, keeping every answer."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.created: list[str] = []
        self.refused = 0
        self.broken: list[str] = []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            r = await self.api.post(
                "/api/tasks", json={"type": "outage", "payload": {"i": i}, "queue": "o"}
            )
            if (why := acceptable(r)) is not None:
                self.broken.append(f"POST /api/tasks: {why}")
            elif r.status == 201:
                self.created.append(r.json["task"]["id"])
            else:
                self.refused += 1
            for path in ("/api/agents", "/api/queues"):
                r = await self.api.get(path)
                if (why := acceptable(r)) is not None:
                    self.broken.append(f"GET {path}: {why}")
            await asyncio.sleep(0.005)


async def probes(api: Api) -> dict[str, int]:
    out = {}
    for path in ("/api/live", "/api/ready", "/api/health"):
        out[path] = (await api.get(path, headers={"Authorization": ""})).status
    return out


async def test_redis_killed_and_restarted_under_load(
    own_redis: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    api = await own_api(own_redis, tmp_path)
    fleet = Fleet(own_redis.url)
    fleet.start("survivor-1", queues=["o"])
    fleet.start("survivor-2", queues=["o"])
    load = Load(api)
    runner = asyncio.create_task(load.run())
    try:
        await wait_for(lambda: _count(load.created, 20), what="tasks before the outage")
        assert await probes(api) == {"/api/live": 200, "/api/ready": 200, "/api/health": 200}
        own_redis.kill()  # SIGKILL: no chance to fsync anything more
        before = len(load.created)
        await wait_for(lambda: _count_refused(load, 10), what="503s during the outage")
        during = await probes(api)
        assert during == {"/api/live": 200, "/api/ready": 503, "/api/health": 503}
        ready = await api.get("/api/ready", headers={"Authorization": ""})
        assert ready.json == {"status": "not-ready", "reason": "redis"}
        assert len(load.created) == before  # nothing was "accepted" while Redis was gone
        own_redis.start()  # the same port and directory: it replays its AOF

        async def recovered() -> bool:
            return await probes(api) == {"/api/live": 200, "/api/ready": 200, "/api/health": 200}

        await wait_for(recovered, 20, what="probes after the restart")
        await wait_for(lambda: _count(load.created, before + 20), 20, what="tasks after")
    finally:
        load.stop.set()
        await runner
    try:
        assert not load.broken, load.broken[:10]
        missing = []
        for task_id in load.created:
            r = await api.get(f"/api/tasks/{task_id}")
            if r.status != 200:
                missing.append(task_id)
        assert missing == [], f"{len(missing)} of {len(load.created)} accepted tasks missing"

        async def all_done() -> bool:
            page = await api.get("/api/tasks?queue=o&status=queued&limit=1")
            running = await api.get("/api/tasks?queue=o&status=running&limit=1")
            return not page.json["items"] and not running.json["items"]

        await wait_for(all_done, 60, what="every accepted task finished by the agents")

        async def audited() -> int:
            items = (await api.get("/api/audit?action=tasks.create&limit=500")).json["items"]
            return sum(1 for i in items if i["status"] == 503)

        # every refused create was audited, written once Redis was back
        assert await wait_for(audited, 20, what="audit records of the outage") >= load.refused
        outage_lines = [r for r in caplog.records if "redis unavailable" in r.getMessage()]
        assert 1 <= len(outage_lines) <= 2, [r.getMessage() for r in outage_lines]
        scrape = (await api.get("/metrics")).body.decode()
        assert "ezdash_audit_dropped_total 0\n" in scrape
        assert "# TYPE ezdash_redis_outages_total counter" in scrape
        assert "ezdash_redis_outages_total 0\n" not in scrape
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    finally:
        await fleet.close()
        await stop_api(api)


async def test_redis_out_of_memory_refuses_writes_and_loses_nothing(
    own_redis: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    api = await own_api(own_redis, tmp_path)
    admin = redis.Redis.from_url(own_redis.url, decode_responses=True)
    try:
        for i in range(5):
            assert (await api.post("/api/tasks", json={"type": "m", "payload": {"i": i}})).status
        used = int(admin.info("memory")["used_memory"])
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", str(used + (256 << 10)))
        accepted: list[str] = []
        refused = 0
        broken: list[str] = []
        started = time.monotonic()
        while refused < 5 and time.monotonic() - started < 60:
            r = await api.post("/api/tasks", json={"type": "m", "payload": {"pad": "x" * 2000}})
            if (why := acceptable(r)) is not None:
                broken.append(why)
            elif r.status == 201:
                accepted.append(r.json["task"]["id"])
            else:
                refused += 1
        assert not broken, broken[:5]
        assert refused >= 5 and accepted, (refused, len(accepted))
        # the accepted ones are all there (read straight from Redis: the API's own
        # rate-limit bookkeeping is a write, so it refuses reads too while Redis is full)
        keys = api.services.keys
        assert all(admin.exists(keys.task(t)) for t in accepted)
        admin.config_set("maxmemory", "0")

        async def writable() -> bool:
            r = await api.post("/api/tasks", json={"type": "m", "payload": {}})
            return r.status == 201

        await wait_for(writable, 20, what="writes after memory was freed")
        for task_id in accepted:
            assert (await api.get(f"/api/tasks/{task_id}")).status == 200
        outage_lines = [r for r in caplog.records if "redis unavailable" in r.getMessage()]
        assert len(outage_lines) == 1
        assert "OutOfMemoryError" in outage_lines[0].getMessage()
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    finally:
        with contextlib.suppress(redis.RedisError):
            admin.config_set("maxmemory", "0")
        admin.close()
        await stop_api(api)


async def _count(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def _count_refused(load: Load, n: int) -> bool:
    return load.refused >= n


async def test_audit_buffer_is_bounded_and_counts_what_it_drops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing listens on the port: every write fails, the records wait, the overflow
    is counted and logged, and close() gives up after its timeout."""
    caplog.set_level(logging.ERROR, logger="ezdash.audit")
    dead = RedisClient.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    log = AuditLog(dead, Keys(), 1000, buffer=5)
    for i in range(8):
        log.record(principal="p", action="a", target=str(i), client="c", status=503)
    assert log.buffered == 5 and log.dropped == 3
    assert any("audit buffer full" in r.getMessage() for r in caplog.records)
    started = time.monotonic()
    await log.close(0.5)
    assert time.monotonic() - started < 3
    assert any("5 audit records unwritten" in r.getMessage() for r in caplog.records)
    await dead.aclose()
