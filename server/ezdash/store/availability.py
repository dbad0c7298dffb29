"""Whether Redis can serve us now, as one object per process.

Requests that fail because Redis is away are answered 503 (``api.errors``); this
watch is what they report to. It turns a flood of identical failures into one log
line when the outage starts and one when it ends, and it finds the end by itself:
while Redis is away it probes once a second with a small write (a PING would
pass while Redis is out of memory or read-only, which refuse only writes).
Anything that must wait for Redis to return (the audit buffer) waits on ``back``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("ezdash.redis")

PROBE_INTERVAL_S = 1.0
_UNAVAILABLE_REPLIES = ("MISCONF", "NOREPLICAS", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN")


def redis_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` says Redis cannot serve now (down, loading, read-only, out of
    memory, refusing writes), as opposed to a bug in how we called it."""
    if isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError):
        return True  # includes BusyLoadingError, MaxConnectionsError, pool timeouts
    if isinstance(exc, redis_errors.ReadOnlyError | redis_errors.OutOfMemoryError):
        return True
    if isinstance(exc, redis_errors.ResponseError):
        return str(exc).startswith(_UNAVAILABLE_REPLIES)
    return isinstance(exc, ConnectionRefusedError | ConnectionResetError | BrokenPipeError)


class RedisWatch:
    def __init__(self, redis: Redis, probe_key: str, interval_s: float = PROBE_INTERVAL_S) -> None:
        self.redis = redis
        self.probe_key = probe_key
        self.interval = interval_s
        self.up = True
        self.back = asyncio.Event()
        self.back.set()
        self.outages = 0
        self.refused = 0
        """Requests that failed on Redis during the current (or last) outage."""
        self._since = 0.0
        self._back_at = -math.inf
        self._probe: asyncio.Task[None] | None = None

    def settled(self, seconds: float) -> bool:
        """Up, and for at least ``seconds`` since the last outage ended: long enough
        for agents to have heartbeated and renewed their leases again, so their
        silence during the outage is not taken for death."""
        return self.up and time.monotonic() - self._back_at >= seconds

    def failed(self, exc: BaseException) -> None:
        """A request (or a background loop) could not be served because of Redis."""
        self.refused += 1
        if not self.up:
            return
        self.up = False
        self.back.clear()
        self.outages += 1
        self._since = time.monotonic()
        log.warning(
            "redis unavailable (%s: %s); answering 503 until it is back",
            type(exc).__name__,
            str(exc)[:200],
        )
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(
                self._wait_for_redis(), name="redis-probe"
            )

    def trouble(self, exc: BaseException, what: str) -> None:
        """A background loop's Redis error: an outage is reported once (see ``failed``),
        anything else is logged as the loop's own problem."""
        if redis_unavailable(exc):
            self.failed(exc)
        else:
            log.warning("%s: %s", what, exc)

    async def _wait_for_redis(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await asyncio.wait_for(
                    self.redis.set(self.probe_key, "1", px=10_000), self.interval
                )
            except (RedisError, OSError, TimeoutError):
                continue
            self.up = True
            self._back_at = time.monotonic()
            self.back.set()
            log.warning(
                "redis is back after %.1f s (%d requests refused meanwhile)",
                time.monotonic() - self._since,
                self.refused,
            )
            self.refused = 0
            return

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
