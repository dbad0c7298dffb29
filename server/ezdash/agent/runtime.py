"""One agent process: register, heartbeat, take tasks, report, obey commands.

Three loops run side by side: *work* (take a task, run the handler, report),
*pulse* (heartbeat, renew the leases of running tasks, notice cancellations,
reclaim deliveries of dead agents), and *control* (read this agent's command
stream: ``agent.control``).  Blocking Redis reads get their own connections (``store.blocking``: a
socket timeout longer than the block) so a long XREAD never holds up a heartbeat
and never times out while Redis is healthy.  Each loop is supervised: one that
fails unexpectedly is logged and started again, so an agent never goes on
heartbeating while deaf to its commands.

Commands are delivered at least once: the control loop resumes from the last
entry it handled after any Redis trouble, an entry whose handling failed is read
again, and at start-up the agent takes up the commands still pending for it.

Usage and log entries are buffered and written in batches by background flushers
(``metrics.recorder``, ``agent.logs``), so a handler never waits on Redis to report
a call or write a line.

This module is the agent's life and its loops; beside it are what the agent is
configured with (``agent.config``), what a handler sees (``agent.context``) and the
command stream's delivery (``agent.control``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import __version__
from ..aio import reraise_if_cancelling
from ..ids import AGENT_ID
from ..keys import Keys
from ..metrics.events import UsageEvent
from ..metrics.pricing import PriceTable, load_price_table
from ..metrics.recorder import UsageRecorder
from ..metrics.rollup import parse_tiers
from ..store.blocking import blocking_client
from ..store.commands import CommandStore
from ..store.logs import LogStore
from ..store.scripts import Scripts
from ..store.tasks import Delivery, TaskStore
from ..timeutil import now_ms
from .config import AgentConfig, PermanentError
from .context import Handler, Hook, TaskContext, log_outcome
from .control import CommandInbox
from .logs import LogHandler, LogRecorder, Scope, current_scope

log = logging.getLogger("ezdash.agent")


@functools.cache
def _prices() -> PriceTable:
    """The shipped price table, loaded once per process (agents price at ingest too,
    so EZ_PRICES_FILE must name the same file on agents and servers)."""
    return load_price_table(
        Path(os.environ["EZ_PRICES_FILE"]) if os.environ.get("EZ_PRICES_FILE") else None
    )


class Agent:
    def __init__(
        self,
        agent_id: str,
        handler: Handler,
        *,
        redis_url: str | None = None,
        redis: Redis | None = None,
        config: AgentConfig | None = None,
        on_restart: Hook | None = None,
    ) -> None:
        if not AGENT_ID.match(agent_id):
            raise ValueError("agent ids are 1-128 characters of A-Z a-z 0-9 . _ : -")
        if redis is None and redis_url is None:
            raise ValueError("give redis_url or redis")
        self.id = agent_id
        self.handler = handler
        self.config = config or AgentConfig()
        self.config.check()  # again: a config may have been changed since it was made
        self.on_restart = on_restart
        self._url = redis_url
        self.redis: Redis = redis or Redis.from_url(redis_url or "", decode_responses=True)
        self._owns_redis = redis is None
        self.keys = Keys(self.config.prefix)
        scripts = Scripts(self.redis)
        self.tasks = TaskStore(
            self.redis, self.keys, scripts, events_maxlen=self.config.events_maxlen
        )
        self.commands = CommandStore(
            self.redis, self.keys, scripts, events_maxlen=self.config.events_maxlen, ttl_s=60
        )
        self.recorder: UsageRecorder | None = None
        if self.config.record_usage:
            self.recorder = UsageRecorder(
                self.redis,
                self.keys,
                parse_tiers(self.config.rollup_tiers),
                _prices(),
                flush_every_s=self.config.usage_flush_s,
            )
        self.log_recorder: LogRecorder | None = None
        if self.config.record_logs:
            self.log_recorder = LogRecorder(
                LogStore(
                    self.redis,
                    self.keys,
                    scripts,
                    maxlen=self.config.log_maxlen,
                    retention_ms=int(self.config.log_retention * 1000),
                ),
                self.id,
                flush_every_s=self.config.log_flush_s,
                max_batch=self.config.log_batch,
                max_buffer=self.config.log_buffer,
            )
        self.log_handler: LogHandler | None = None
        self.status = "starting"
        self.restarts = 0
        self.started_at = now_ms()
        self.running: dict[str, tuple[Delivery, asyncio.Task[Any]]] = {}
        self._accepting = asyncio.Event()
        self._stopped = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._forcing = False
        self._killed = False
        self._active = 0  # work slots taking or executing a task
        self._idle = asyncio.Event()
        self._idle.set()
        self._blocking: list[Redis] = []
        self.completed = 0
        self._inbox = CommandInbox(self)

    # -- the agent's own document -------------------------------------------------
    def document(self) -> dict[str, Any]:
        current = next(iter(self.running), None)
        cfg = self.config
        return {
            "id": self.id,
            "name": cfg.name or self.id,
            "kind": cfg.kind,
            "status": self.status,
            "model": cfg.model,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "current_task": current,
            "started_at": self.started_at,
            "restarts": self.restarts,
            "tags": cfg.tags,
            "queues": cfg.queues,
            "concurrency": cfg.concurrency,
        }

    async def publish(self, status: str | None = None) -> None:
        if status is not None:
            self.status = status
        await self.tasks.scripts.run(
            "agent_put",
            [self.keys.agents],
            [
                self.keys.base,
                self.id,
                orjson.dumps(self.document()).decode(),
                self.config.events_maxlen,
            ],
        )

    # -- usage --------------------------------------------------------------------
    def record_usage(
        self,
        *,
        model: str,
        provider: str,
        input_tokens: int,
        output_tokens: int,
        latency_ms: float,
        cached_tokens: int = 0,
        cache_creation_tokens: int = 0,
        reasoning_tokens: int = 0,
        status: str = "ok",
        error_type: str | None = None,
        cost_usd: float | None = None,
        task_id: str | None = None,
        queue: str = "",
    ) -> None:
        """Record one LLM call; written with others in a batch within a second.
        Invalid usage raises pydantic's ValidationError at once, in the caller."""
        if self.recorder is None:
            return
        event = UsageEvent.model_validate(
            {
                "ts": time.time(),
                "agent_id": self.id,
                "task_id": task_id,
                "model": model,
                "provider": provider,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cached_tokens": cached_tokens,
                "cache_creation_tokens": cache_creation_tokens,
                "reasoning_tokens": reasoning_tokens,
                "latency_ms": latency_ms,
                "status": status,
                "error_type": error_type,
                "cost_usd": cost_usd,
            },
            strict=False,
        )
        self.recorder.record(event, kind=self.config.kind, queue=queue)

    # -- logs ---------------------------------------------------------------------
    def log(self, level: str | int, message: str, /, **fields: Any) -> None:
        """Write an agent-level log entry (no task id); returns at once. For a line
        about a task use ``ctx.log``/``ctx.info``, which adds the task id."""
        self._log(level, message, None, fields)

    def _log(
        self, level: str | int, message: str, task_id: str | None, fields: dict[str, Any]
    ) -> None:
        if self.log_recorder is not None:
            self.log_recorder.log(level, message, task_id=task_id, fields=fields)

    def _attach_logging(self) -> None:
        if self.log_recorder is None or not self.config.capture_logging:
            return
        self.log_handler = LogHandler(self, self.config.capture_level)
        for name in self.config.capture_loggers:
            logging.getLogger(name).addHandler(self.log_handler)

    def _detach_logging(self) -> None:
        if self.log_handler is None:
            return
        for name in self.config.capture_loggers:
            logging.getLogger(name).removeHandler(self.log_handler)
        self.log_handler = None

    # -- lifecycle ------------------------------------------------------------------
    async def run(self) -> None:
        """Run until stopped by a command or by ``stop()``."""
        self.started_at = await self._redis_now()
        await self.publish("starting")
        self._accepting.set()
        await self.publish("idle")
        # Everything started from here (loops, hooks, handlers) logs as this agent.
        token = (
            current_scope.set(Scope(self.log_recorder, self.id))
            if self.log_recorder is not None
            else None
        )
        self._attach_logging()
        cfg = self.config
        self.log(
            "info",
            f"agent started ({cfg.kind}, queues {', '.join(cfg.queues)})",
            kind=cfg.kind,
            queues=cfg.queues,
            concurrency=cfg.concurrency,
            version=__version__,
            host=socket.gethostname(),
            pid=os.getpid(),
        )
        loops: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = [
            (f"work{i}", functools.partial(self._work, i)) for i in range(cfg.concurrency)
        ]
        loops += [("pulse", self._pulse), ("control", self._inbox.run)]
        self._loops = [
            asyncio.create_task(self._supervised(name, loop), name=f"{self.id}:{name}")
            for name, loop in loops
        ]
        try:
            await self._stopped.wait()
        finally:
            await self._shutdown_loops()
            if token is not None:
                current_scope.reset(token)

    async def _supervised(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a loop for the agent's whole life: each loop handles the Redis trouble it
        expects, and anything else it did not is logged and the loop started again
        (after a pause, so a bug cannot spin)."""
        while not self._stopped.is_set():
            try:
                await loop()
                return
            except Exception as e:
                reraise_if_cancelling(e)  # a cancellation redis-py turned into an error
                log.exception("%s: the %s loop failed; starting it again", self.id, name)
                self.log("error", f"the agent's {name} loop failed and was restarted", loop=name)
                await asyncio.sleep(1.0)

    async def _redis_now(self) -> int:
        """The Redis clock, which every agent and server shares."""
        sec, usec = await self.redis.time()
        return int(sec) * 1000 + int(usec) // 1000

    async def stop(self, *, force: bool = False, command_id: str | None = None) -> None:
        """Graceful: finish running tasks first.  Forced: give them back to their queues.
        A stop command is completed only once the agent really is stopped."""
        self.status = "stopping"
        self._accepting.clear()
        self._forcing = force
        self.log(
            "info",
            "agent stopping"
            + (" (forced: running tasks go back to their queues)" if force else ""),
            force=force,
            running=len(self.running),
            **({"command_id": command_id} if command_id else {}),
        )
        await self._publish_quiet()
        await self._drain(force=force)
        self.log("info", "agent stopped", completed=self.completed)
        with contextlib.suppress(RedisError, OSError):
            await self._report(lambda: self._publish_status("stopped"))
        if command_id:
            await self._inbox.done(command_id, "completed")
        self._stopped.set()

    async def kill(self) -> None:
        """Vanish without a word, as a crashed process would (for tests and demos)."""
        self._killed = True
        self._accepting.clear()
        for loop in self._loops:
            loop.cancel()
        for _, task in list(self.running.values()):
            task.cancel()
        self._stopped.set()
        await self._shutdown_loops()

    async def _shutdown_loops(self) -> None:
        me = asyncio.current_task()
        loops = [t for t in self._loops if t is not me]
        for t in loops:
            t.cancel()
        for t in loops:
            with contextlib.suppress(asyncio.CancelledError, RedisError):
                await t
        for client in self._blocking:
            await client.aclose()
        self._blocking.clear()
        self._detach_logging()
        if self.recorder is not None and self._killed:
            await self.recorder.abandon()
        elif self.recorder is not None:
            try:
                await self.recorder.close()  # what was recorded is written before we go
            except (RedisError, OSError) as e:
                log.warning("%s: usage not written at shutdown: %s", self.id, e)
        if self.log_recorder is not None and self._killed:
            await self.log_recorder.abandon()
        elif self.log_recorder is not None:
            try:
                await self.log_recorder.close()
            except (RedisError, OSError) as e:
                log.warning(
                    "%s: %d log entries not written at shutdown: %s",
                    self.id,
                    self.log_recorder.pending,
                    e,
                )
        if self._owns_redis:
            await self.redis.aclose()

    async def _drain(self, *, force: bool) -> None:
        if force:
            for tid, (d, task) in list(self.running.items()):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await self._report(lambda d=d: self._abandon(d))  # type: ignore[misc]
                self.running.pop(tid, None)
                self._log(
                    "warning",
                    "task handed back to its queue (forced stop)",
                    tid,
                    {"attempt": d.attempt},
                )
        await self._idle.wait()  # every taken task reported

    def _blocking_client(self) -> Redis:
        client = blocking_client(self.redis, self.config.block_s)
        self._blocking.append(client)
        return client

    # -- work -----------------------------------------------------------------------
    async def _work(self, slot: int) -> None:
        blocker = self._blocking_client()
        while True:
            await self._accepting.wait()
            self._active += 1
            self._idle.clear()
            try:
                got = await self.tasks.take(self.id, self.config.queues)
                if isinstance(got, Delivery):
                    await self._execute(got)
                    continue
            except (RedisError, OSError) as e:
                reraise_if_cancelling(e)
                await self._trouble(e)
                continue
            finally:
                self._active -= 1
                if self._active == 0:
                    self._idle.set()
            if not got:
                continue  # the take script stopped early on stale entries: go again
            try:
                await blocker.xread(dict(got), count=1, block=int(self.config.block_s * 1000))
            except (RedisError, OSError) as e:
                reraise_if_cancelling(e)
                await self._trouble(e)

    async def _trouble(self, e: BaseException) -> None:
        """Redis is unreachable or refusing: say so, wait a little, carry on."""
        log.warning("%s: redis trouble (%s: %s); retrying", self.id, type(e).__name__, e)
        self.status = "error"
        await asyncio.sleep(1.0)
        await self._publish_quiet()

    async def _publish_quiet(self) -> None:
        """Publish the current status; failing to is never a reason to stop working.
        While stopping or restarting that status stands; otherwise busy or idle."""
        if self._accepting.is_set():
            self.status = "busy" if self.running else "idle"
        try:
            await self.publish()
        except (RedisError, OSError) as e:
            reraise_if_cancelling(e)
            log.warning("%s: could not publish status: %s", self.id, e)

    async def _report(self, call: Callable[[], Awaitable[tuple[str, str]]]) -> tuple[str, str]:
        """Report an outcome, retrying through a Redis outage for up to the visibility
        timeout; after that the delivery is reclaimed and the task runs again."""
        deadline = asyncio.get_running_loop().time() + self.config.visibility_timeout
        while True:
            try:
                return await call()
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                reraise_if_cancelling(e)
                if asyncio.get_running_loop().time() > deadline:
                    raise
                log.warning("%s: could not report yet (%s); retrying", self.id, e)
                await asyncio.sleep(0.5)

    async def _execute(self, d: Delivery) -> None:
        if self._forcing:  # taken just as a forced stop began: hand it straight back
            await self._report(lambda: self._abandon(d))
            return
        began = time.monotonic()
        ctx = TaskContext(d.id, d.type, d.queue, d.payload, d.attempt, d.max_attempts, self)
        ctx.info(
            f"task started ({d.type}, attempt {d.attempt}/{d.max_attempts})",
            type=d.type,
            queue=d.queue,
            attempt=d.attempt,
            max_attempts=d.max_attempts,
        )
        context = contextvars.copy_context()
        if self.log_recorder is not None:  # logging calls in the handler carry the task id
            context.run(current_scope.set, Scope(self.log_recorder, self.id, d.id))
        task: asyncio.Task[Any] = asyncio.create_task(
            self.handler(ctx), name=f"{self.id}:{d.id}", context=context
        )
        self.running[d.id] = (d, task)
        error: tuple[str, str] | None = None
        retryable = True
        result: Any = None
        try:
            await self._publish_quiet()
            try:
                result = await task
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if not task.cancelled() or (me is not None and me.cancelling()):
                    raise  # we are being cancelled ourselves
                if self._forcing:
                    return  # the forced stop gives it back to its queue
                # cancelled through the API or its lease was lost: the report is
                # answered 'stale' and releases the delivery
                error = ("Cancelled", "handler cancelled")
            except PermanentError as e:
                error, retryable = (type(e).__name__, str(e)), False
            except Exception as e:
                error = (type(e).__name__, str(e) or repr(e))
            backoff = 0.0
            if error is not None:
                backoff = min(
                    self.config.retry_backoff_s * 2 ** (d.attempt - 1),
                    self.config.retry_backoff_max_s,
                ) * random.uniform(0.8, 1.2)
            outcome, status = await self._report(
                lambda: self.tasks.finish(
                    d, self.id, result=result, error=error, retryable=retryable, backoff_s=backoff
                )
            )
            log_outcome(ctx, outcome, status, error, backoff, time.monotonic() - began)
            if outcome == "stale":
                log.info("%s: result for %s discarded: task is now %s", self.id, d.id, status)
            elif self.recorder is not None and status in ("succeeded", "failed", "dead"):
                self.recorder.record_task(
                    int(time.time() * 1000),
                    agent=self.id,
                    kind=self.config.kind,
                    queue=d.queue,
                    ok=status == "succeeded",
                    duration_ms=(time.monotonic() - began) * 1000,
                )
            self.completed += 1
        finally:
            self.running.pop(d.id, None)
        await self._publish_quiet()

    async def _abandon(self, d: Delivery) -> tuple[str, str]:
        return "ok", await self.tasks.abandon(d, self.id)

    # -- pulse ----------------------------------------------------------------------
    async def _pulse(self) -> None:
        cfg = self.config
        beats = 0
        while True:
            await asyncio.sleep(cfg.heartbeat_interval)
            beats += 1
            try:
                alive = await self.tasks.scripts.run(
                    "agent_heartbeat", [self.keys.heartbeats], [self.keys.base, self.id]
                )
                if not alive:
                    await self.publish()  # the registry was wiped: register again
                for tid, (d, task) in list(self.running.items()):
                    if not await self.tasks.lease(d, self.id):
                        log.info("%s: lost task %s (cancelled or reclaimed)", self.id, tid)
                        self._log(
                            "warning",
                            "lease lost (task cancelled or reclaimed): stopping its handler",
                            tid,
                            {"attempt": d.attempt},
                        )
                        task.cancel()
                if beats % max(1, int(cfg.visibility_timeout / cfg.heartbeat_interval / 2)) == 0:
                    for queue in cfg.queues:
                        await self.tasks.reclaim(queue, self.id, cfg.visibility_timeout)
                    await self.tasks.promote_due()
            except (RedisError, OSError) as e:
                reraise_if_cancelling(e)
                log.warning("%s: heartbeat failed: %s", self.id, e)

    # -- what commands do ----------------------------------------------------------
    async def _publish_status(self, status: str) -> tuple[str, str]:
        await self.publish(status)
        return "ok", status

    async def _restart(self) -> None:
        """Stop taking work, let running tasks finish, re-initialise, count it."""
        self._accepting.clear()
        self.log("info", "agent restarting", running=len(self.running))
        self.status = "restarting"
        await self._publish_quiet()
        await self._drain(force=False)
        if self.on_restart is not None:
            await self.on_restart(self)
        self.restarts += 1
        try:
            self.started_at = await self._redis_now()
        except (RedisError, OSError) as e:
            reraise_if_cancelling(e)
            self.started_at = now_ms()  # this host's clock: better than no restart
        self._accepting.set()
        self.log("info", "agent restarted", restarts=self.restarts)
        await self._publish_quiet()
