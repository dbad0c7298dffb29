"""Recording usage: validated events are priced, aggregated and written in batches.

The same recorder serves the agent runtime (pipelined, flushed every second or
every few thousand events) and ``POST /api/ingest/usage`` (one batch per request,
written before the 202).  A batch is one atomic script call: the raw events go to
a capped stream and every rollup increment is applied, or nothing is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..aio import reraise_if_cancelling
from ..keys import Keys
from ..store.errors import IdempotencyMismatch
from ..store.scripts import Scripts
from .catalog import POSITION, Labels, labels
from .events import UsageEvent
from .pricing import PriceTable, cost_nanos, usd_to_nanos
from .rollup import Aggregator, Tier

log = logging.getLogger("ezdash.metrics")
RAW_MAXLEN = 1_000_000
MAX_PENDING = 600
"""Failed batches kept for retry (about ten minutes of outage at one per second)."""


def event_json(e: UsageEvent, values: Labels, cost: int, version: str | None) -> str:
    doc: dict[str, Any] = e.model_dump(mode="json")
    doc["cost_nanos"] = cost
    doc["kind"] = values[POSITION["kind"]] or None
    doc["queue"] = values[POSITION["queue"]] or None
    doc["price_version"] = version
    return orjson.dumps(doc).decode()


class Batch:
    """One batch: its aggregate and its raw events."""

    def __init__(self, tiers: tuple[Tier, ...], prices: PriceTable) -> None:
        self.id = uuid.uuid4().hex
        self.agg = Aggregator(tiers)
        self.prices = prices
        self.raw: list[str] = []

    def add_event(self, e: UsageEvent, *, kind: str = "", queue: str = "") -> None:
        values = labels(
            agent=e.agent_id, model=e.model, provider=e.provider, kind=kind, queue=queue
        )
        version: str | None = None
        if e.cost_usd is not None:
            nanos, priced = usd_to_nanos(e.cost_usd), True
        else:
            price = self.prices.price(e.provider, e.model, e.ts)
            priced = price is not None
            nanos = cost_nanos(e, price) if price is not None else 0
            version = self.prices.version if priced else None
        self.agg.add_call(
            e.ts,
            values,
            input_tokens=e.input_tokens,
            output_tokens=e.output_tokens,
            cached_tokens=e.cached_tokens,
            cache_creation_tokens=e.cache_creation_tokens,
            reasoning_tokens=e.reasoning_tokens,
            cost_nanos=nanos,
            priced=priced,
            latency_ms=e.latency_ms,
            error_type=(e.error_type or "unknown") if e.status == "error" else None,
        )
        self.raw.append(event_json(e, values, nanos, version))

    def add_task(
        self, ts_ms: int, *, agent: str, kind: str, queue: str, ok: bool, duration_ms: float
    ) -> None:
        values = labels(agent=agent, kind=kind, queue=queue)
        self.agg.add_task(ts_ms, values, ok=ok, duration_ms=duration_ms)

    def __len__(self) -> int:
        return len(self.agg)


async def write_batch(
    redis: Redis,
    scripts: Scripts,
    keys: Keys,
    batch: Batch,
    *,
    now_ms: int,
    batch_id: str = "",
    dedupe_ttl_ms: int = 86_400_000,
    fingerprint: str = "",
) -> bool:
    """Apply a batch atomically.  With a batch id a repeat is recognised and skipped
    (returns False), so a client may safely retry after a timeout; a repeat whose
    fingerprint differs raises IdempotencyMismatch."""
    mk = keys.metrics
    args: list[Any] = [
        keys.base,
        mk.dedupe(batch_id) if batch_id else "",
        dedupe_ttl_ms,
        fingerprint,
        batch.agg.newest,
    ]
    if batch.raw:
        args += ["X", mk.raw, RAW_MAXLEN, len(batch.raw), *batch.raw]
    args += batch.agg.ops(mk, now_ms)
    res = await scripts.run("metrics_apply", [mk.as_of], args)
    if res[0] == "seen":
        if res[1] != fingerprint:
            raise IdempotencyMismatch("batch")
        return False
    return True


class UsageRecorder:
    """What an agent process uses to report LLM calls and task outcomes."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        tiers: tuple[Tier, ...],
        prices: PriceTable,
        *,
        flush_every_s: float = 1.0,
        max_batch: int = 5000,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = Scripts(redis)
        self.tiers = tiers
        self.prices = prices
        self.flush_every = flush_every_s
        self.max_batch = max_batch
        self._batch = Batch(tiers, prices)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._pending: list[Batch] = []
        self._flushes: set[asyncio.Future[None]] = set()
        self.dropped = 0

    def record(self, event: UsageEvent, *, kind: str = "", queue: str = "") -> None:
        self._batch.add_event(event, kind=kind, queue=queue)
        self._kick()

    def record_task(
        self, ts_ms: int, *, agent: str, kind: str, queue: str, ok: bool, duration_ms: float
    ) -> None:
        self._batch.add_task(
            ts_ms, agent=agent, kind=kind, queue=queue, ok=ok, duration_ms=duration_ms
        )
        self._kick()

    def _kick(self) -> None:
        if len(self._batch) >= self.max_batch and not self._lock.locked():
            self._flushes.add(task := asyncio.ensure_future(self._flush_quietly()))
            task.add_done_callback(self._flushes.discard)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._ticker())

    async def _flush_quietly(self) -> None:
        try:
            await self.flush()
        except (RedisError, OSError) as e:
            reraise_if_cancelling(e)
            log.warning("usage flush failed (%s); will retry", e)

    async def _ticker(self) -> None:
        while len(self._batch) or self._pending:
            await asyncio.sleep(self.flush_every)
            await self._flush_quietly()

    async def flush(self) -> None:
        """Write what has been recorded.  A batch that failed is retried as it was,
        under the same id, so one that did land but was not acknowledged is not
        counted twice; new usage goes into the next batch meanwhile."""
        async with self._lock:
            if len(self._batch):
                self._pending.append(self._batch)
                self._batch = Batch(self.tiers, self.prices)
            if len(self._pending) > MAX_PENDING:  # a long outage: keep the newest
                lost = self._pending[:-MAX_PENDING]
                self._pending = self._pending[-MAX_PENDING:]
                self.dropped += sum(len(b) for b in lost)
                log.error("usage recorder dropped %d records after a long outage", self.dropped)
            while self._pending:
                batch = self._pending[0]
                sec, usec = await self.redis.time()
                now = int(sec) * 1000 + int(usec) // 1000
                await write_batch(
                    self.redis, self.scripts, self.keys, batch, now_ms=now, batch_id=batch.id
                )
                self._pending.pop(0)

    async def abandon(self) -> None:
        """Stop without writing (a simulated crash): what was not flushed is lost,
        as it would be if the process died."""
        tasks = [*self._flushes, *([self._task] if self._task else [])]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await t

    async def close(self) -> None:
        for f in list(self._flushes):
            with contextlib.suppress(Exception):
                await f
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
