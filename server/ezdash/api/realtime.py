"""``GET /api/ws``: agents, tasks, queues, errors and logs as they happen.

One hub per instance reads the events stream and the log stream (one blocking
read each, see ``ezdash.store.tail``) and turns every entry into one WebSocket
frame, built once and written as the same bytes to every subscriber: encoding and
framing are paid per event, not per client. Each client has a bounded queue and a
writer that awaits its socket, for at most ``SEND_DEADLINE_S`` a frame. A client
that falls ``EZ_WS_QUEUE`` frames behind, or whose socket takes no frame for that
long, gets ``resync`` and is closed with 1013, so a slow reader costs bounded memory
and a stalled one is let go in bounded time. A client resumes with ``since`` (the
last id it saw): what it missed is read back from Redis in order, and live frames
at or below that point are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import RedisError
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from .. import __version__
from ..store.logs import LogFilter, is_stream_id, public, stream_id
from ..store.tail import StreamTail, read_after
from ..timeutil import format_ms, parse_time
from .base import APIHandler, require_upgrade
from .opdocs import Op, problem
from .services import Services

log = logging.getLogger(__name__)

TOPICS = ("agents", "tasks", "queues", "errors", "alerts", "logs")
EVENT_TOPICS = {
    "agent.updated": "agents",
    "task.updated": "tasks",
    "alert.fired": "alerts",
    "alert.resolved": "alerts",
}
ERROR_STATUSES = frozenset({"failed", "dead"})
QUEUE_INTERVAL_S = 1.0
HUB_QUEUE = 100_000
CATCH_UP_CHUNK = 500
MAX_CATCH_UP = 100_000
"""Entries one resume may replay; further back, the client is told to resync."""
SEND_DEADLINE_S = 5.0
"""How long one frame may wait for the client's socket to take it. Longer, the
client has stopped reading (its socket buffers are full): it is told to resync."""

Position = tuple[int, int, int]
"""(ms, seq, k): the stream entry, then which of the messages made from it (an events
entry may make two: a failed task's ``task.updated`` and its ``error``)."""
NOWHERE: Position = (0, 0, 0)
LAST = 1 << 30
"""A k past every message of an entry: a floor that skips the entry whole."""
Item = tuple[str | None, Position, bytes]
"""(stream, position, frame): stream is "events", "logs" or None for unordered messages."""


def frame(message: dict[str, Any]) -> bytes:
    """One unmasked, uncompressed text frame (RFC 6455 §5.2), as a server sends it."""
    payload = orjson.dumps(message)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x81, 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 127, n)
    return head + payload


RESYNC = frame({"type": "resync", "id": None, "ts": None, "data": {}})


class Stalled(Exception):
    """The client's socket took no frame for ``SEND_DEADLINE_S``."""


def _ts(entry_id: str) -> str:
    return str(format_ms(stream_id(entry_id)[0]))


def decode_events(entries: list[Any]) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for entry_id, fields in entries:
        etype = fields.get("type")
        raw = fields.get("data")
        if not etype or raw is None:
            continue
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(data, dict):
            out.append((str(entry_id), str(etype), data))
    return out


def event_messages(entry_id: str, etype: str, data: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(topic, frame) for one events-stream entry: its own message, plus an ``error``
    message when it reports a failure."""
    topic = EVENT_TOPICS.get(etype)
    if topic is None:
        return []
    out = [(topic, frame({"type": etype, "id": entry_id, "ts": _ts(entry_id), "data": data}))]
    failed = (etype == "task.updated" and data.get("status") in ERROR_STATUSES) or (
        etype == "agent.updated" and data.get("status") == "error"
    )
    if failed:
        source = "task" if etype == "task.updated" else "agent"
        out.append(
            (
                "errors",
                frame(
                    {
                        "type": "error",
                        "id": entry_id,
                        "ts": _ts(entry_id),
                        "data": {"source": source, **data},
                    }
                ),
            )
        )
    return out


def log_message(entry_id: str, doc: dict[str, Any]) -> bytes:
    p = public(entry_id, doc)
    return frame({"type": "log", "id": entry_id, "ts": p["ts"], "data": p})


@dataclass(eq=False)
class Client:
    handler: RealtimeHandler
    queue: asyncio.Queue[Item | None]
    topics: set[str] = field(default_factory=set)
    floor: dict[str, Position] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    writer: asyncio.Task[None] | None = None
    dropped: bool = False

    def offer(self, item: Item) -> None:
        if self.dropped:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.drop(f"{self.queue.maxsize} frames behind")

    def drop(self, why: str) -> None:
        """Too slow: say resync and close, instead of buffering without bound."""
        if self.dropped:
            return  # the writer has its sign-off already
        self.dropped = True
        log.info("websocket client %s told to resync: %s", self.handler.client_ip, why)
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                self.queue.get_nowait()
        self.queue.put_nowait(None)


class Hub:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.clients: set[Client] = set()
        self.events = StreamTail(
            services.log_tail.redis_url,
            services.keys.events,
            decode_events,
            queue_size=HUB_QUEUE,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._starting = asyncio.Lock()
        self._queue_state: bytes | None = None
        self._tasks_changed = True

    async def start(self) -> None:
        async with self._starting:  # many clients connect at once; one set of pumps
            if not self._tasks:
                await self._start()

    async def _start(self) -> None:
        events = await self.events.subscribe()
        logs = await self.services.log_tail.subscribe(HUB_QUEUE)
        self._tasks = [
            asyncio.create_task(self._pump_events(events), name="ws-events"),
            asyncio.create_task(self._pump_logs(logs), name="ws-logs"),
            asyncio.create_task(self._queues(), name="ws-queues"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.events.close()
        for client in list(self.clients):
            client.handler.close(1001, "server shutting down")

    def broadcast(self, topic: str, item: Item) -> None:
        for client in list(self.clients):
            if topic in client.topics:
                client.offer(item)

    def resync_everyone(self, why: str) -> None:
        log.warning("every websocket client told to resync: %s", why)
        for client in list(self.clients):
            client.drop(why)

    async def _pump_events(self, queue: asyncio.Queue[Any]) -> None:
        while True:
            got = await queue.get()
            if got is None:  # the hub itself fell behind: nobody can trust their stream
                self.resync_everyone("the events tail fell behind")
                queue = await self.events.subscribe()
                continue
            entry_id, etype, data = got
            if etype == "task.updated":
                self._tasks_changed = True
            ms, seq = stream_id(entry_id)
            for k, (topic, message) in enumerate(event_messages(entry_id, etype, data)):
                self.broadcast(topic, ("events", (ms, seq, k), message))

    async def _pump_logs(self, queue: asyncio.Queue[Any]) -> None:
        while True:
            got = await queue.get()
            if got is None:
                self.resync_everyone("the log tail fell behind")
                queue = await self.services.log_tail.subscribe(HUB_QUEUE)
                continue
            entry_id, doc = got
            ms, seq = stream_id(entry_id)
            self.broadcast("logs", ("logs", (ms, seq, 0), log_message(entry_id, doc)))

    async def _queues(self) -> None:
        """``queue.status`` at most once a second, and only when something changed."""
        svc = self.services
        while True:
            await asyncio.sleep(QUEUE_INTERVAL_S)
            if not any("queues" in c.topics for c in self.clients):
                self._queue_state = None  # the next subscriber gets a fresh picture
                continue
            if not self._tasks_changed and self._queue_state is not None:
                continue
            self._tasks_changed = False
            try:
                now = await svc.redis_now_ms()
                queues = await svc.tasks.queue_stats(now)
            except (RedisError, OSError) as e:
                log.warning("queue status: redis trouble (%s)", e)
                continue
            state = orjson.dumps(queues)
            if state == self._queue_state:
                continue
            self._queue_state = state
            message = frame(
                {"type": "queue.status", "id": None, "ts": format_ms(now), "data": queues}
            )
            self.broadcast("queues", (None, NOWHERE, message))


def hub_for(services: Services) -> Hub:
    """The instance's hub, made on first use (most instances never get a WebSocket)."""
    if services.hub is None:
        services.hub = Hub(services)
    return services.hub


class RealtimeHandler(APIHandler, WebSocketHandler):
    scopes = {"GET": "read"}
    docs = {
        "GET": Op(
            "WebSocket (upgrade): send {op: subscribe|unsubscribe, topics, since} or "
            "{op: ping}; receive {type, id, ts, data} with type hello, agent.updated, "
            "task.updated, queue.status, error, log, pong, resync or problem. A client "
            "too slow to keep up gets resync and close code 1013",
            {
                "101": {"description": "Switching Protocols"},
                "426": problem("Not a WebSocket upgrade request"),
            },
        )
    }
    query_token = True
    client: Client | None = None

    async def prepare(self) -> None:
        await super().prepare()
        await self.settle()  # no speculative upgrade: the check must pass first

    async def get(self, *args: str, **kwargs: str) -> None:
        require_upgrade(self)
        await super().get(*args, **kwargs)

    def check_origin(self, origin: str) -> bool:
        """Browsers on the configured origins (EZ_CORS_ORIGINS) and same-host pages;
        non-browser clients send no Origin and are judged by their credentials."""
        allowed = self.services.settings.cors_origins
        return "*" in allowed or origin in allowed or super().check_origin(origin)

    def get_compression_options(self) -> None:
        return None  # frames are shared bytes, written as built

    async def open(self, *args: str, **kwargs: str) -> None:
        svc = self.services
        hub = hub_for(svc)
        await hub.start()
        self.client = Client(self, asyncio.Queue(svc.settings.ws_queue))
        hub.clients.add(self.client)
        self.client.writer = asyncio.create_task(self._write_loop(self.client))
        hello = {
            "type": "hello",
            "id": None,
            "ts": format_ms(int(time.time() * 1000)),
            "data": {"version": __version__, "instance": svc.instance, "topics": list(TOPICS)},
        }
        self.client.offer((None, NOWHERE, frame(hello)))

    async def _write_loop(self, client: Client) -> None:
        try:
            while True:
                item = await client.queue.get()
                if item is None:
                    self._resync()
                    return
                source, position, data = item
                async with client.lock:
                    if source is not None and position <= client.floor.get(source, NOWHERE):
                        continue
                    if source is not None:
                        client.floor[source] = position
                    await self._send(data)
        except Stalled:
            self._stalled(client, "")
        except (StreamClosedError, WebSocketClosedError):
            return

    async def _send(self, data: bytes) -> None:
        """Write a frame and wait until the socket took it, at most ``SEND_DEADLINE_S``."""
        conn = self.ws_connection
        if conn is None or conn.is_closing():
            raise WebSocketClosedError()
        stream = getattr(conn, "stream", None)
        if stream is None:
            raise WebSocketClosedError()
        written = stream.write(data)
        if not written.done():  # the socket did not take it all at once
            # asyncio.wait, not wait_for: the write stays queued, its future not cancelled
            await asyncio.wait((written,), timeout=SEND_DEADLINE_S)
            if not written.done():
                raise Stalled()
        written.result()

    def _stalled(self, client: Client, during: str) -> None:
        client.drop(f"its socket took no frame for {SEND_DEADLINE_S:g} s{during}")
        self._resync()

    def _resync(self) -> None:
        """Say ``resync`` and close with 1013, without waiting for the socket.

        The IOStream appends both frames after the bytes it has not sent yet, so a
        client that reads again reads every frame whole, then these two. One that
        does not is cut off when Tornado's close handshake times out (5 s): the
        writer never waits on it, and what stays buffered is one frame and these."""
        conn = self.ws_connection
        if conn is None or conn.is_closing():
            return
        stream = getattr(conn, "stream", None)
        if stream is not None:
            with contextlib.suppress(StreamClosedError):
                stream.write(RESYNC)  # not awaited: the close below comes right after it
        self.close(1013, "too slow: resubscribe with since")

    def on_close(self) -> None:
        client = self.client
        if client is None:
            return
        hub_for(self.services).clients.discard(client)
        if client.writer is not None:
            client.writer.cancel()

    async def on_message(self, message: str | bytes) -> None:
        client = self.client
        if client is None:
            return
        try:
            msg = orjson.loads(message)
        except orjson.JSONDecodeError:
            return await self._problem("", "messages are JSON objects")
        if not isinstance(msg, dict):
            return await self._problem("", "messages are JSON objects")
        op = msg.get("op")
        if op == "ping":
            client.offer(
                (None, NOWHERE, frame({"type": "pong", "id": None, "ts": None, "data": {}}))
            )
            return None
        if op not in ("subscribe", "unsubscribe"):
            return await self._problem("op", "one of subscribe, unsubscribe, ping")
        topics = msg.get("topics")
        if not isinstance(topics, list) or not topics or any(t not in TOPICS for t in topics):
            return await self._problem("topics", f"a list of: {', '.join(TOPICS)}")
        if op == "unsubscribe":
            client.topics.difference_update(topics)
            return None
        since = msg.get("since")
        positions = await self._positions(since)
        if positions is None:
            return await self._problem(
                "since", 'an id this server sent, a time, or {"events": id, "logs": id}'
            )
        client.topics.update(topics)
        if positions:
            try:
                await self._catch_up(client, set(topics), positions)
            except Stalled:
                self._stalled(client, " of a resume")
            except (StreamClosedError, WebSocketClosedError):
                pass
        return None

    async def _positions(self, since: Any) -> dict[str, str] | None:
        """Resume points per stream; {} for none; None when ``since`` is malformed.

        A single id or time resumes the events stream exactly and the log stream from
        that instant (the two streams' ids are both times); a client that tracks both
        sends ``{"events": id, "logs": id}`` for an exact resume of each."""
        if since is None:
            return {}
        if isinstance(since, dict):
            if set(since) - {"events", "logs"} or not all(
                isinstance(v, str) and is_stream_id(v) and "-" in v for v in since.values()
            ):
                return None
            return dict(since)
        if not isinstance(since, str) or not since:
            return None
        if is_stream_id(since) and "-" in since:
            return {"events": since, "logs": since}
        try:
            ms = parse_time(since, now=await self.services.redis_now_ms())
        except ValueError:
            return None
        point = f"{max(0, ms - 1)}-18446744073709551615"
        return {"events": point, "logs": point}

    async def _catch_up(self, client: Client, topics: set[str], positions: dict[str, str]) -> None:
        """Replay what the client missed, holding its writer so order is kept. Each
        frame has the same deadline as live ones (``_send`` raises ``Stalled``)."""
        svc = self.services
        async with client.lock:
            sent = 0
            wants_events = topics & {"agents", "tasks", "errors", "alerts"}
            if wants_events and "events" in positions:
                async for entries in read_after(
                    svc.redis, svc.keys.events, positions["events"], chunk=CATCH_UP_CHUNK
                ):
                    for entry_id, etype, data in decode_events(entries):
                        for topic, message in event_messages(entry_id, etype, data):
                            if topic in wants_events:
                                await self._send(message)
                                sent += 1
                        position = (*stream_id(entry_id), LAST)
                        client.floor["events"] = max(client.floor.get("events", NOWHERE), position)
                    if sent >= MAX_CATCH_UP:
                        break
            if "logs" in topics and "logs" in positions:
                async for chunk in svc.logs.forward(LogFilter(), after=positions["logs"]):
                    for entry_id, doc in chunk:
                        await self._send(log_message(entry_id, doc))
                        sent += 1
                        position = (*stream_id(entry_id), LAST)
                        client.floor["logs"] = max(client.floor.get("logs", NOWHERE), position)
                    if sent >= MAX_CATCH_UP:
                        break
            if sent >= MAX_CATCH_UP:
                client.drop("more to replay than a resume may send")

    async def _problem(self, name: str, message: str) -> None:
        """A bad client message is answered, not fatal: the connection stays open."""
        assert self.client is not None
        self.client.offer(
            (
                None,
                NOWHERE,
                frame(
                    {
                        "type": "problem",
                        "id": None,
                        "ts": None,
                        "data": {
                            "title": "Invalid message",
                            "errors": [{"field": name, "message": message}],
                        },
                    }
                ),
            )
        )


default_handlers = [(r"/api/ws", RealtimeHandler)]
