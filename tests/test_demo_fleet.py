"""The demo fleet over the agent gateway (issue 12): ``ezdash demo --url`` runs its
agents over HTTP, and ``ezdash serve`` runs part of its own demo fleet through its own
gateway, with an agent key it issues at start-up.

Real processes on real sockets and the suite's real Redis: ``ezdash demo`` and
``ezdash serve`` start their fleets as child processes, as ``make run`` does, and
everything is checked through the public API (and Redis once the server is gone)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from ezdash.agent.demo import HTTP_IDS, QUEUES, fleet_configs, http_count
from ezdash.backfill.fleet import fleet as backfill_fleet
from ezdash.serve import DEMO_KEY_ID, demo_on_gateway, local_base
from ezdash.settings import Settings

from .conftest import ADMIN_KEY, FAST, Api, start_api, stop_api, wait_for
from .test_gateway import agent_key
from .test_persistence import call, run_server

FINISHED = ("succeeded", "failed", "dead")


def test_the_http_share_of_a_fleet() -> None:
    assert [http_count(n, 0.25) for n in (0, 1, 2, 3, 4, 6, 12, 20)] == [0, 0, 1, 1, 1, 2, 3, 5]
    assert (http_count(12, 0), http_count(1, 1.0), http_count(5, 1.0)) == (0, 1, 5)
    ids = [aid for aid, _, _ in fleet_configs(12, prefix="ez", heartbeat=5, visibility=60, http=3)]
    plain = [aid for aid, _, _ in fleet_configs(12, prefix="ez", heartbeat=5, visibility=60)]
    # the same fleet, its last three renamed so that one glob covers them and only them
    assert ids[:9] == plain[:9] and all(not a.startswith("demo-http-") for a in ids[:9])
    assert ids[9:] == [a.replace("demo-", "demo-http-", 1) for a in plain[9:]]
    # the first start's history is of these agents, under these ids
    assert [a.id for a in backfill_fleet(12, 1, http_count(12, Settings().demo_http_share))] == ids


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EZ_") and k != "REDIS_URL"}
    return {**env, **extra}


async def agents(base: str) -> list[dict[str, Any]]:
    status, page = await call(base, "GET", "/api/agents?limit=100")
    assert status == 200, page
    items: list[dict[str, Any]] = page["items"]
    return items


async def test_demo_over_http_completes_tasks_and_stops_when_its_server_is_gone(
    settings: Settings, tmp_path: Path
) -> None:
    api = await start_api(settings)
    up: Api | None = api
    log = tmp_path / "demo.log"
    out = log.open("wb")
    key = await agent_key(api, ids=HTTP_IDS, queues=list(QUEUES))
    demo = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "ezdash.cli", "demo", "--agents", "2", "--speed", "50"),
        *("--url", api.base),  # every agent over HTTP; no Redis at all
        env=child_env(
            EZ_DEMO_KEY=key,  # in the environment: a command line shows in ps
            EZ_HEARTBEAT_INTERVAL="0.2",
            EZ_SHUTDOWN_GRACE="2",  # a stop that cannot report ends after 1 s
        ),
        stdout=out,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:

        async def both() -> list[dict[str, Any]] | None:
            found = [a for a in await agents(api.base) if a["status"] == "idle"]
            return found if len(found) == 2 else None

        fleet = await wait_for(both, 20, what="the demo's two agents")
        assert sorted(a["id"] for a in fleet) == ["demo-http-coder-002", "demo-http-researcher-001"]
        assert {a["transport"] for a in fleet} == {"http"}
        ids = []
        for queue in ("research", "code") * 3:
            r = await api.post("/api/tasks", json={"type": "t", "queue": queue, "payload": {}})
            assert r.status == 201, r.json
            ids.append(r.json["task"]["id"])

        async def done() -> list[dict[str, Any]] | None:
            docs = [(await api.get(f"/api/tasks/{tid}")).json for tid in ids]
            return docs if all(d["status"] in FINISHED for d in docs) else None

        docs = await wait_for(done, 20, what="the tasks finished by the demo")
        assert {d["status"] for d in docs} & {"succeeded"}
        assert {h["agent_id"] for d in docs for h in d["history"]} <= {a["id"] for a in fleet}

        # the server goes away first, then the fleet is told to stop: it cannot report
        # anything, and ends within its stop deadline instead of retrying for a
        # visibility timeout (60 s here)
        up = None
        await stop_api(api)
        await asyncio.sleep(0.3)  # let the agents meet refused connections
        demo.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(demo.wait(), 10) == 0
    finally:
        if demo.returncode is None:
            demo.kill()
            await demo.wait()
        out.close()
        if up is not None:
            await stop_api(up)
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "demo agents had not stopped" in text, text[-3000:]


def test_demo_refuses_http_without_a_server_or_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ezdash.cli import main

    for var in ("REDIS_URL", "EZ_DEMO_URL", "EZ_DEMO_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert main(["demo", "--agents", "2", "--http-agents", "1"]) == 2
    assert "EZ_DEMO_URL" in capsys.readouterr().err
    assert main(["demo", "--agents", "2", "--url", "http://127.0.0.1:9"]) == 2
    assert "EZ_DEMO_KEY" in capsys.readouterr().err
    args = ["demo", "--agents", "2", "--http-agents", "3", "--url", "http://127.0.0.1:9"]
    assert main(args) == 2
    assert "--http-agents" in capsys.readouterr().err
    args = ["demo", "--agents", "2", "--http-agents", "1", "--url", "http://x", "--key", "k"]
    assert main(args) == 2  # the other agent is on Redis, and there is none
    assert "REDIS_URL" in capsys.readouterr().err


async def test_the_demo_key_is_issued_anew_and_never_accumulates(api: Api) -> None:
    svc = api.services
    store = svc.api_keys
    saved = svc.settings
    svc.settings = saved.model_copy(update={"demo_agents": 12})  # what serve starts with
    args, env = await demo_on_gateway(svc, 8888)
    first = env["EZ_DEMO_KEY"]
    assert args == ["--http-agents", "3", "--url", "http://127.0.0.1:8888"]  # 12 agents
    doc = await store.verify(first)
    assert doc is not None and doc["id"] == DEMO_KEY_ID and doc["scopes"] == ["agent"]
    assert doc["agent"] == {"ids": "demo-http-*", "queues": list(QUEUES)}
    await store.revoke(DEMO_KEY_ID)  # by hand: stays dead, the next start issues another
    _, env = await demo_on_gateway(svc, 8888)
    second = env["EZ_DEMO_KEY"]
    _, env = await demo_on_gateway(svc, 8888)
    third = env["EZ_DEMO_KEY"]
    assert len({first, second, third}) == 3
    assert (await store.verify(first), await store.verify(second)) == (None, None)
    live = await store.verify(third)
    assert live is not None and live["revoked_at"] is None
    assert [k["id"] for k in await store.all() if k["id"] == DEMO_KEY_ID] == [DEMO_KEY_ID]
    r = await api.post("/api/auth/token", headers={"Authorization": f"Bearer {second}"})
    assert r.status == 401
    # an instance without HTTP agents (a second one on the same Redis, EZ_DEMO_AGENTS=0)
    # leaves the key of the fleet that has them alone
    for changes in ({"demo_agents": 0}, {"demo_agents": 12, "demo_http_share": 0.0}):
        svc.settings = saved.model_copy(update=changes)
        assert await demo_on_gateway(svc, 8888) == (["--http-agents", "0"], {})
    svc.settings = saved
    assert await store.verify(third) is not None


def test_the_gateway_url_of_a_wildcard_listener() -> None:
    assert local_base("0.0.0.0", 80) == "http://127.0.0.1:80"
    assert local_base("::", 80) == "http://[::1]:80"
    assert local_base("10.1.2.3", 80) == "http://10.1.2.3:80"


async def one_start(settings: Settings, rds: Redis) -> str:
    """``ezdash serve`` with a demo fleet of four, up and then stopped: checked as it
    runs and after; returns when its demo key was issued."""
    base, stop, server = await run_server(settings)
    try:

        async def fleet() -> list[dict[str, Any]] | None:
            found = [a for a in await agents(base) if a["status"] in ("idle", "busy")]
            return found if len(found) == 4 else None

        found = {a["id"]: a.get("transport", "redis") for a in await wait_for(fleet, 30)}
        assert found == {
            "demo-researcher-001": "redis",
            "demo-coder-002": "redis",
            "demo-summarizer-003": "redis",
            "demo-http-support-004": "http",
        }, found
        task = {"type": "answer_ticket", "queue": "support"}  # only the HTTP agent takes it
        status, body = await call(base, "POST", "/api/tasks", task)
        assert status == 201, body

        async def done() -> Any:
            path = "/api/tasks?agent=demo-http-support-004&status=succeeded"
            return (await call(base, "GET", path))[1]["items"]

        await wait_for(done, 20, what="a task completed by the HTTP agent")
        _, listed = await call(base, "GET", "/api/auth/keys")
        demo_keys = [k for k in listed["items"] if k["name"] == "demo fleet (HTTP agents)"]
        assert [k["id"] for k in demo_keys] == [DEMO_KEY_ID], listed
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)
    # the fleet stopped before the listener closed: the HTTP agent said so too
    docs = await rds.hgetall("{ez}:agents")
    statuses = {aid: orjson.loads(doc)["status"] for aid, doc in docs.items()}
    assert set(statuses.values()) == {"stopped"}, statuses
    return str(demo_keys[0]["created_at"])


async def test_serve_runs_part_of_its_demo_fleet_over_its_own_gateway(
    redis_url: str, rds: Redis, tmp_path: Path
) -> None:
    settings = Settings(
        redis_url=redis_url,
        port=0,
        data_dir=tmp_path / "data",
        admin_key=ADMIN_KEY,
        demo_agents=4,  # one of them over HTTP: demo-http-support-004
        analytics_workers=1,
        agent_max_wait=0.5,  # an idle long poll ends soon, so the fleet stops soon
        # not FAST's timings: the demo child reads its own from the environment, and a
        # visibility timeout shorter than its heartbeat would reclaim what it runs
        **{k: v for k, v in FAST.items() if k.startswith(("rate_", "backfill", "analyst"))},
    )
    first = await one_start(settings, rds)
    second = await one_start(settings, rds)  # the same fleet, a new key, not another one
    assert second > first
