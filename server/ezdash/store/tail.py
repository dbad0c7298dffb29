"""One blocking ``XREAD`` per server instance on a stream, fanned out to live readers.

Used for the log stream (SSE, WebSocket ``logs``) and the events stream (WebSocket
``agents``/``tasks``/``errors``): however many clients watch, Redis sees one reader
per instance, and every instance sees every entry whoever wrote it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .blocking import blocking_client

log = logging.getLogger(__name__)

T = TypeVar("T")
BLOCK_MS = 2000
"""How long one read waits for new entries (its connection's socket timeout is longer:
``store.blocking``)."""


class StreamTail(Generic[T]):
    """Each reader has a bounded queue. A reader that falls ``queue_size`` items
    behind is sent ``None`` and dropped: it resumes from Redis with the last id it
    got, so a slow client costs the server bounded memory and still loses nothing.
    ``decode`` turns a batch of raw ``(id, fields)`` entries into items (an item's
    first element must be its entry id).
    """

    def __init__(
        self,
        redis_url: str,
        key: str,
        decode: Callable[[list[Any]], list[T]],
        *,
        queue_size: int = 2000,
    ) -> None:
        self.redis_url = redis_url
        self.key = key
        self.decode = decode
        self.queue_size = queue_size
        self.readers: set[asyncio.Queue[T | None]] = set()
        self.position = "0-0"
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.on_trouble: Callable[[BaseException, str], None] | None = None
        """Where Redis errors go (the server's RedisWatch); logged when unset."""

    async def subscribe(self, queue_size: int | None = None) -> asyncio.Queue[T | None]:
        """A queue of every entry appended from now on (after this returns)."""
        queue: asyncio.Queue[T | None] = asyncio.Queue(queue_size or self.queue_size)
        self.readers.add(queue)
        await self.start()
        return queue

    async def start(self) -> None:
        if self._task is None or self._task.done():
            self._ready.clear()
            self._task = asyncio.create_task(self._run(), name=f"tail:{self.key}")
        await self._ready.wait()

    def unsubscribe(self, queue: asyncio.Queue[T | None]) -> None:
        self.readers.discard(queue)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def _run(self) -> None:
        redis = blocking_client(self.redis_url, BLOCK_MS / 1000)
        started = False
        try:
            while True:
                try:
                    if not started:
                        newest = await redis.xrevrange(self.key, "+", "-", count=1)
                        self.position = str(newest[0][0]) if newest else "0-0"
                        started = True
                    self._ready.set()
                    while True:
                        reply = cast(
                            list[Any],
                            await redis.xread({self.key: self.position}, block=BLOCK_MS),
                        )
                        if not reply:
                            continue
                        entries = cast(list[Any], reply[0][1])
                        self.position = str(entries[-1][0])
                        self.fan_out(self.decode(entries))
                except (RedisError, OSError) as e:
                    if self.on_trouble is not None:
                        self.on_trouble(e, f"tail of {self.key}")
                    else:
                        log.warning("tail of %s: redis trouble (%s); retrying", self.key, e)
                    await asyncio.sleep(1.0)
        finally:
            await redis.aclose()

    def fan_out(self, items: list[T]) -> None:
        if not items:
            return
        for queue in list(self.readers):
            try:
                for item in items:
                    queue.put_nowait(item)
            except asyncio.QueueFull:
                self.readers.discard(queue)
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()  # room for the sign-off
                queue.put_nowait(None)


async def read_after(
    redis: Redis, key: str, after: str, *, end: str = "+", chunk: int = 500
) -> AsyncIterator[list[Any]]:
    """Raw entries of ``key`` after ``after`` (exclusive) up to ``end``, oldest first,
    one chunk per read: how every reader catches up without loading a range whole."""
    lower = f"({after}" if after not in ("-", "0", "0-0") else "-"
    while True:
        entries = cast(list[Any], await redis.xrange(key, lower, end, count=chunk))
        if not entries:
            return
        yield entries
        if len(entries) < chunk:
            return
        lower = f"({entries[-1][0]!s}"
