"""Wake-ups for long-polling agents: one blocking ``XREAD`` per server instance.

An agent on the HTTP gateway asks for a task and waits up to ``wait_s`` seconds for
one.  Holding a Redis connection per waiting agent would tie the number of agents
to the size of the pool, so waiting agents register here instead: the position of
each queue stream they were empty at (what ``task_take`` answers when it finds
nothing), and one reader per process blocks on all of those streams at once and
wakes the agents of a stream when an entry arrives there, wherever it was written
(an instance sees tasks created through any other).  A woken agent takes again;
another may have been quicker, and then it waits again.

A waiter never misses a task: its positions are the streams' ends when its take
found nothing, so an entry added between that take and this wait is after them.
When a new stream has to be watched, the blocked read is ended with
``CLIENT UNBLOCK`` and started again over the new set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError

from .blocking import blocking_client

log = logging.getLogger(__name__)

BLOCK_MS = 5000
"""How long one read blocks when nothing changes (a re-arm ends it sooner)."""


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class QueueWaker:
    """Waiting agents by stream; one reader task while anyone waits."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._blocker = blocking_client(redis, BLOCK_MS / 1000)
        self._waiters: dict[str, dict[asyncio.Future[None], tuple[int, int]]] = {}
        self._reading: dict[str, tuple[int, int]] = {}  # what the current read covers
        self._client_id: int | None = None
        self._task: asyncio.Task[None] | None = None
        self.on_trouble: Callable[[BaseException, str], None] | None = None

    @property
    def waiting(self) -> int:
        return len({f for ws in self._waiters.values() for f in ws})

    async def wait(self, positions: list[tuple[str, str]], timeout_s: float) -> bool:
        """Until a stream has an entry after its position (True) or ``timeout_s``."""
        if timeout_s <= 0:
            return False
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        rearm = False
        for stream, last in positions:
            pos = _id(last)
            seen = self._reading.get(stream)
            if seen is not None and seen > pos:
                woken.set_result(None)  # the reader is already past this agent's view
                break
            self._waiters.setdefault(stream, {})[woken] = pos
            rearm |= seen is None
        try:
            if not woken.done():
                self._ensure_reader(rearm)
            await asyncio.wait_for(asyncio.shield(woken), timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            for stream, _ in positions:
                ws = self._waiters.get(stream)
                if ws is not None:
                    ws.pop(woken, None)
                    if not ws:
                        del self._waiters[stream]

    def _ensure_reader(self, rearm: bool) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._read())
        elif rearm and self._client_id is not None:
            client_id = self._client_id
            asyncio.get_running_loop().create_task(self._unblock(client_id))

    async def _unblock(self, client_id: int) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.redis.execute_command("CLIENT", "UNBLOCK", client_id)  # type: ignore[no-untyped-call]

    async def _read(self) -> None:
        conn: Connection | None = None
        try:
            while True:
                if not self._waiters:
                    # No await between this test and here: a waiter arriving from now
                    # on finds no reader and starts one.
                    self._task, self._reading, self._client_id = None, {}, None
                    break
                if conn is None:
                    conn = await self._connect()
                streams = {s: min(ws.values()) for s, ws in self._waiters.items()}
                for s, pos in streams.items():
                    if s in self._reading and self._reading[s] > pos:
                        streams[s] = self._reading[s]
                self._reading = dict(streams)
                keys = list(streams)
                ids = [f"{ms}-{seq}" for ms, seq in streams.values()]
                try:
                    await conn.send_command("XREAD", "BLOCK", BLOCK_MS, "STREAMS", *keys, *ids)
                    reply = await conn.read_response()
                except (RedisError, OSError) as e:
                    await conn.disconnect()
                    conn = None
                    self._client_id = None
                    if self.on_trouble is not None:
                        self.on_trouble(e, "queue wake-ups")
                    else:
                        log.warning("queue wake-ups: %s", e)
                    await asyncio.sleep(0.5)
                    continue
                # RESP3 answers a map, RESP2 a list of [stream, entries] pairs
                found = reply.items() if isinstance(reply, dict) else (reply or [])
                for stream, entries in found:
                    newest = _id(entries[-1][0])
                    self._reading[stream] = newest
                    for fut, pos in list(self._waiters.get(stream, {}).items()):
                        if newest > pos and not fut.done():
                            fut.set_result(None)
        finally:
            if conn is not None:
                await conn.disconnect()  # a read may be half done: never reuse it
                await self._blocker.connection_pool.release(conn)

    async def _connect(self) -> Connection:
        conn: Connection = await self._blocker.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_command("CLIENT", "ID")
            self._client_id = int(await conn.read_response())
        except BaseException:  # cancelled or failed: the connection is not left open
            await conn.disconnect()
            await self._blocker.connection_pool.release(conn)
            raise
        return conn

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await self._task
        for ws in self._waiters.values():
            for fut in ws:
                if not fut.done():
                    fut.cancel()
        await self._blocker.aclose()
