"""Everything a handler needs, made once at start-up and closed at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..alerts.evaluate import alert_loop
from ..alerts.store import AlertStore
from ..analysis.pool import AnalyticsPool, ResultCache
from ..analysis.service import Analytics
from ..keys import Keys
from ..maintenance import maintenance_loop
from ..metrics.pricing import PriceTable, load_price_table
from ..metrics.query import Reader
from ..metrics.recorder import UsageRecorder
from ..metrics.rollup import Tier, parse_tiers
from ..security.apikeys import KeyStore
from ..security.audit import AuditLog
from ..security.ratelimit import Budget, LocalLimiter, budgets
from ..security.secrets import ServerSecrets, load_secrets
from ..security.tokens import TokenService
from ..settings import Settings
from ..store.agents import AgentStore
from ..store.availability import RedisWatch
from ..store.batch import ScriptBatcher
from ..store.commands import CommandStore
from ..store.connect import make_redis
from ..store.logs import LogStore, LogTail
from ..store.scripts import Scripts, source
from ..store.tasks import TaskStore
from ..store.wakeups import QueueWaker
from .stats import RequestStats

if TYPE_CHECKING:
    from .realtime import Hub  # realtime imports the handlers, which import this

log = logging.getLogger("ezdash.services")


AGENT_PROTOCOL_SCRIPTS = frozenset({"task_take", "task_finish", "task_lease", "agent_heartbeat"})
"""The scripts the gateway's agents run many times a second, batched per loop turn."""


class AgentKinds:
    """Each gateway agent's ``kind`` (a dimension of its task outcomes), read from its
    document once a minute at most: finishing a task costs no document read."""

    def __init__(self, ttl_s: float = 60.0, size: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self._kinds: dict[str, tuple[str, float]] = {}

    async def of(self, agents: AgentStore, agent_id: str) -> str:
        now = time.monotonic()
        known = self._kinds.get(agent_id)
        if known is not None and known[1] > now:
            return known[0]
        doc = await agents.document(agent_id)
        kind = str((doc or {}).get("kind") or "")
        if len(self._kinds) >= self.size:
            self._kinds.clear()  # rare: more agents than that in one minute
        self._kinds[agent_id] = (kind, now + self.ttl_s)
        return kind

    def forget(self, agent_id: str) -> None:
        """Its document changed here (a register): read it again next time."""
        self._kinds.pop(agent_id, None)


class RecentKeys:
    """Digests of API keys this instance accepted lately: only those may run reads
    speculatively (see APIHandler._plausible).  Revocation is still checked in Redis
    on every request; this only decides whether to wait for that check first."""

    def __init__(self, ttl_s: float = 60.0, size: int = 10_000) -> None:
        self.ttl = ttl_s
        self.size = size
        self._seen: dict[str, float] = {}

    def remember(self, d: str) -> None:
        if len(self._seen) >= self.size:
            self._seen.pop(next(iter(self._seen)))
        self._seen[d] = time.monotonic() + self.ttl

    def seen(self, d: str) -> bool:
        until = self._seen.get(d)
        return until is not None and until > time.monotonic()

    def forget(self, d: str) -> None:
        self._seen.pop(d, None)


@dataclass
class Services:
    settings: Settings
    redis: Redis
    keys: Keys
    scripts: Scripts
    agents: AgentStore
    tasks: TaskStore
    commands: CommandStore
    alerts: AlertStore
    secrets: ServerSecrets
    api_keys: KeyStore
    tokens: TokenService
    audit: AuditLog
    budgets: dict[str, Budget]
    authorize: ScriptBatcher
    prices: PriceTable
    tiers: tuple[Tier, ...]
    metrics: Reader
    pool: AnalyticsPool
    cache: ResultCache
    analytics: Analytics
    logs: LogStore
    log_tail: LogTail
    waker: QueueWaker
    """Wakes the gateway's long-polling agents (one blocking read per instance)."""
    task_outcomes: UsageRecorder
    """Task outcomes of the gateway's agents into the rollups (an agent on Redis
    records its own): batched as an agent's recorder batches them."""
    agent_kinds: AgentKinds
    redis_watch: RedisWatch
    open_limiter: LocalLimiter
    instance: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    started: float = field(default_factory=time.time)
    draining: bool = False
    background: list[asyncio.Task[None]] = field(default_factory=list)
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    pending: set[asyncio.Task[None]] = field(default_factory=set)
    recent_keys: RecentKeys = field(default_factory=RecentKeys)
    request_stats: RequestStats = field(default_factory=RequestStats)
    deliveries: set[asyncio.Task[None]] = field(default_factory=set)
    hub: Hub | None = None
    """The realtime hub, made by the first WebSocket (``realtime.hub_for``)."""
    agent_sockets: set[Any] = field(default_factory=set)
    """Open gateway WebSockets (``gateway_ws``), closed when the server stops."""

    @classmethod
    def create(cls, settings: Settings, redis_url: str) -> Services:
        redis = make_redis(redis_url, settings.redis_max_connections)
        keys = Keys(settings.redis_prefix)
        scripts = Scripts(redis, batched=AGENT_PROTOCOL_SCRIPTS)
        secrets = load_secrets(settings)
        watch = RedisWatch(redis, keys.probe)
        limits = budgets(settings)
        tiers = parse_tiers(settings.rollup_tiers)
        reader = Reader(redis, make_redis(redis_url, 16, decode=False), keys.metrics)
        pool, cache = AnalyticsPool(settings.analytics_workers), ResultCache()
        prices = load_price_table(settings.prices_file)
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
            alerts=AlertStore(
                redis,
                keys,
                scripts,
                retention_ms=int(settings.alert_retention * 1000),
                events_maxlen=settings.events_maxlen,
            ),
            secrets=secrets,
            api_keys=KeyStore(redis, keys, secrets.key_secret),
            tokens=TokenService(settings, secrets.jwt_secret),
            audit=AuditLog(redis, keys, settings.audit_maxlen, watch=watch),
            budgets=limits,
            authorize=ScriptBatcher(redis, source("authorize")),
            prices=prices,
            tiers=tiers,
            metrics=reader,
            pool=pool,
            cache=cache,
            analytics=Analytics(reader, tiers, pool, cache),
            logs=LogStore(
                redis,
                keys,
                scripts,
                maxlen=settings.log_maxlen,
                retention_ms=int(settings.log_retention * 1000),
            ),
            log_tail=LogTail(redis_url, keys),
            waker=QueueWaker(redis),
            task_outcomes=UsageRecorder(redis, keys, tiers, prices),
            agent_kinds=AgentKinds(),
            redis_watch=watch,
            open_limiter=LocalLimiter(limits["public"]),
        )

    def __post_init__(self) -> None:
        self.log_tail.on_trouble = self.redis_watch.trouble
        self.waker.on_trouble = self.redis_watch.trouble

    async def redis_now_ms(self) -> int:
        sec, usec = await self.redis.time()
        return int(sec) * 1000 + int(usec) // 1000

    async def check_secrets(self) -> None:
        """Refuse to serve with a key-hash secret other instances do not share: every
        key would be rejected here.  The first instance records the fingerprint."""
        mine = self.secrets.fingerprint()
        await self.redis.set(self.keys.secret_fingerprint, mine, nx=True)
        theirs = await self.redis.get(self.keys.secret_fingerprint)
        if theirs != mine:
            raise RuntimeError(
                "this instance's EZ_KEY_SECRET differs from the one other instances on this "
                "Redis use; set the same EZ_KEY_SECRET (and EZ_JWT_SECRET) everywhere"
            )

    async def bootstrap_admin_key(self) -> str | None:
        """EZ_ADMIN_KEY becomes an admin key; with none configured and no key at all,
        create one and return it so it can be printed once."""
        s = self.settings
        if s.admin_key is not None:
            await self.api_keys.ensure(
                s.admin_key.get_secret_value(), "EZ_ADMIN_KEY", ["admin"], "key_admin_env"
            )
            return None
        if await self.api_keys.count() == 0:
            key, _ = await self.api_keys.create(
                "bootstrap admin", ["admin"], created_by="first start"
            )
            return key
        return None

    def start_background(self) -> None:
        self.background.append(asyncio.create_task(maintenance_loop(self), name="maintenance"))
        self.background.append(asyncio.create_task(alert_loop(self), name="alerts"))

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a write the response need not wait for (audit entries); close() waits."""
        task = asyncio.create_task(work)
        self.pending.add(task)
        task.add_done_callback(self._done)

    async def _settle(self, tasks: set[asyncio.Task[None]], what: str) -> None:
        """Wait for ``tasks`` to end, at most the shutdown grace: one that ignores its
        cancellation (a Redis client can turn it into a connection error that a loop
        then retries) is named in the log and left, not waited on for ever.  Unlike
        ``suppress(CancelledError)`` around an await, this never swallows the
        cancellation of the task that is closing."""
        if not tasks:
            return
        grace = self.settings.shutdown_grace
        done, left = await asyncio.wait(tasks, timeout=grace)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("%s %s failed: %r", what, task.get_name(), task.exception())
        for task in left:
            log.error(
                "%s %s did not end within %gs of shutdown; left", what, task.get_name(), grace
            )

    def _done(self, task: asyncio.Task[None]) -> None:
        self.pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background write failed: %r", task.exception())

    async def close(self) -> None:
        await self._settle(set(self.pending), "pending write")
        await self.audit.close(self.settings.shutdown_grace)
        await self.redis_watch.close()
        self.closing.set()
        for sock in list(self.agent_sockets):
            sock.close(1001, "server stopping: reconnect")
        for task in self.background:
            task.cancel()
        await self._settle(set(self.background), "background task")
        self.background.clear()
        for task in list(self.deliveries):
            task.cancel()
        await self._settle(set(self.deliveries), "delivery")
        if self.hub is not None:
            await self.hub.close()
        await self.log_tail.close()
        await self.waker.close()
        with contextlib.suppress(RedisError, OSError):  # down: the counts are lost
            await self.task_outcomes.close()
        await self.metrics.raw.aclose()
        await asyncio.to_thread(self.pool.close)
        await self.redis.aclose()
