"""The periodic work of the server that one instance of several does each tick.

Every server instance runs the alert evaluation and the maintenance sweep, but a
tick's work needs doing once, not once per instance.  So each tick an instance tries
to take a short lease in Redis (``SET key instance NX PX``) and only the one that
gets it works.  The lease is neither renewed nor released: it lapses by itself
after 90% of the interval, before the next tick, so no instance keeps the role.
Nothing is handed over when an instance stops, and one that dies or hangs holding
the lease costs at most that tick.  The lease only saves repeated work, it does not
make it exclusive (a tick that runs long overlaps the next holder's): the work must
be safe to run twice, as the alert transitions and the sweep steps are (atomic
scripts).  A Redis error, taking the lease or during the work, skips the tick and is
reported to :class:`~ezdash.store.availability.RedisWatch` (an outage is logged once,
not each tick); the loop goes on and tries again the next tick, until ``closing``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .aio import reraise_if_cancelling
from .keys import Keys
from .settings import Settings
from .store.availability import RedisWatch


class Instance(Protocol):
    """What a periodic engine needs of the server instance it runs in (the server's
    ``Services`` is one; engines name only what they use, never the HTTP layer)."""

    settings: Settings
    redis: Redis
    keys: Keys
    instance: str
    closing: asyncio.Event
    redis_watch: RedisWatch

    async def redis_now_ms(self) -> int: ...


async def leader_loop(
    svc: Instance,
    lease: str,
    interval: float,
    work: Callable[[], Awaitable[object]],
    *,
    skipped: str,
    errors: tuple[type[Exception], ...] = (RedisError,),
) -> None:
    """Every ``interval`` seconds, run ``work`` if this instance takes ``lease``.

    ``errors`` (Redis errors unless told) skip the tick and are reported as
    ``skipped``; any other exception ends the loop."""
    while not svc.closing.is_set():
        try:
            if await svc.redis.set(lease, svc.instance, nx=True, px=int(interval * 900)):
                await work()
        except errors as e:
            reraise_if_cancelling(e)
            svc.redis_watch.trouble(e, skipped)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(svc.closing.wait(), interval)
