"""The control loop: an agent reads its own command stream and obeys each command
(``restart``, ``stop``) in order, at least once (docs/agent-protocol.md).

Apart from the runtime because delivery is its own small protocol: where to resume
reading after Redis trouble, which commands a previous run of this agent left
pending or half done, how a command's outcome is recorded.  What a command does
(restart, stop) stays the agent's."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

from redis.exceptions import RedisError

from ..aio import reraise_if_cancelling

if TYPE_CHECKING:
    from .runtime import Agent

log = logging.getLogger("ezdash.agent")


class CommandInbox:
    """One agent's commands: the loop reading them, and how each one ended."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.obeyed: dict[str, None] = {}  # commands acted on by this process, newest last

    async def run(self) -> None:
        """Read this agent's command stream and obey each command, in order.

        ``last`` only moves past an entry once it was handled: after a Redis error
        (a reconnect, a restart of Redis) the read resumes from there, so no command
        is skipped; one handled twice is refused by its status the second time."""
        blocker = self.agent._blocking_client()
        stream = self.agent.keys.agent_commands(self.agent.id)
        last: str | None = None
        block_ms = int(self.agent.config.block_s * 1000)
        while True:
            try:
                if last is None:
                    last = await self._take_up(stream)
                res = await blocker.xread({stream: last}, count=10, block=block_ms)
                for _, entries in cast(
                    list[tuple[str, list[tuple[str, dict[str, str]]]]], res or []
                ):
                    for entry_id, fields in entries:
                        await self.obey(
                            fields["command"], fields["action"], fields.get("force") == "1"
                        )
                        last = entry_id
            except (RedisError, OSError) as e:
                reraise_if_cancelling(e)
                log.warning(
                    "%s: commands: redis trouble (%s: %s); retrying",
                    self.agent.id,
                    type(e).__name__,
                    e,
                )
                await asyncio.sleep(1.0)

    async def _take_up(self, stream: str) -> str:
        """At start-up: the newest entry of the command stream, to read on from, after
        handling what a previous run of this agent left: commands still pending are
        obeyed now; one acknowledged by a previous run that ended before finishing it
        is closed (a restart did happen, the process started again; a stop did not
        end in a stopped agent, so it failed)."""
        newest = cast(list[Any], await self.agent.redis.xrevrange(stream, "+", "-", count=1))
        last = str(newest[0][0]) if newest else "0-0"
        for doc in sorted(
            await self.agent.commands.pending_for(self.agent.id), key=lambda d: d["created_at"]
        ):
            cid = doc["id"]
            if doc["status"] == "pending":
                await self.obey(cid, doc["action"], doc["force"])
            elif cid not in self.obeyed:  # acknowledged by a run of this agent now gone
                if doc["action"] == "restart":
                    await self.done(cid, "completed")
                else:
                    await self.done(
                        cid, "failed", "the agent process ended before it stopped; it started again"
                    )
        return last

    async def obey(self, cid: str, action: str, force: bool) -> None:
        if self.agent._stopped.is_set():
            return  # a stopped agent obeys nothing: a new process of this id will
        status = await self.agent.commands.update(cid, "acknowledged", agent_id=self.agent.id)
        if status == "refused:acknowledged" and cid not in self.obeyed:
            pass  # our acknowledgement went through but its answer was lost: act now
        elif status != "acknowledged":
            return  # already handled, expired or not ours: do nothing
        if cid in self.obeyed:
            return
        self.obeyed[cid] = None
        while len(self.obeyed) > 1000:
            self.obeyed.pop(next(iter(self.obeyed)))
        self.agent.log(
            "info", f"command received: {action}", command_id=cid, action=action, force=force
        )
        try:
            if action == "restart":
                await self.agent._restart()
            elif action == "stop":
                await self.agent.stop(force=force, command_id=cid)
                return
            else:
                raise ValueError(f"unknown action {action!r}")
        except Exception as e:
            reraise_if_cancelling(e)
            log.exception("%s: %s failed", self.agent.id, action)
            self.agent.log(
                "error",
                f"command {action} failed ({type(e).__name__}: {e})",
                command_id=cid,
                action=action,
                error_type=type(e).__name__,
            )
            self.agent._accepting.set()  # a failed re-initialisation must not park the agent
            self.agent.status = "error"
            await self.done(cid, "failed", f"{type(e).__name__}: {e}")
            await self.agent._publish_quiet()
            return
        await self.done(cid, "completed")

    async def done(self, cid: str, status: str, error: str = "") -> None:
        """Record how a command ended, retrying through Redis trouble (for up to the
        visibility timeout): an outcome that is not written leaves the command
        acknowledged until the server's sweep fails it."""
        try:
            await self.agent._report(
                lambda: self._update(cid, status, error),
            )
        except (RedisError, OSError) as e:
            reraise_if_cancelling(e)
            log.warning("%s: could not record command %s as %s: %s", self.agent.id, cid, status, e)

    async def _update(self, cid: str, status: str, error: str) -> tuple[str, str]:
        return "ok", await self.agent.commands.update(
            cid, status, agent_id=self.agent.id, error=error
        )
