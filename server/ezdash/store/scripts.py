"""Loading of the Lua scripts: each is the shared prelude plus its own file, run by EVALSHA."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis

from .batch import ScriptBatcher

NAMES = (
    "agent_heartbeat",
    "agent_purge",
    "authorize",
    "agent_put",
    "alert_fire",
    "alert_resolve",
    "command_create",
    "command_expire",
    "command_purge",
    "command_update",
    "logs_append",
    "metrics_apply",
    "task_cancel",
    "task_create",
    "task_delete",
    "task_finish",
    "task_lease",
    "task_promote",
    "task_requeue",
    "task_retry",
    "task_take",
)


@cache
def source(name: str) -> str:
    """The full text Redis runs for a script (prelude + body); agents in other
    languages load exactly this text (see docs/agent-protocol.md)."""
    lua = resources.files("ezdash") / "lua"
    return (lua / "_lib.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


class Scripts:
    """The project's scripts registered on one client (redis-py reloads on NOSCRIPT).

    Those named in ``batched`` go through a ``ScriptBatcher``: calls made in the same
    event-loop turn share one round trip (the server's agent protocol, where many
    agents take and finish at once; each script is still atomic on its own)."""

    def __init__(self, redis: Redis, batched: frozenset[str] = frozenset()) -> None:
        self._scripts: dict[str, Callable[..., Awaitable[Any]]] = {
            name: redis.register_script(source(name)) for name in NAMES if name not in batched
        }
        self._batched = {name: ScriptBatcher(redis, source(name)) for name in batched}

    async def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        batcher = self._batched.get(name)
        if batcher is not None:
            return await batcher(keys, args)
        return await self._scripts[name](keys=keys, args=args)
