"""Connections to Redis for the server, the analyst page and the CLI: one pool rule.

(Blocking reads get their own connections: ``store.blocking``.)
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_SOCKET_TIMEOUT_S = 10.0
"""No command on the shared pool blocks (tails have their own connections), so a
reply slower than this means Redis is stuck: the request gets 503, not a hang."""


def make_redis(url: str, max_connections: int, *, decode: bool = True) -> Redis:
    """A client whose pool waits for a free connection instead of failing past the cap
    (redis-py's default asyncio pool raises MaxConnectionsError under bursts)."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=REDIS_CONNECT_TIMEOUT_S * 5,
        decode_responses=decode,
        # A connection idle this long is PINGed before use: after Redis restarts, the
        # pool's stale connections reconnect instead of failing their next request.
        health_check_interval=1,
        socket_keepalive=True,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
    )
    return Redis.from_pool(pool)
