"""The agent gateway over one WebSocket (issue 12): the HTTP protocol's operations on
one connection, commands pushed as they are created, every message checked against
the AsyncAPI document in both directions, the binding and the key re-checked."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from ezdash.api.asyncapi import asyncapi_document
from ezdash.api.gateway_ws import OPS, SENT
from ezdash.redis_server import RedisServer

from .conftest import Api, stop_api, wait_for
from .test_asyncapi import validator
from .test_gateway import V1, agent_key, bearer, register, take
from .test_outage import own_api


class Socket:
    """A gateway socket that checks every message it sends and receives against the
    AsyncAPI document, and matches replies to requests by id."""

    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn
        doc = asyncapi_document()
        self.sent_schemas = {kind: validator(doc, m.__name__) for kind, (m, _) in SENT.items()}
        self.op_schemas = {op: validator(doc, m.__name__) for op, (m, _) in OPS.items()}
        self.pushed: list[dict[str, Any]] = []
        self._next = 0

    async def receive(self, timeout: float = 10.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.read_message(), timeout)
        assert raw is not None, "the server closed the socket"
        msg: dict[str, Any] = orjson.loads(raw)
        self.sent_schemas[msg["type"]].validate(msg)  # the document describes it
        return msg

    async def call(self, op: str, timeout: float = 10.0, **body: Any) -> dict[str, Any]:
        self._next += 1
        msg = {"op": op, "id": self._next, **body}
        self.op_schemas[op].validate(msg)  # a message the document allows
        await self.conn.write_message(orjson.dumps(msg).decode())
        return await self.reply(self._next, timeout)

    async def reply(self, ident: Any, timeout: float = 10.0) -> dict[str, Any]:
        while True:
            msg = await self.receive(timeout)
            if msg["type"] == "reply" and msg["id"] == ident:
                return msg
            self.pushed.append(msg)

    async def send_raw(self, text: str) -> dict[str, Any]:
        await self.conn.write_message(text)
        while True:
            msg = await self.receive()
            if msg["type"] == "reply":
                return msg
            self.pushed.append(msg)


def ws_url(api: Api, agent_id: str) -> str:
    return api.base.replace("http://", "ws://") + f"{V1}/agents/{agent_id}/ws"


@contextlib.asynccontextmanager
async def socket(api: Api, key: str, agent_id: str) -> AsyncIterator[Socket]:
    conn = await websocket_connect(HTTPRequest(ws_url(api, agent_id), headers=bearer(key)))
    s = Socket(conn)
    try:
        hello = await s.receive()
        assert hello["type"] == "hello" and hello["data"]["agent_id"] == agent_id, hello
        yield s
    finally:
        conn.close()


async def test_the_protocol_over_one_socket(api: Api) -> None:
    key = await agent_key(api)
    await register(api, key, "ci-1", ["code"])
    async with socket(api, key, "ci-1") as ws:
        nothing = await ws.call("take", queues=["code"], wait_s=0.2)
        assert nothing["status"] == 204 and nothing["data"] is None, nothing
        waiting = asyncio.ensure_future(ws.call("take", queues=["code"], wait_s=20))
        await wait_for(lambda: _true(api.services.waker.waiting >= 1), 10, what="a waiting take")
        r = await api.post("/api/tasks", json={"type": "fix", "queue": "code", "payload": {"n": 1}})
        tid = r.json["task"]["id"]
        got = await asyncio.wait_for(waiting, 10)
        assert got["status"] == 200, got
        task = got["data"]["task"]
        assert task["id"] == tid and task["attempt"] == 1 and task["payload"] == {"n": 1}
        token = task["lease"]["token"]
        renewed = await ws.call("lease", task_id=tid, token=token)
        assert renewed["status"] == 200 and renewed["data"]["expires_at"].endswith("Z")
        beat = await ws.call(
            "heartbeat", status="busy", current_task=tid, tasks=[{"task_id": tid, "token": token}]
        )
        assert beat["status"] == 200 and beat["data"] == {"commands": [], "lost": []}, beat
        done = await ws.call("finish", task_id=tid, token=token, status="succeeded", result=[1])
        assert done["status"] == 200 and done["data"]["task"]["status"] == "succeeded", done
        again = await ws.call("finish", task_id=tid, token=token, status="failed")
        assert again["status"] == 409 and again["data"]["task_status"] == "succeeded", again
        stored = (await api.get(f"/api/tasks/{tid}")).json
        assert stored["status"] == "succeeded" and stored["result"] == [1]
        assert stored["agent_id"] == "ci-1"

        # a command is pushed as it is created, and reported on over the socket
        r = await api.post("/api/agents/ci-1/restart")
        cid = r.json["command"]["id"]
        while not ws.pushed:
            ws.pushed.append(await ws.receive())
        pushed = ws.pushed.pop(0)
        assert pushed["type"] == "command" and pushed["data"]["id"] == cid, pushed
        for status in ("acknowledged", "completed"):
            rep = await ws.call("command", command_id=cid, status=status)
            assert rep["status"] == 200 and rep["data"]["command"]["status"] == status, rep
        late = await ws.call("command", command_id=cid, status="failed")
        assert late["status"] == 409 and late["data"]["command_status"] == "completed", late
        assert (await api.get("/api/agents/ci-1")).json["restarts"] == 1


async def _true(value: bool) -> bool:
    return value


async def test_bad_messages_are_answered_and_the_socket_stays_open(api: Api) -> None:
    key = await agent_key(api, queues=["code"])
    await register(api, key, "ci-1", ["code"])
    async with socket(api, key, "ci-1") as ws:
        r = await ws.send_raw("{not json")
        assert r["status"] == 400 and r["data"]["type"].endswith("/malformed-json"), r
        r = await ws.send_raw('{"op": "dance", "id": 3}')
        assert r["status"] == 422 and r["id"] == 3, r
        assert r["data"]["errors"][0]["field"] == "op"
        r = await ws.send_raw('{"op": "finish", "id": 4, "task_id": "t1", "status": "succeeded"}')
        assert r["status"] == 422 and [e["field"] for e in r["data"]["errors"]] == ["token"], r
        r = await ws.send_raw('{"op": "take", "id": 5, "queues": ["summarize"]}')
        assert r["status"] == 403 and r["data"]["errors"][0]["field"] == "queues.0", r
        r = await ws.send_raw('{"op": "lease", "id": 6, "task_id": "t1", "token": "forged"}')
        assert r["status"] == 422 and r["data"]["errors"][0]["field"] == "token", r
        beat = await ws.call("heartbeat", status="idle")
        assert beat["status"] == 200, beat


async def test_the_upgrade_is_refused_outside_the_binding(api: Api) -> None:
    key = await agent_key(api, ids="ci-*")
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(HTTPRequest(ws_url(api, "prod-1"), headers=bearer(key)))
    assert refused.value.code == 403
    with pytest.raises(HTTPClientError) as anonymous:
        await websocket_connect(HTTPRequest(ws_url(api, "ci-1"), headers={"Authorization": ""}))
    assert anonymous.value.code == 401
    r = await api.get(f"{V1}/agents/ci-1/ws", headers=bearer(key))
    assert r.status == 426 and r.json["type"].endswith("/upgrade-required"), r.json
    read_key = (await api.post("/api/auth/keys", json={"name": "r", "scopes": ["read"]})).json
    r = await api.get(f"{V1}/agents/ci-1/ws", headers=bearer(read_key["key"]))
    assert r.status == 403, r.json


async def test_a_socket_that_closes_while_waiting_takes_nothing(api: Api) -> None:
    key = await agent_key(api)
    await register(api, key, "ci-1", ["code"])
    await register(api, key, "ci-2", ["code"])
    async with socket(api, key, "ci-1") as ws:
        msg = {"op": "take", "id": 1, "queues": ["code"], "wait_s": 20}
        await ws.conn.write_message(orjson.dumps(msg).decode())
        await wait_for(lambda: _true(api.services.waker.waiting >= 1), 10, what="a waiting take")
    await wait_for(lambda: _true(api.services.waker.waiting == 0), 10, what="the wait to end")
    r = await api.post("/api/tasks", json={"type": "fix", "queue": "code"})
    task = await take(api, key, "ci-2", ["code"], wait_s=5)
    assert task is not None and task["id"] == r.json["task"]["id"] and task["attempt"] == 1


async def test_a_revoked_key_closes_its_socket(api: Api) -> None:
    r = await api.post(
        "/api/auth/keys",
        json={"name": "gone", "scopes": ["agent"], "agent": {"ids": "ci-*", "queues": ["*"]}},
    )
    key, kid = r.json["key"], r.json["id"]
    await register(api, key, "ci-1", ["code"])
    async with socket(api, key, "ci-1") as ws:
        assert (await ws.call("heartbeat"))["status"] == 200
        assert (await api.fetch("DELETE", f"/api/auth/keys/{kid}")).status in (200, 204)
        await ws.conn.write_message('{"op": "heartbeat", "id": 2}')
        closed = await asyncio.wait_for(ws.conn.read_message(), 10)
        assert closed is None and ws.conn.close_code == 1008


@pytest.mark.slow
async def test_redis_down_is_a_503_reply_and_the_socket_stays_open(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    """While Redis is away every operation is answered 503 ``redis-unavailable`` (no
    500, no closed socket); once it is back the same socket works again."""
    api = await own_api(own_redis, tmp_path)
    try:
        key = await agent_key(api)
        await register(api, key, "ci-1", ["code"])
        async with socket(api, key, "ci-1") as ws:
            assert (await ws.call("heartbeat", status="idle"))["status"] == 200
            own_redis.kill()
            down = await ws.call("take", queues=["code"], wait_s=0.2, timeout=30)
            assert down["status"] == 503, down
            assert down["data"]["type"].endswith("/redis-unavailable"), down
            own_redis.start()

            async def back() -> bool:
                return bool(
                    (await ws.call("heartbeat", status="idle", timeout=30))["status"] == 200
                )

            await wait_for(back, 30, interval=0.2, what="the socket to work after Redis is back")
    finally:
        await stop_api(api)
