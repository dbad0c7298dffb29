"""The control loop: an agent reads its own command stream and obeys each command
(``restart``, ``stop``) in order, at least once (docs/agent-protocol.md).

Apart from the runtime because delivery is its own small protocol: which commands a
previous run of this agent left pending or half done, acting on each once, how a
command's outcome is recorded.  How commands arrive (a Redis stream, heartbeat
answers over HTTP) is the transport's: ``Transport.feed_commands``.  What a command does
(restart, stop) stays the agent's."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

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
        self.tried: dict[str, None] = {}  # commands this process tried to acknowledge

    async def run(self) -> None:
        """Obey this agent's commands, in order, as its transport delivers them."""
        await self.agent.transport.feed_commands(self)

    async def take_up(self, docs: list[dict[str, Any]]) -> None:
        """Handle the agent's commands not yet completed (at start-up on Redis; with
        every heartbeat over HTTP): pending ones are obeyed now, oldest first; one
        acknowledged by a previous run of this agent that ended before finishing it is
        closed (a restart did happen, the process started again; a stop did not end
        in a stopped agent, so it failed)."""
        for doc in sorted(docs, key=lambda d: d["created_at"]):
            cid = doc["id"]
            if doc["status"] == "pending" or cid in self.tried:
                await self.obey(cid, doc["action"], doc["force"])
            elif cid not in self.obeyed:  # acknowledged by a run of this agent now gone
                if doc["action"] == "restart":
                    await self.done(cid, "completed")
                else:
                    await self.done(
                        cid, "failed", "the agent process ended before it stopped; it started again"
                    )

    async def obey(self, cid: str, action: str, force: bool) -> None:
        if self.agent._stopped.is_set():
            return  # a stopped agent obeys nothing: a new process of this id will
        self.tried[cid] = None
        status = await self.agent.transport.update_command(cid, "acknowledged")
        if status == "refused:acknowledged" and cid not in self.obeyed:
            pass  # our acknowledgement went through but its answer was lost: act now
        elif status != "acknowledged":
            return  # already handled, expired or not ours: do nothing
        if cid in self.obeyed:
            return
        self.obeyed[cid] = None
        for seen in (self.obeyed, self.tried):
            while len(seen) > 1000:
                seen.pop(next(iter(seen)))
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
        return "ok", await self.agent.transport.update_command(cid, status, error)
