"""Connections for blocking reads (``XREAD ... BLOCK``), one rule for all of them.

redis-py 8 gives every connection a 5 s socket timeout by default.  A read that
asks Redis to block for 5 s on such a connection races that timeout: whenever
nothing arrives, the client gives up just as Redis is about to answer, logs a
``TimeoutError`` while Redis is perfectly healthy, and whatever arrives at that
moment waits for the next read.  So a blocking read gets a connection of its own
(it must not hold one of a shared pool's while it waits) whose socket timeout is
the block plus a margin: the timeout then only fires when Redis really stopped
answering.  The agent runtime, the server's stream tails and the realtime hub all
make their blocking clients here.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import ConnectionPool, Redis

BLOCK_MARGIN_S = 10.0
"""How much longer than its BLOCK a read may take before the connection is
declared dead: a loaded machine may answer late, a healthy Redis never this late."""


def read_timeout(block_s: float) -> float:
    """The socket timeout of a connection whose reads block up to ``block_s``."""
    return block_s + BLOCK_MARGIN_S


def blocking_client(source: Redis | str, block_s: float) -> Redis:
    """A client of its own for reads that block up to ``block_s`` seconds: the same
    server and options as ``source`` (a client or a URL), a longer socket timeout."""
    timeout = read_timeout(block_s)
    if isinstance(source, str):
        return Redis.from_url(
            source,
            decode_responses=True,
            socket_timeout=timeout,
            socket_keepalive=True,
        )
    pool = source.connection_pool
    kwargs: dict[str, Any] = {**pool.connection_kwargs, "socket_timeout": timeout}
    if "orig_socket_timeout" in kwargs:  # redis-py restores this one after maintenance
        kwargs["orig_socket_timeout"] = timeout
    return Redis.from_pool(ConnectionPool(connection_class=pool.connection_class, **kwargs))
