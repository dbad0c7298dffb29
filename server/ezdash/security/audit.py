"""The audit log: one capped Redis stream of who did what, to what, from where, and
with what result.  Every write, control and admin request is recorded, and so is
every denied one (401, 403, 429), whatever its method.

Requests do not wait for their record: ``record`` puts it in a bounded in-process
buffer that one writer drains in batches. While Redis is away the records wait
there (each keeps the time of its request) and are written when it returns; a
record that finds the buffer full is counted (``dropped``, shown in ``/metrics``)
and logged, never lost silently. The first records of an outage are the ones
kept: an outage's flood cannot push out what happened before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..keys import Keys
from ..store.availability import RedisWatch
from ..timeutil import format_ms

log = logging.getLogger("ezdash.audit")

SCAN_BUDGET = 10_000
BUFFER = 20_000
"""Records held while Redis is away."""
BATCH = 500


def entry_doc(entry_id: str, f: dict[str, str]) -> dict[str, Any]:
    return {
        "id": entry_id,
        "ts": format_ms(int(f.get("ts") or entry_id.split("-")[0])),
        "principal": f.get("principal"),
        "action": f.get("action"),
        "target": f.get("target") or None,
        "client": f.get("client"),
        "status": int(f.get("status", "0")),
        "result": f.get("result"),
        "detail": f.get("detail") or None,
    }


def audit_fields(
    principal: str, action: str, target: str, client: str, status: int, detail: str
) -> dict[str, str]:
    """One record as stored; ``ts`` is the request's time, whenever it is written."""
    return {
        "principal": principal,
        "action": action,
        "target": target,
        "client": client,
        "status": str(status),
        "result": "denied" if status in (401, 403, 429) else "ok" if status < 400 else "failed",
        "detail": detail[:500],
        "ts": str(int(time.time() * 1000)),
    }


class AuditLog:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        maxlen: int,
        *,
        watch: RedisWatch | None = None,
        buffer: int = BUFFER,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.maxlen = maxlen
        self.watch = watch
        self.capacity = buffer
        self.dropped = 0
        self._pending: deque[dict[str, str]] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._idle = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def record(
        self,
        *,
        principal: str,
        action: str,
        target: str,
        client: str,
        status: int,
        detail: str = "",
    ) -> None:
        """Queue one record for writing; never blocks, never raises."""
        if len(self._pending) >= self.capacity:
            if self.dropped == 0 or self.dropped % 1000 == 0:
                log.error(
                    "audit buffer full (%d records waiting for Redis): %d records dropped",
                    len(self._pending),
                    self.dropped + 1,
                )
            self.dropped += 1
            return
        self._pending.append(audit_fields(principal, action, target, client, status, detail))
        self._idle.clear()
        self._wake.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(
                self._drain(), name="audit-writer"
            )

    async def _drain(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
                try:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for doc in batch:
                            pipe.xadd(self.keys.audit, doc, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
                        await pipe.execute()
                except (RedisError, OSError) as e:
                    self._pending.extendleft(reversed(batch))  # oldest first, as they came
                    if self._closing:
                        return  # a cancelled write can surface as a Redis error
                    if self.watch is not None:
                        self.watch.failed(e)
                        await self.watch.back.wait()
                    await asyncio.sleep(0.2)  # Redis may flap: do not spin on it
            self._idle.set()

    async def close(self, timeout_s: float) -> None:
        """Write what is buffered (for at most ``timeout_s``), then stop the writer."""
        if self._writer is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        if self._pending:
            log.error("shutting down with %d audit records unwritten", len(self._pending))
        # Not only cancel: redis-py can turn a cancelled write into a connection error,
        # which the writer would take for an outage and wait on; the flag ends it too,
        # and the wait is bounded whatever the writer does.
        self._closing = True
        self._wake.set()
        self._writer.cancel()
        done, _ = await asyncio.wait({self._writer}, timeout=2.0)
        if not done:
            log.warning("the audit writer did not stop within 2 s")

    async def page(
        self,
        *,
        principal: str | None = None,
        action: str | None = None,
        result: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first, from just before entry ``after`` when given; with the last
        entry id this page looked at, None at the end."""
        hi = f"({after}" if after else (str(end_ms) if end_ms is not None else "+")
        lo = str(start_ms) if start_ms is not None else "-"
        items: list[dict[str, Any]] = []
        scanned = 0
        last: str | None = None
        while len(items) < limit and scanned < SCAN_BUDGET:
            batch = cast(
                list[tuple[str, dict[str, str]]],
                await self.redis.xrevrange(self.keys.audit, hi, lo, count=max(limit * 2, 100)),
            )
            if not batch:
                return items, None
            for entry_id, fields in batch:
                scanned += 1
                last = entry_id
                if (
                    (principal and fields.get("principal") != principal)
                    or (action and fields.get("action") != action)
                    or (result and fields.get("result") != result)
                ):
                    continue
                items.append(entry_doc(entry_id, fields))
                if len(items) == limit:
                    break
            hi = f"({last}"
        if last is None:
            return items, None
        more = await self.redis.xrevrange(self.keys.audit, f"({last}", lo, count=1)
        return items, last if more else None
