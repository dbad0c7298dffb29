"""The AsyncAPI document of /api/ws (issue 11; the gateway socket's channel is
checked in test_gateway_ws.py): valid for the official parser, and
true of the server in both directions: every message a live server sends matches
its schema, client messages the schemas allow are accepted and ones they forbid are
refused."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from ezdash.agent import PermanentError, TaskContext
from ezdash.api import gateway_ws
from ezdash.api.asyncapi import RECEIVED, SENT, asyncapi_document

from .conftest import ADMIN_KEY, REPO, Api, Fleet, wait_for

PACKAGE = REPO / "clients" / "typescript"
DOC_URI = "urn:ezdash:asyncapi"


def validator(doc: dict[str, Any], model: str) -> Draft202012Validator:
    registry: Registry[Any] = Registry().with_resource(
        DOC_URI, Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    return Draft202012Validator(
        {"$ref": f"{DOC_URI}#/components/schemas/{model}"}, registry=registry
    )


def schema_for(doc: dict[str, Any], kind: str) -> Draft202012Validator:
    table: dict[str, Any] = {**SENT, **RECEIVED}
    return validator(doc, table[kind][0].__name__)


async def test_served_document_is_valid_for_the_asyncapi_parser(api: Api, tmp_path: Path) -> None:
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed (the AsyncAPI parser runs on it)")
    r = await api.get("/api/asyncapi.json", headers={"Authorization": ""})
    assert r.status == 200  # open, like the OpenAPI document
    assert r.json == json.loads(json.dumps(asyncapi_document()))
    path = tmp_path / "asyncapi.json"
    path.write_bytes(r.body)
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(PACKAGE / "scripts" / "validate-asyncapi.mjs"),
        str(path),
        cwd=PACKAGE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    problems = [d for d in lines if d.get("severity") in ("error", "warning")]
    assert proc.returncode == 0 and problems == [], (problems, err.decode()[-2000:])
    parsed = next(d for d in lines if d.get("parsed"))
    assert parsed["version"].startswith("3.")
    gateway = [*gateway_ws.SENT, *gateway_ws.OPS]  # its own channel (test_gateway_ws.py)
    assert sorted(parsed["messages"]) == sorted([*SENT, *RECEIVED, *gateway])


async def test_every_message_a_live_server_sends_matches_the_document(
    api: Api, fleet: Fleet
) -> None:
    doc = orjson.loads((await api.get("/api/asyncapi.json")).body)

    async def work(ctx: TaskContext) -> Any:
        ctx.info("working on it", step=1)
        if ctx.payload.get("fail"):
            raise PermanentError("no")
        return {"ok": True}

    url = api.base.replace("http://", "ws://") + "/api/ws"
    conn = await websocket_connect(
        HTTPRequest(url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    )
    seen: list[dict[str, Any]] = []

    async def until(kinds: set[str], timeout: float = 15.0) -> None:
        async def run() -> None:
            while not kinds <= {m["type"] for m in seen}:
                raw = await conn.read_message()
                assert raw is not None, f"closed: {conn.close_code} {conn.close_reason}"
                seen.append(orjson.loads(raw))

        try:
            await asyncio.wait_for(run(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"no {kinds - {m['type'] for m in seen}} in {timeout} s: {seen[-12:]}"
            ) from None

    try:
        await until({"hello"})
        await conn.write_message(
            orjson.dumps({"op": "subscribe", "topics": list(doc_topics(doc))}).decode()
        )
        await conn.write_message(orjson.dumps({"op": "ping"}).decode())
        await until({"pong"})
        await conn.write_message(orjson.dumps({"op": "subscribe", "topics": ["nope"]}).decode())
        await until({"problem"})
        fleet.start("aa-worker", work)
        for payload in ({"fail": False}, {"fail": True}):
            r = await api.post("/api/tasks", json={"type": "t", "payload": payload})
            assert r.status == 201
        rule = {"id": "stuck", "kind": "queue_age", "threshold": 0.3, "filters": {"queue": "q9"}}
        assert (await api.fetch("PUT", "/api/alerts/rules", json={"rules": [rule]})).status == 200
        await api.post("/api/tasks", json={"type": "t", "queue": "q9"})  # nobody takes q9
        await until({"agent.updated", "task.updated", "error", "log", "queue.status"})
        await until({"alert.fired"}, 30)
        assert (await api.fetch("PUT", "/api/alerts/rules", json={"rules": []})).status == 200
        await until({"alert.resolved"}, 30)
    finally:
        conn.close()
    assert {m["type"] for m in seen} >= set(SENT) - {"resync"}  # resync: test_realtime
    for message in seen:
        errors = [e.message for e in schema_for(doc, message["type"]).iter_errors(message)]
        assert errors == [], (message, errors)


def doc_topics(doc: dict[str, Any]) -> list[str]:
    topics: list[str] = doc["components"]["schemas"]["HelloData"]["properties"]["topics"]["items"][
        "enum"
    ]
    return topics


@pytest.mark.parametrize(
    ("message", "allowed"),
    [
        ({"op": "ping"}, True),
        ({"op": "subscribe", "topics": ["tasks"]}, True),
        ({"op": "subscribe", "topics": ["logs"], "since": "now-1m"}, True),
        ({"op": "subscribe", "topics": ["tasks", "logs"], "since": {"events": "0-0"}}, True),
        ({"op": "unsubscribe", "topics": ["tasks"]}, True),
        ({"op": "subscribe", "topics": []}, False),
        ({"op": "subscribe", "topics": ["weather"]}, False),
        ({"op": "subscribe"}, False),
        ({"op": "unsubscribe", "topics": "tasks"}, False),
        ({"op": "shout"}, False),
    ],
)
async def test_client_messages_accepted_exactly_as_documented(
    api: Api, message: dict[str, Any], allowed: bool
) -> None:
    doc = asyncapi_document()
    op = message.get("op")
    documented = op in RECEIVED and not list(schema_for(doc, str(op)).iter_errors(message))
    assert documented == allowed  # the case is what the document says it is
    url = api.base.replace("http://", "ws://") + "/api/ws"
    conn = await websocket_connect(
        HTTPRequest(url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    )
    try:
        hello = orjson.loads(await conn.read_message() or b"{}")
        assert hello["type"] == "hello"
        await conn.write_message(orjson.dumps(message).decode())
        await conn.write_message(orjson.dumps({"op": "ping"}).decode())
        answers: list[str] = []

        async def pongs() -> bool:
            raw = await conn.read_message()
            assert raw is not None
            answers.append(orjson.loads(raw)["type"])
            return answers.count("pong") >= (2 if op == "ping" and allowed else 1)

        await wait_for(pongs, 10, interval=0, what="the answers")
    finally:
        conn.close()
    assert ("problem" not in answers) == allowed, answers
