"""/api/openapi.json describes exactly the routes the server has, and real answers
(successes and problems) match the schemas it documents."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from ezdash.agent import TaskContext
from ezdash.api.app import routes
from ezdash.api.base import APIHandler
from ezdash.api.opdocs import Op, ok
from ezdash.api.openapi import documentation_gaps

from .conftest import Api, Fleet, wait_for
from .openapi_check import check_response


async def test_document_is_served_and_lists_every_route(api: Api) -> None:
    r = await api.get("/api/openapi.json")
    assert r.status == 200
    doc = r.json
    assert doc["openapi"].startswith("3.1")
    documented = {
        (re.sub(r"\{[^}]+\}", "([^/]+)", path), method.upper())
        for path, ops in doc["paths"].items()
        for method in ops
    }
    served = set()
    for pattern, cls in routes():
        for method, _scope in cls.scopes.items():
            served.add((pattern, method))
    assert documented == served
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            scope = next(
                cls.scopes[method.upper()]
                for p, cls in routes()
                if p == re.sub(r"\{[^}]+\}", "([^/]+)", path)
            )
            assert op.get("x-scope") == scope, (path, method)
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)) == len(served)
    assert all(re.fullmatch(r"(get|post|put|delete)[A-Z][A-Za-z]+", i) for i in ids), ids
    tags = {t["name"] for t in doc["tags"]}
    assert all(t["description"] for t in doc["tags"])
    for ops in doc["paths"].values():
        for op in ops.values():
            assert len(op["tags"]) == 1 and op["tags"][0] in tags


def test_every_handler_method_is_documented_and_nothing_else() -> None:
    """Each method a routed handler serves has its own ``docs`` entry, and no entry
    describes a method its handler does not serve."""
    assert documentation_gaps(routes()) == []


class Undocumented(APIHandler):
    scopes = {"GET": "read", "POST": "write"}
    docs = {"GET": Op("Read it", {"200": ok("Live")}), "PUT": Op("Not served", {})}

    async def get(self) -> None: ...

    async def post(self) -> None: ...


class Inheriting(Undocumented):
    async def get(self) -> None: ...


def test_a_gap_in_the_docs_is_found() -> None:
    """A new endpoint without ``docs`` (or a subclass living on its base's) fails the
    test above, and so does a ``docs`` entry for a method nobody serves."""
    assert documentation_gaps([("/x", Undocumented), ("/y", Inheriting)]) == [
        "Undocumented.post (/x) has no docs",
        "Undocumented.docs describes PUT (/x), which it does not serve",
        "Inheriting.get (/y) has no docs",
        "Inheriting.post (/y) has no docs",
    ]


async def test_real_answers_match_the_document(api: Api, fleet: Fleet) -> None:
    gate = asyncio.Event()

    async def handler(ctx: TaskContext) -> Any:
        if ctx.payload.get("fail"):
            raise ValueError("boom")
        await gate.wait()
        return {"ok": True}

    fleet.start("w1", handler, kind="coder", model="m")

    async def fetch(method: str, path: str, **kw: Any) -> Any:
        resp = await api.fetch(method, path, **kw)
        check_response(method, path, resp)
        return resp

    created = await fetch("POST", "/api/tasks", json={"type": "t", "payload": {"a": 1}})
    tid = created.json["task"]["id"]

    async def running() -> bool:
        return (await api.get(f"/api/tasks/{tid}")).json["status"] == "running"

    await wait_for(running, 10)
    await fetch("GET", f"/api/tasks/{tid}")
    await fetch("GET", "/api/tasks")
    await fetch("GET", "/api/agents")
    await fetch("GET", "/api/agents/w1")
    await fetch("GET", "/api/queues")
    await fetch("POST", "/api/agents/w1/restart?dry_run=true")
    cmd = await fetch("POST", "/api/agents/w1/restart")
    await fetch("GET", f"/api/control/commands/{cmd.json['command']['id']}")
    await fetch("GET", "/api/control/commands")
    gate.set()
    failed = await fetch(
        "POST", "/api/tasks", json={"type": "t", "payload": {"fail": True}, "max_attempts": 1}
    )
    fid = failed.json["task"]["id"]

    async def dead() -> bool:
        return (await api.get(f"/api/tasks/{fid}")).json["status"] == "dead"

    await wait_for(dead, 10)
    await fetch("GET", f"/api/tasks/{fid}")
    await fetch("GET", "/api/agents/w1")
    await fetch("PUT", f"/api/tasks/{fid}/retry?dry_run=true")
    await fetch("PUT", f"/api/tasks/{fid}/retry")
    await fetch("POST", f"/api/tasks/{fid}/cancel")
    await fetch("DELETE", "/api/agents/w1?dry_run=true")
    await fetch("DELETE", "/api/agents/w1")
    for what in ("tokens", "costs", "performance", "errors"):
        await fetch("GET", f"/api/metrics/{what}?from=now-2h&group_by=agent")
    await fetch("GET", "/api/metrics/prices")
    await fetch(
        "POST",
        "/api/ingest/usage",
        json=[
            {
                "ts": time.time(),
                "agent_id": "w1",
                "model": "gpt-4o",
                "provider": "openai",
                "input_tokens": 10,
                "output_tokens": 5,
                "latency_ms": 12.5,
                "status": "ok",
            }
        ],
    )
    await fetch("POST", "/api/ingest/usage", json=[{"agent_id": "w1"}])
    for what in ("costs", "performance", "errors"):
        await fetch("GET", f"/api/metrics/{what}?from=now-2h&group_by=model")
    await fetch("GET", "/api/health")
    await fetch("GET", "/api/ready")
    # problems are documented too
    await fetch("POST", "/api/tasks", json={"type": 1})
    await fetch("GET", "/api/tasks/tsk_01M8GTE1GYDMJ6ZJP9XZZAER13")
    await fetch("PUT", f"/api/tasks/{tid}/retry")
    await fetch("GET", "/api/tasks?cursor=zz")
    await fetch("GET", "/api/agents/nobody")
