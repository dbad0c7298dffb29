"""Everything a handler needs, made once at start-up and closed at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field

from redis.asyncio import BlockingConnectionPool, Redis

from ..keys import Keys
from ..settings import Settings
from ..store.agents import AgentStore
from ..store.commands import CommandStore
from ..store.scripts import Scripts
from ..store.tasks import TaskStore

log = logging.getLogger("ezdash.services")


def make_redis(url: str, max_connections: int) -> Redis:
    """A client whose pool waits for a free connection instead of failing past the cap
    (redis-py's default asyncio pool raises MaxConnectionsError under bursts)."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=10,
        decode_responses=True,
        health_check_interval=30,
        socket_keepalive=True,
    )
    return Redis.from_pool(pool)


@dataclass
class Services:
    settings: Settings
    redis: Redis
    keys: Keys
    scripts: Scripts
    agents: AgentStore
    tasks: TaskStore
    commands: CommandStore
    instance: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    started: float = field(default_factory=time.time)
    draining: bool = False
    background: list[asyncio.Task[None]] = field(default_factory=list)
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def create(cls, settings: Settings, redis_url: str) -> Services:
        redis = make_redis(redis_url, settings.redis_max_connections)
        keys = Keys(settings.redis_prefix)
        scripts = Scripts(redis)
        return cls(
            settings=settings,
            redis=redis,
            keys=keys,
            scripts=scripts,
            agents=AgentStore(redis, keys, heartbeat_timeout=settings.heartbeat_timeout),
            tasks=TaskStore(redis, keys, scripts, events_maxlen=settings.events_maxlen),
            commands=CommandStore(
                redis,
                keys,
                scripts,
                events_maxlen=settings.events_maxlen,
                ttl_s=settings.command_ttl,
            ),
        )

    async def redis_now_ms(self) -> int:
        sec, usec = await self.redis.time()
        return int(sec) * 1000 + int(usec) // 1000

    def start_background(self) -> None:
        from .maintenance import maintenance_loop

        self.background.append(asyncio.create_task(maintenance_loop(self), name="maintenance"))

    async def close(self) -> None:
        self.closing.set()
        for task in self.background:
            task.cancel()
        for task in self.background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.background.clear()
        await self.redis.aclose()
