"""Loading of the Lua scripts: each is the shared prelude plus its own file, run by EVALSHA."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis

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
    """The project's scripts registered on one client (redis-py reloads on NOSCRIPT)."""

    def __init__(self, redis: Redis) -> None:
        self._scripts = {name: redis.register_script(source(name)) for name in NAMES}

    async def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self._scripts[name](keys=keys, args=args)
