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

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import __version__
from ..aio import reraise_if_cancelling
from ..ids import AGENT_ID
from ..metrics.events import UsageEvent
from ..metrics.pricing import PriceTable, load_price_table
from ..store.tasks import Delivery
from ..timeutil import now_ms
from .config import AgentConfig, PermanentError
from .context import Handler, Hook, TaskContext, log_outcome
from .control import CommandInbox
from .http_transport import HttpTransport
from .logs import LogHandler, LogRecorder, Scope, current_scope
from .redis_transport import RedisTransport
from .transport import Refused, Transport, UsageSink

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
        url: str | None = None,
        key: str | None = None,
        config: AgentConfig | None = None,
        on_restart: Hook | None = None,
    ) -> None:
        """On Redis: give ``redis_url`` (or a client, ``redis``).  Over the server's
        agent gateway: give its ``url`` (``http://host:port``) and an agent ``key``."""
        if not AGENT_ID.match(agent_id):
            raise ValueError("agent ids are 1-128 characters of A-Z a-z 0-9 . _ : -")
        self.id = agent_id
        self.handler = handler
        self.config = config or AgentConfig()
        self.config.check()  # again: a config may have been changed since it was made
        self.on_restart = on_restart
        self.transport: Transport = _transport(
            agent_id, self.config, redis_url=redis_url, redis=redis, url=url, key=key
        )
        self.recorder: UsageSink | None = None
        if self.config.record_usage:
            self.recorder = self.transport.usage_recorder(_prices())
        self.log_recorder: LogRecorder | None = None
        if self.config.record_logs:
            self.log_recorder = self.transport.log_recorder()
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
        await self.transport.register(self.document())

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
        """Run until stopped by a command or by ``stop()``.  A refusal at registration
        (over HTTP: a key that may not act as this agent or take from its queues)
        raises here, before any loop starts."""
        try:
            self.started_at = await self._redis_now()
            await self.publish("starting")
        except BaseException:
            await self.transport.close()
            raise
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
        """The fleet's clock (Redis's, which every agent and server shares)."""
        return await self.transport.now_ms()

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
        try:
            await self._report(lambda: self._publish_status("stopped"))
            if command_id:
                await self._inbox.done(command_id, "completed")
        except (RedisError, OSError, Refused) as e:  # stopped all the same
            reraise_if_cancelling(e)
            log.warning("%s: could not report its stop: %s", self.id, e)
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
            try:
                await t
            except (asyncio.CancelledError, RedisError):
                pass
            except Exception as e:  # a refusal (GatewayRefused) ended it: still shut down
                log.warning("%s: %s ended with %r", self.id, t.get_name(), e)
        try:
            await self._close_recorders()
        finally:
            await self.transport.close()  # whatever happened, no connection left open

    async def _close_recorders(self) -> None:
        self._detach_logging()
        if self.recorder is not None and self._killed:
            await self.recorder.abandon()
        elif self.recorder is not None:
            try:
                await self.recorder.close()  # what was recorded is written before we go
            except (RedisError, OSError, Refused) as e:
                log.warning("%s: usage not written at shutdown: %s", self.id, e)
        if self.log_recorder is not None and self._killed:
            await self.log_recorder.abandon()
        elif self.log_recorder is not None:
            try:
                await self.log_recorder.close()
            except (RedisError, OSError, Refused) as e:
                log.warning(
                    "%s: %d log entries not written at shutdown: %s",
                    self.id,
                    self.log_recorder.pending,
                    e,
                )

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
                    "task handed back to its queue (forced stop)"
                    if self.transport.can_requeue
                    else "task left to be reclaimed after the visibility timeout (forced stop)",
                    tid,
                    {"attempt": d.attempt},
                )
        await self._idle.wait()  # every taken task reported

    # -- work -----------------------------------------------------------------------
    async def _work(self, slot: int) -> None:
        while True:
            await self._accepting.wait()
            self._active += 1
            self._idle.clear()
            try:
                got = await self.transport.take(slot, self.config.queues)
                if got is not None:
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
            try:
                await self.transport.wait(slot, self.config.block_s)
            except (RedisError, OSError) as e:
                reraise_if_cancelling(e)
                await self._trouble(e)

    async def _trouble(self, e: BaseException) -> None:
        """Redis (or the gateway) is unreachable or refusing: say so, wait, carry on."""
        log.warning(
            "%s: %s trouble (%s: %s); retrying", self.id, self.transport.name, type(e).__name__, e
        )
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
        except (RedisError, OSError, Refused) as e:
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
                lambda: self.transport.finish(
                    d, result=result, error=error, retryable=retryable, backoff_s=backoff
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
        return "ok", await self.transport.abandon(d)

    # -- pulse ----------------------------------------------------------------------
    async def _pulse(self) -> None:
        cfg = self.config
        beats = 0
        while True:
            await asyncio.sleep(cfg.heartbeat_interval)
            beats += 1
            try:
                held = [d for d, _ in self.running.values()]
                for tid in await self.transport.heartbeat(self.document(), held):
                    if tid in self.running:
                        d, task = self.running[tid]
                        log.info("%s: lost task %s (cancelled or reclaimed)", self.id, tid)
                        self._log(
                            "warning",
                            "lease lost (task cancelled or reclaimed): stopping its handler",
                            tid,
                            {"attempt": d.attempt},
                        )
                        task.cancel()
                if beats % max(1, int(cfg.visibility_timeout / cfg.heartbeat_interval / 2)) == 0:
                    await self.transport.maintain(cfg.queues, cfg.visibility_timeout)
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


def _transport(
    agent_id: str,
    config: AgentConfig,
    *,
    redis_url: str | None,
    redis: Redis | None,
    url: str | None,
    key: str | None,
) -> Transport:
    """Redis (``redis_url`` or ``redis``) or the HTTP gateway (``url`` and ``key``)."""
    on_redis = redis is not None or redis_url is not None
    if on_redis and url is not None:
        raise ValueError("give redis_url (or redis) or url and key, not both")
    if url is not None:
        if not key:
            raise ValueError("an agent over HTTP needs key= (an agent key, ezk_...)")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must be http:// or https://, not {url!r}")
        return HttpTransport(agent_id, config, url=url, key=key)
    if key is not None:
        raise ValueError("key= is for the HTTP gateway: give url= too")
    if not on_redis:
        raise ValueError("give redis_url (or redis) for Redis, or url and key for the gateway")
    return RedisTransport(agent_id, config, url=redis_url, redis=redis)
