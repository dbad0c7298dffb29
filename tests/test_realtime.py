"""``/api/ws`` over real sockets: topics, errors, queue status, logs, resume, slow clients."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlparse

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
    assert hub is not None

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


# -- clients that stop reading --------------------------------------------------------


class RawWS:
    """A WebSocket client on a plain socket that reads only when told to. Its receive
    buffer is tiny (set before connecting, so the TCP window is small from the
    start): once the server's send buffer is full too, each write waits on it."""

    def __init__(self, sock: socket.socket, buffer: bytes) -> None:
        self.sock = sock
        self.buffer = bytearray(buffer)
        self.parsed = 0
        self.messages: list[tuple[int, bytes]] = []
        self.eof = False

    @classmethod
    async def open(cls, base: str, rcvbuf: int = 4096) -> RawWS:
        url = urlparse(base)
        assert url.hostname and url.port
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (url.hostname, url.port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /api/ws HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            got = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
            assert got, "closed during the handshake"
            data += got
        head, rest = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(sock, rest)

    async def send(self, msg: dict[str, Any]) -> None:
        await self.send_frame(0x1, orjson.dumps(msg))

    async def send_frame(self, opcode: int, payload: bytes) -> None:
        """One masked frame (clients must mask, RFC 6455 §5.3), payload under 64 KiB."""
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        else:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await asyncio.get_running_loop().sock_sendall(self.sock, head + mask + masked)

    async def read_until(self, cond: Callable[[], bool], timeout: float) -> None:
        """Read until ``cond()`` holds or the server closed the connection."""

        async def run() -> None:
            loop = asyncio.get_running_loop()
            while not cond():
                try:
                    got = await loop.sock_recv(self.sock, 65536)
                except ConnectionResetError:
                    got = b""
                if not got:
                    self.eof = True
                    return
                self.buffer += got

        await asyncio.wait_for(run(), timeout)

    async def read_to_end(self, timeout: float) -> None:
        await self.read_until(lambda: False, timeout)

    def frames(self) -> list[tuple[int, bytes]]:
        """(opcode, payload) of the whole frames read so far; ``unparsed`` bytes follow."""
        data = self.buffer
        while len(data) - self.parsed >= 2:
            at = self.parsed
            opcode, n = data[at] & 0x0F, data[at + 1] & 0x7F
            start = at + {126: 4, 127: 10}.get(n, 2)
            if len(data) < start:
                break
            if n >= 126:
                (n,) = struct.unpack("!H" if n == 126 else "!Q", data[at + 2 : start])
            if len(data) < start + n:
                break
            self.messages.append((opcode, bytes(data[start : start + n])))
            self.parsed = start + n
        return self.messages

    @property
    def unparsed(self) -> int:
        return len(self.buffer) - self.parsed

    def closed_by_server(self) -> bool:
        """A close frame came (the server sends nothing after it)."""
        return any(op == 0x8 for op, _ in self.frames()[-1:])

    def close(self) -> None:
        self.sock.close()


def rss_mb() -> float:
    """This process's resident memory: the server under test runs in it."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def flood(api: Api, stop: asyncio.Event, batches: int = 150) -> int:
    """Log entries through the API, batch after batch, until told to stop."""
    sent = 0
    text = "y" * 1000
    for n in range(batches):
        if stop.is_set():
            break
        batch = [{"agent_id": "busy", "message": f"{n}-{i} {text}"} for i in range(200)]
        assert (await api.post("/api/ingest/logs", json=batch)).status == 202
        sent += len(batch)
        await asyncio.sleep(0.02)
    return sent


def server_side(api: Api, count: int) -> Callable[[], Any]:
    """The hub's clients subscribed to logs, once there are ``count`` of them."""

    async def found() -> Any:
        hub = api.services.hub
        clients = [c for c in hub.clients if "logs" in c.topics] if hub else []
        return clients if len(clients) == count else None

    return found


async def given_up(client: Any) -> None:
    """Wait until the server told ``client`` to resync and began closing it."""

    async def closing() -> bool:
        conn = client.handler.ws_connection
        return bool(client.dropped and (conn is None or conn.is_closing()))

    await wait_for(closing, timeout=15, interval=0.01, what="the server to give up")


async def read_resync_and_close(raw: RawWS) -> list[dict[str, Any]]:
    """Read again: every frame whole, ``resync`` last, then a close with 1013."""
    await raw.read_until(raw.closed_by_server, 10)
    frames = raw.frames()
    assert raw.unparsed == 0  # no frame cut short, nothing after the close
    texts = [orjson.loads(p) for op, p in frames if op == 0x1]
    assert [m["type"] for m in texts[-1:]] == ["resync"]
    assert frames[-1][0] == 0x8 and struct.unpack("!H", frames[-1][1][:2]) == (1013,)
    return texts[:-1]


async def test_a_client_that_stops_reading_is_resynced_or_cut_off_in_bounded_time(
    api: Api,
) -> None:
    # Two clients stop reading at once: one reads again as soon as the server gave up
    # on it, the other never does. Neither may hold the server up for long.
    before = rss_mb()
    late, gone = await RawWS.open(api.base), await RawWS.open(api.base)
    stop = asyncio.Event()
    flooding: asyncio.Task[int] | None = None
    watching: asyncio.Task[Any] | None = None
    try:
        await late.send({"op": "subscribe", "topics": ["logs"]})
        (late_c,) = await wait_for(server_side(api, 1), what="the first subscription")
        await gone.send({"op": "subscribe", "topics": ["logs"]})
        (gone_c,) = [c for c in await wait_for(server_side(api, 2)) if c is not late_c]
        flooding = asyncio.create_task(flood(api, stop))

        hub = api.services.hub
        assert hub is not None

        async def let_go() -> bool:
            return gone_c not in hub.clients

        watching = asyncio.create_task(
            wait_for(let_go, timeout=15, interval=0.01, what="the server to let go")
        )
        await given_up(late_c)
        # It reads again: what was already on its way, then resync and 1013.
        texts = await read_resync_and_close(late)
        assert {m["type"] for m in texts} <= {"hello", "log"}
        assert sum(m["type"] == "log" for m in texts) > 0
        ids = [tuple(map(int, m["id"].split("-"))) for m in texts if m["type"] == "log"]
        assert ids == sorted(set(ids))  # in order, none twice
        await late.send_frame(0x8, struct.pack("!H", 1013))  # the close handshake
        await late.read_to_end(timeout=10)
        assert late.eof

        # The other one never reads: the server lets go of it in bounded time.
        await watching
        stop.set()
        sent = await flooding
        assert sent >= 2000  # a busy topic: thousands of frames nobody read
        assert gone_c.writer is not None and gone_c.writer.done()
        assert gone_c.queue.qsize() <= 1 and late_c.queue.qsize() <= 1
        grown = rss_mb() - before
        assert grown < 40, f"the server grew {grown:.0f} MB"  # it saw 2 x 30 MB go by
        await gone.read_to_end(timeout=10)  # the server closed the socket
        assert gone.eof
    finally:
        stop.set()
        for task in (flooding, watching):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        late.close()
        gone.close()


async def test_a_resume_into_a_client_that_does_not_read_is_bounded_too(api: Api) -> None:
    # The replay of a resume writes straight to the socket: the same deadline holds.
    await api.post("/api/ingest/logs", json=[{"agent_id": "a", "message": "before"}])
    since = await api.services.logs.last_id()
    text = "z" * 1000
    for n in range(40):  # 8 MB of history, far more than the socket buffers hold
        batch = [{"agent_id": "a", "message": f"{n}-{i} {text}"} for i in range(200)]
        assert (await api.post("/api/ingest/logs", json=batch)).status == 202
    raw = await RawWS.open(api.base)
    try:
        await raw.send({"op": "subscribe", "topics": ["logs"], "since": {"logs": since}})
        (client,) = await wait_for(server_side(api, 1), what="the subscription")
        await given_up(client)
        texts = await read_resync_and_close(raw)
        logs = [m["data"]["message"].split()[0] for m in texts if m["type"] == "log"]
        assert 0 < len(logs) < 40 * 200  # the start of the replay, in order, then resync
        assert logs == [f"{i // 200}-{i % 200}" for i in range(len(logs))]
        await raw.send_frame(0x8, struct.pack("!H", 1013))
        await raw.read_to_end(timeout=10)

        hub = api.services.hub
        assert hub is not None

        async def let_go() -> bool:
            return client not in hub.clients

        await wait_for(let_go, what="the server to let go")
    finally:
        raw.close()
