"""The agent's operations straight on Redis: the same Lua scripts the server runs.

For agents inside the trusted network, which hold Redis credentials.  Blocking
reads (waiting for a task, for a command) get connections of their own
(``store.blocking``: a socket timeout longer than the block) so a long XREAD never
holds up a heartbeat and never times out while Redis is healthy.

Commands are read from the agent's own stream: the loop resumes from the last
entry it handled after any Redis trouble, so none is skipped, and at start-up it
takes up what a previous run of this agent left pending."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..aio import reraise_if_cancelling
from ..keys import Keys
from ..metrics.pricing import PriceTable
from ..metrics.recorder import UsageRecorder
from ..metrics.rollup import parse_tiers
from ..store.blocking import blocking_client
from ..store.commands import CommandStore
from ..store.logs import LogStore
from ..store.scripts import Scripts
from ..store.tasks import Delivery, TaskStore
from .config import AgentConfig
from .logs import LogRecorder

if TYPE_CHECKING:
    from .control import CommandInbox

log = logging.getLogger("ezdash.agent")


class RedisTransport:
    name = "redis"
    can_requeue = True

    def __init__(
        self, agent_id: str, config: AgentConfig, *, url: str | None, redis: Redis | None
    ) -> None:
        self.agent_id = agent_id
        self.config = config
        self.redis: Redis = redis or Redis.from_url(url or "", decode_responses=True)
        self._owns_redis = redis is None
        self.keys = Keys(config.prefix)
        self.scripts = Scripts(self.redis)
        self.tasks = TaskStore(
            self.redis, self.keys, self.scripts, events_maxlen=config.events_maxlen
        )
        self.commands = CommandStore(
            self.redis, self.keys, self.scripts, events_maxlen=config.events_maxlen, ttl_s=60
        )
        self._blocking: dict[int, Redis] = {}
        self._positions: dict[int, list[tuple[str, str]]] = {}  # per slot: what to wait on

    def _blocker(self, slot: int) -> Redis:
        """One blocking connection per loop that blocks (work slots; -1 for commands)."""
        if slot not in self._blocking:
            self._blocking[slot] = blocking_client(self.redis, self.config.block_s)
        return self._blocking[slot]

    # -- recorders ------------------------------------------------------------------
    def usage_recorder(self, prices: PriceTable) -> UsageRecorder:
        return UsageRecorder(
            self.redis,
            self.keys,
            parse_tiers(self.config.rollup_tiers),
            prices,
            flush_every_s=self.config.usage_flush_s,
        )

    def log_recorder(self) -> LogRecorder:
        cfg = self.config
        store = LogStore(
            self.redis,
            self.keys,
            self.scripts,
            maxlen=cfg.log_maxlen,
            retention_ms=int(cfg.log_retention * 1000),
        )
        return LogRecorder(
            store,
            self.agent_id,
            flush_every_s=cfg.log_flush_s,
            max_batch=cfg.log_batch,
            max_buffer=cfg.log_buffer,
        )

    # -- the agent ------------------------------------------------------------------
    async def now_ms(self) -> int:
        sec, usec = await self.redis.time()
        return int(sec) * 1000 + int(usec) // 1000

    async def register(self, doc: dict[str, Any]) -> None:
        await self.scripts.run(
            "agent_put",
            [self.keys.agents],
            [self.keys.base, self.agent_id, orjson.dumps(doc).decode(), self.config.events_maxlen],
        )

    async def heartbeat(self, doc: dict[str, Any], held: list[Delivery]) -> list[str]:
        alive = await self.scripts.run(
            "agent_heartbeat", [self.keys.heartbeats], [self.keys.base, self.agent_id]
        )
        if not alive:
            await self.register(doc)  # the registry was wiped: register again
        return [d.id for d in held if not await self.tasks.lease(d, self.agent_id)]

    async def maintain(self, queues: list[str], visibility_timeout: float) -> None:
        for queue in queues:
            await self.tasks.reclaim(queue, self.agent_id, visibility_timeout)
        await self.tasks.promote_due()

    # -- tasks ----------------------------------------------------------------------
    async def take(self, slot: int, queues: list[str]) -> Delivery | None:
        got = await self.tasks.take(self.agent_id, queues)
        if isinstance(got, Delivery):
            return got
        self._positions[slot] = got  # empty: the script stopped early on stale entries
        return None

    async def wait(self, slot: int, block_s: float) -> None:
        """Block until something new arrives on the streams the last take saw."""
        positions = self._positions.pop(slot, [])
        if positions:
            await self._blocker(slot).xread(dict(positions), count=1, block=int(block_s * 1000))

    async def finish(
        self,
        d: Delivery,
        *,
        result: Any,
        error: tuple[str, str] | None,
        retryable: bool,
        backoff_s: float,
    ) -> tuple[str, str]:
        return await self.tasks.finish(
            d, self.agent_id, result=result, error=error, retryable=retryable, backoff_s=backoff_s
        )

    async def abandon(self, d: Delivery) -> str:
        return await self.tasks.abandon(d, self.agent_id)

    # -- commands -------------------------------------------------------------------
    async def update_command(self, cid: str, status: str, error: str = "") -> str:
        return await self.commands.update(cid, status, agent_id=self.agent_id, error=error)

    async def feed_commands(self, inbox: CommandInbox) -> None:
        """Read this agent's command stream and obey each command, in order.

        ``last`` only moves past an entry once it was handled: after a Redis error
        (a reconnect, a restart of Redis) the read resumes from there, so no command
        is skipped; one handled twice is refused by its status the second time."""
        blocker = self._blocker(-1)
        stream = self.keys.agent_commands(self.agent_id)
        last: str | None = None
        block_ms = int(self.config.block_s * 1000)
        while True:
            try:
                if last is None:
                    last = await self._take_up(inbox, stream)
                res = await blocker.xread({stream: last}, count=10, block=block_ms)
                for _, entries in cast(
                    list[tuple[str, list[tuple[str, dict[str, str]]]]], res or []
                ):
                    for entry_id, fields in entries:
                        await inbox.obey(
                            fields["command"], fields["action"], fields.get("force") == "1"
                        )
                        last = entry_id
            except (RedisError, OSError) as e:
                reraise_if_cancelling(e)
                log.warning(
                    "%s: commands: redis trouble (%s: %s); retrying",
                    self.agent_id,
                    type(e).__name__,
                    e,
                )
                await asyncio.sleep(1.0)

    async def _take_up(self, inbox: CommandInbox, stream: str) -> str:
        """The newest entry of the command stream, to read on from, after handling
        the commands a previous run of this agent left (``CommandInbox.take_up``)."""
        newest = cast(list[Any], await self.redis.xrevrange(stream, "+", "-", count=1))
        last = str(newest[0][0]) if newest else "0-0"
        await inbox.take_up(await self.commands.pending_for(self.agent_id))
        return last

    async def close(self) -> None:
        while self._blocking:
            await self._blocking.popitem()[1].aclose()
        if self._owns_redis:
            await self.redis.aclose()
