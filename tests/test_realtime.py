"""``/api/ws`` over real sockets: topics, errors, queue status, logs, resume, slow clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from ezdash.agent import PermanentError, TaskContext

from .conftest import ADMIN_KEY, Api, Fleet, start_api, stop_api, wait_for

pytestmark = pytest.mark.timeout(120)


class WS:
    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn
        self.messages: list[dict[str, Any]] = []

    async def send(self, msg: dict[str, Any]) -> None:
        await self.conn.write_message(orjson.dumps(msg).decode())

    async def until(
        self, cond: Callable[[list[dict[str, Any]]], bool], timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        async def run() -> None:
            while not cond(self.messages):
                raw = await self.conn.read_message()
                if raw is None:
                    raise AssertionError(f"closed: {self.conn.close_code} {self.conn.close_reason}")
                self.messages.append(orjson.loads(raw))

        await asyncio.wait_for(run(), timeout)
        return self.messages

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]


async def subscribed(ws: WS, topics: list[str], **extra: Any) -> None:
    """Subscribe and wait until the server has handled it (messages are handled in
    order, so the pong comes after the subscription took effect)."""
    pongs = len(ws.of("pong"))
    await ws.send({"op": "subscribe", "topics": topics, **extra})
    await ws.send({"op": "ping"})
    await ws.until(lambda ms: len([m for m in ms if m["type"] == "pong"]) > pongs)


@pytest.fixture
async def connect(api: Api) -> AsyncIterator[Callable[..., Any]]:
    opened: list[WS] = []

    async def open_ws(target: Api = api, query: str = "", **headers: str) -> WS:
        url = target.base.replace("http://", "ws://") + "/api/ws" + query
        req = HTTPRequest(url, headers={"Authorization": f"Bearer {ADMIN_KEY}", **headers})
        ws = WS(await websocket_connect(req))
        opened.append(ws)
        await ws.until(lambda ms: any(m["type"] == "hello" for m in ms))
        return ws

    yield open_ws
    for ws in opened:
        ws.conn.close()


async def test_task_and_agent_updates_reach_subscribers(
    api: Api, fleet: Fleet, connect: Any
) -> None:
    ws = await connect()
    hello = ws.of("hello")[0]
    assert set(hello["data"]["topics"]) >= {"agents", "tasks", "queues", "errors", "logs"}
    await ws.send({"op": "subscribe", "topics": ["tasks", "agents"]})
    await ws.send({"op": "ping"})
    await ws.until(lambda ms: any(m["type"] == "pong" for m in ms))
    created = (await api.post("/api/tasks", json={"type": "t", "queue": "ws"})).json["task"]
    fleet.start("w1", queues=["ws"])
    await ws.until(
        lambda ms: any(
            m["type"] == "task.updated" and m["data"]["status"] == "succeeded" for m in ms
        )
    )
    statuses = [
        m["data"]["status"] for m in ws.of("task.updated") if m["data"]["id"] == created["id"]
    ]
    assert statuses == ["queued", "running", "succeeded"]
    assert any(m["data"]["id"] == "w1" for m in ws.of("agent.updated"))
    ids = [tuple(map(int, m["id"].split("-"))) for m in ws.messages if m["id"]]
    assert ids == sorted(ids)  # in stream order


async def test_failures_are_published_on_the_errors_topic(
    api: Api, fleet: Fleet, connect: Any
) -> None:
    async def broken(ctx: TaskContext) -> Any:
        raise PermanentError("cannot parse the input")

    ws = await connect()
    await subscribed(ws, ["errors"])
    fleet.start("w-bad", broken, queues=["bad"])
    await api.post("/api/tasks", json={"type": "t", "queue": "bad"})
    await ws.until(lambda ms: any(m["type"] == "error" for m in ms))
    err = ws.of("error")[0]
    assert err["data"]["source"] == "task" and err["data"]["status"] == "failed"
    assert "cannot parse" in orjson.dumps(err["data"]["error"]).decode()
    assert not ws.of("task.updated")  # only what was subscribed


async def test_queue_status_comes_at_most_once_a_second_and_only_on_change(
    api: Api, connect: Any
) -> None:
    ws = await connect()
    await ws.send({"op": "subscribe", "topics": ["queues"]})
    await ws.until(lambda ms: len([m for m in ms if m["type"] == "queue.status"]) >= 1)
    started = time.monotonic()
    for _ in range(12):
        await api.post("/api/tasks", json={"type": "t", "queue": "busy"})
        await asyncio.sleep(0.1)
    await ws.until(
        lambda ms: any(
            m["type"] == "queue.status"
            and any(q["name"] == "busy" and q["depth"] == 12 for q in m["data"])
            for m in ms
        ),
        timeout=10,
    )
    received = ws.of("queue.status")
    times = [m["ts"] for m in received]
    assert len(received) <= 2 + int(time.monotonic() - started)
    assert len(times) == len(set(times))
    depths = [orjson.dumps(m["data"]) for m in received]
    assert len(depths) == len(set(depths))  # never the same picture twice in a row


async def test_logs_topic_and_exact_resume_after_a_reconnect(api: Api, connect: Any) -> None:
    ws = await connect()
    await ws.send({"op": "subscribe", "topics": ["logs", "tasks"]})
    await ws.send({"op": "ping"})
    await ws.until(lambda ms: any(m["type"] == "pong" for m in ms))
    entry = {"agent_id": "a", "level": "info", "message": "one"}
    assert (await api.post("/api/ingest/logs", json=[entry])).status == 202
    await api.post("/api/tasks", json={"type": "t", "queue": "r"})
    await ws.until(
        lambda ms: (
            any(m["type"] == "log" for m in ms) and any(m["type"] == "task.updated" for m in ms)
        )
    )
    last = {"logs": ws.of("log")[-1]["id"], "events": ws.of("task.updated")[-1]["id"]}
    ws.conn.close()

    for i in range(3):  # missed while away
        await api.post("/api/ingest/logs", json=[{**entry, "message": f"missed {i}"}])
        await api.post("/api/tasks", json={"type": "t", "queue": "r"})

    again = await connect()
    await again.send({"op": "subscribe", "topics": ["logs", "tasks"], "since": last})
    await again.until(lambda ms: len([m for m in ms if m["type"] == "log"]) >= 3)
    await api.post("/api/ingest/logs", json=[{**entry, "message": "live"}])
    await again.until(
        lambda ms: any(m["type"] == "log" and m["data"]["message"] == "live" for m in ms)
    )
    assert [m["data"]["message"] for m in again.of("log")] == [
        "missed 0",
        "missed 1",
        "missed 2",
        "live",
    ]
    tasks = again.of("task.updated")
    assert len(tasks) == 3 and len({m["id"] for m in tasks}) == 3


async def test_bad_messages_get_a_problem_and_the_connection_stays(api: Api, connect: Any) -> None:
    ws = await connect()
    for bad, name in (
        ("not json", ""),
        ({"op": "dance"}, "op"),
        ({"op": "subscribe", "topics": ["weather"]}, "topics"),
        ({"op": "subscribe", "topics": ["logs"], "since": "last tuesday-ish"}, "since"),
    ):
        await ws.conn.write_message(bad if isinstance(bad, str) else orjson.dumps(bad).decode())
        seen = len(ws.of("problem"))
        await ws.until(lambda ms, seen=seen: len([m for m in ms if m["type"] == "problem"]) > seen)
        assert ws.of("problem")[-1]["data"]["errors"][0]["field"] == name
    await ws.send({"op": "ping"})
    await ws.until(lambda ms: any(m["type"] == "pong" for m in ms))


async def test_upgrade_needs_credentials_and_takes_a_jwt_in_the_query(
    api: Api, connect: Any
) -> None:
    url = api.base.replace("http://", "ws://") + "/api/ws"
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(url)
    assert refused.value.code == 401
    token = (await api.post("/api/auth/token")).json["access_token"]
    conn = await websocket_connect(f"{url}?access_token={token}")
    try:
        hello = orjson.loads(await conn.read_message() or "{}")
        assert hello["type"] == "hello"
    finally:
        conn.close()


async def test_every_instance_publishes_every_event(api: Api, connect: Any) -> None:
    other = await start_api(api.services.settings)
    try:
        ws = await connect(other)
        await ws.send({"op": "subscribe", "topics": ["tasks"]})
        await ws.send({"op": "ping"})
        await ws.until(lambda ms: any(m["type"] == "pong" for m in ms))
        made = (await api.post("/api/tasks", json={"type": "t", "queue": "x"})).json["task"]
        await ws.until(lambda ms: any(m["type"] == "task.updated" for m in ms))
        assert ws.of("task.updated")[0]["data"]["id"] == made["id"]
    finally:
        await stop_api(other)


@pytest.mark.parametrize("settings_overrides", [{"ws_queue": 10}])
async def test_a_client_that_does_not_read_is_resynced_and_closed(api: Api, connect: Any) -> None:
    ws = await connect()
    await ws.send({"op": "subscribe", "topics": ["logs"]})
    await ws.send({"op": "ping"})
    await ws.until(lambda ms: any(m["type"] == "pong" for m in ms))
    big = "x" * 8000
    for _ in range(20):  # ~16 MB the client never reads: socket buffers fill, then its queue
        batch = [{"agent_id": "a", "message": big} for _ in range(100)]
        assert (await api.post("/api/ingest/logs", json=batch)).status == 202
    hub = api.services.hub

    async def dropped() -> bool:
        return not any(c.handler.ws_connection and c.topics for c in hub.clients) or any(
            c.dropped for c in hub.clients
        )

    await wait_for(dropped, timeout=20, what="the slow client to be dropped")
    # now read what is there: the stream ends with resync and close code 1013
    await ws.until(lambda ms: any(m["type"] == "resync" for m in ms), timeout=30)
    assert await ws.conn.read_message() is None
    assert ws.conn.close_code == 1013


async def test_clients_connecting_at_once_get_each_event_once(api: Api, connect: Any) -> None:
    # Twenty first connections race to start the hub; there must be one set of pumps.
    clients = await asyncio.gather(*(connect() for _ in range(20)))
    await asyncio.gather(*(subscribed(ws, ["tasks"]) for ws in clients))
    made = (await api.post("/api/tasks", json={"type": "t", "queue": "once"})).json["task"]
    for ws in clients:
        await ws.until(lambda ms: any(m["type"] == "task.updated" for m in ms))
    await api.post("/api/tasks", json={"type": "t", "queue": "once"})  # a marker after it
    for ws in clients:
        await ws.until(lambda ms: len([m for m in ms if m["type"] == "task.updated"]) >= 2)
        first = [m for m in ws.of("task.updated") if m["data"]["id"] == made["id"]]
        assert len(first) == 1
