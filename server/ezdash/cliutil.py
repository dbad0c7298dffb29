"""Helpers for commands that work on a deployment's Redis from a shell."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import redis as sync_redis

from .redis_server import RedisServer
from .serve import DataDirBusy, lock_data_dir
from .settings import Settings


@contextlib.asynccontextmanager
async def redis_for(settings: Settings) -> AsyncIterator[str]:
    """REDIS_URL if set; else the embedded Redis of the data directory: the running
    one when ``ezdash serve`` holds it, otherwise started just for this command."""
    if settings.redis_url:
        yield settings.redis_url
        return
    data_dir = Path(settings.data_dir)
    try:
        lock = lock_data_dir(data_dir)
    except DataDirBusy:
        url = (data_dir / "redis.url").read_text().strip()
        probe = sync_redis.Redis.from_url(url)
        try:
            probe.ping()
        finally:
            probe.close()
        yield url
        return
    server = RedisServer(data_dir / "redis", acl_prefix=settings.redis_prefix)
    try:
        yield server.start()
    finally:
        server.stop()
        lock.close()
