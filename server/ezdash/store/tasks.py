"""Tasks: creation, reads, and every state change (through the task scripts)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import orjson
from redis.asyncio import Redis

from ..ids import new_id
from ..keys import FINISHED_STATUSES, GROUP, TASK_STATUSES, Keys
from ..timeutil import format_ms
from .errors import Conflict, IdempotencyMismatch, NotFound
from .scripts import Scripts

FIELDS = (
    "id",
    "type",
    "queue",
    "status",
    "payload",
    "priority",
    "agent_id",
    "attempts",
    "max_attempts",
    "created_at",
    "started_at",
    "finished_at",
    "error",
    "result",
)
SCAN_BUDGET = 5000
"""Index entries one list request may examine; past it the page ends early with a cursor."""


def drain_eta(depth: int, arrivals_per_min: float, service_per_min: float) -> float | None:
    """``analytics.queue_drain_eta`` on the queue's current rates, to a tenth of a second.

    Imported here, not at the top: agents import this module too, and must not load
    pandas for a figure only the server's queue listing shows."""
    from analytics import queue_drain_eta

    eta = queue_drain_eta(depth, arrivals_per_min, service_per_min)
    return None if eta is None else round(eta, 1)


RETRYABLE = ("failed", "dead", "cancelled")
CANCELLABLE = ("queued", "running")
ALLOWED = {"retry": RETRYABLE, "cancel": CANCELLABLE}
"""The statuses each transition accepts (the task_retry and task_cancel scripts)."""


def check_transition(task_id: str, status: str, action: str) -> None:
    """Conflict unless a task in ``status`` may be retried or cancelled."""
    allowed = ALLOWED[action]
    if status not in allowed:
        raise Conflict(
            f"task {task_id!r} is {status}; only {', '.join(allowed)} tasks can {action}",
            status,
        )


class Held(Protocol):
    """An attempt an agent holds: a ``Delivery`` in the runtime, a ``Lease`` on the
    gateway.  Finishing and renewing need only these."""

    @property
    def id(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def entry(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Delivery:
    """A task an agent has taken: what it needs to run it and to report back."""

    id: str
    type: str
    queue: str
    priority: int
    payload: Any
    attempt: int
    max_attempts: int
    entry: str
    snapshot: Snapshot | None = field(default=None, compare=False, repr=False)
    """The task as the take script left it (the gateway answers with it)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A task's API document as a script left it, and the Redis time it ran at: what
    the gateway answers with, so an answer costs no second read (and shows the state
    the script made, not a later one)."""

    now_ms: int
    doc: dict[str, Any]
    started_ms: int | None = None
    """When the current (or last) attempt started, Redis time."""

    @classmethod
    def of(cls, tail: list[str]) -> Snapshot:
        """From a script's ``now_ms, field, value, ...`` tail."""
        h = dict(zip(tail[1::2], tail[2::2], strict=True))
        started = h.get("started_at")
        return cls(
            int(tail[0]),
            task_doc([h.get(f) for f in FIELDS]),
            int(started) if started else None,
        )


def _ms(value: str | None) -> str | None:
    return format_ms(int(value)) if value else None


def _json(value: str | None) -> Any:
    return orjson.Fragment(value) if value else None


def task_doc(values: list[str | None]) -> dict[str, Any]:
    """API shape of a task from HMGET of FIELDS (payload/result spliced in raw)."""
    (
        tid,
        ttype,
        queue,
        status,
        payload,
        prio,
        agent,
        att,
        maxatt,
        created,
        started,
        finished,
        error,
        result,
    ) = values
    return {
        "id": tid,
        "type": ttype,
        "queue": queue,
        "status": status,
        "payload": _json(payload),
        "priority": int(prio or 0),
        "agent_id": agent or None,
        "attempts": int(att or 0),
        "max_attempts": int(maxatt or 0),
        "created_at": _ms(created),
        "started_at": _ms(started),
        "finished_at": _ms(finished),
        "error": orjson.loads(error) if error else None,
        "result": _json(result),
    }


def history_doc(raw: str) -> dict[str, Any]:
    rec = orjson.loads(raw)
    return {
        "attempt": rec.get("attempt"),
        "agent_id": rec.get("agent_id"),
        "started_at": format_ms(rec.get("started_at")),
        "finished_at": format_ms(rec.get("finished_at")),
        "status": rec.get("status"),
        "error": rec.get("error"),
    }


def fingerprint(body: Any) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


class TaskStore:
    """All task operations of one deployment (one key prefix)."""

    def __init__(self, redis: Redis, keys: Keys, scripts: Scripts, *, events_maxlen: int) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.maxlen = events_maxlen

    # -- writes from the API ----------------------------------------------------
    async def create(
        self,
        *,
        type: str,
        payload: Any,
        queue: str = "default",
        priority: int = 0,
        max_attempts: int = 3,
        idempotency: tuple[str, float] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Create and enqueue a task.  Returns (task, created); created is False when an
        Idempotency-Key repeat returned the first task instead."""
        tid = new_id("tsk")
        body = {
            "type": type,
            "payload": payload,
            "queue": queue,
            "priority": priority,
            "max_attempts": max_attempts,
        }
        idem_key, idem_ttl = idempotency or ("", 0.0)
        fp = fingerprint(body)
        res = await self.scripts.run(
            "task_create",
            [self.keys.task(tid)],
            [
                self.keys.base,
                tid,
                type,
                queue,
                priority,
                max_attempts,
                orjson.dumps(payload).decode(),
                self.maxlen,
                idem_key,
                int(idem_ttl * 1000),
                fp,
            ],
        )
        if res[0] == "duplicate":
            seen_fp, _, seen_id = res[1].partition("|")
            if seen_fp != fp:
                raise IdempotencyMismatch()
            task = await self.get(seen_id)
            if task is None:
                raise Conflict("the task first created with this Idempotency-Key is gone")
            return task, False
        created = format_ms(int(res[2]))
        return {  # what the script just wrote: no second round trip to read it back
            "id": tid,
            "type": type,
            "queue": queue,
            "status": "queued",
            "payload": payload,
            "priority": priority,
            "agent_id": None,
            "attempts": 0,
            "max_attempts": max_attempts,
            "created_at": created,
            "started_at": None,
            "finished_at": None,
            "error": None,
            "result": None,
        }, True

    async def cancel(self, tid: str) -> dict[str, Any]:
        return await self._transition("cancel", tid)

    async def retry(self, tid: str) -> dict[str, Any]:
        return await self._transition("retry", tid)

    async def _transition(self, action: str, tid: str) -> dict[str, Any]:
        res = await self.scripts.run(
            f"task_{action}", [self.keys.task(tid)], [self.keys.base, tid, self.maxlen]
        )
        if res[0] == "gone":
            raise NotFound("task", tid)
        if res[0] == "conflict":
            check_transition(tid, str(res[1]), action)
        task = await self.get(tid)
        if task is None:  # purged just now
            raise NotFound("task", tid)
        return task

    # -- reads ----------------------------------------------------------------
    async def get(self, tid: str, *, history: bool = False) -> dict[str, Any] | None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self.keys.task(tid), FIELDS)
            if history:
                pipe.lrange(self.keys.task_history(tid), 0, -1)
            res = await pipe.execute()
        if res[0][0] is None:
            return None
        doc = task_doc(res[0])
        if history:
            doc["history"] = [history_doc(r) for r in res[1]]
        return doc

    async def status(self, tid: str) -> str | None:
        return cast(str | None, await self.redis.hget(self.keys.task(tid), "status"))

    async def page(
        self,
        *,
        status: str | None = None,
        queue: str | None = None,
        agent: str | None = None,
        type: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int = 50,
        after: tuple[float, str] | None = None,
    ) -> tuple[list[dict[str, Any]], tuple[float, str] | None]:
        """Newest first, from just after ``after`` (the score and id of the last task of
        the previous page) when given; with where this page ended, None at the end.
        Uses the status or queue index when filtered by them; other filters are checked
        per task, within SCAN_BUDGET entries per page."""
        if status:
            index = self.keys.tasks_by_status(status)
        elif queue:
            index = self.keys.tasks_by_queue(queue)
        else:
            index = self.keys.tasks
        lo = float(start_ms) if start_ms is not None else float("-inf")
        if after is not None:
            score, member = after
            rank = cast(int | None, await self.redis.zrevrank(index, member))
            if rank is None:  # the last task shown was purged: resume by its score
                rank = await self.redis.zcount(index, score, "+inf") - 1
            offset = rank + 1
        elif end_ms is not None:
            offset = await self.redis.zcount(index, f"({end_ms}", "+inf")
        else:
            offset = 0

        items: list[dict[str, Any]] = []
        scanned = 0
        last: tuple[float, str] | None = None
        more = True
        while len(items) < limit and scanned < SCAN_BUDGET:
            batch = min(SCAN_BUDGET - scanned, (limit - len(items)) * (4 if agent or type else 1))
            got = await self.redis.zrevrange(index, offset, offset + batch - 1, withscores=True)
            rows = [(m, sc) for m, sc in cast(list[tuple[str, float]], got) if sc >= lo]
            if not rows:
                more = False
                break
            async with self.redis.pipeline(transaction=False) as pipe:
                for member, _ in rows:
                    pipe.hmget(self.keys.task(member), FIELDS)
                docs = await pipe.execute()
            for (member, sc), values in zip(rows, docs, strict=True):
                scanned += 1
                offset += 1
                last = (sc, member)
                if values[0] is None:
                    continue  # purged by retention between the index read and now
                doc = task_doc(values)
                if (
                    (status and doc["status"] != status)
                    or (queue and doc["queue"] != queue)
                    or (agent and doc["agent_id"] != agent)
                    or (type and doc["type"] != type)
                ):
                    continue
                items.append(doc)
                if len(items) == limit:
                    break
            if len(rows) < batch and len(items) < limit:
                more = False
                break
        if more and len(items) == limit:
            # Only promise a next page when one exists.
            nxt = cast(
                list[tuple[str, float]],
                await self.redis.zrevrange(index, offset, offset, withscores=True),
            )
            more = bool(nxt) and nxt[0][1] >= lo
        return items, last if more else None

    async def counts_since(self, since_ms: int) -> dict[str, int]:
        """Tasks created since ``since_ms``, by their current status."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for status in TASK_STATUSES:
                pipe.zcount(self.keys.tasks_by_status(status), since_ms, "+inf")
            counts = await pipe.execute()
        return dict(zip(TASK_STATUSES, (int(c) for c in counts), strict=True))

    async def queue_names(self) -> list[str]:
        return sorted(cast(set[str], await self.redis.smembers(self.keys.queues)))

    async def queue_stats(self, now_ms: int) -> list[dict[str, Any]]:
        names = await self.queue_names()
        minute = now_ms // 60000
        window = 5
        async with self.redis.pipeline(transaction=False) as pipe:
            for q in names:
                pipe.zcard(self.keys.queue_waiting(q))
                pipe.zcard(self.keys.queue_running(q))
                pipe.zrange(self.keys.queue_waiting(q), 0, 0, withscores=True)
                pipe.mget([self.keys.queue_done(q, minute - i) for i in range(1, window + 1)])
                pipe.mget([self.keys.queue_in(q, minute - i) for i in range(1, window + 1)])
            res = await pipe.execute()
        out = []
        for i, q in enumerate(names):
            depth, running, oldest, done, arrived = res[5 * i : 5 * i + 5]
            per_min = sum(int(x or 0) for x in done) / window
            in_min = sum(int(x or 0) for x in arrived) / window
            out.append(
                {
                    "name": q,
                    "depth": depth,
                    "running": running,
                    "oldest_age_s": round(max(0.0, (now_ms - oldest[0][1]) / 1000), 3)
                    if oldest
                    else 0.0,
                    "throughput_per_min": round(per_min, 2),
                    "arrivals_per_min": round(in_min, 2),
                    "drain_eta_s": drain_eta(depth, in_min, per_min),
                }
            )
        return out

    # -- the agent side ---------------------------------------------------------
    async def take(
        self, agent_id: str, queues: list[str], *, snapshot: bool = False
    ) -> Delivery | list[tuple[str, str]]:
        """Take and start the next task; or, when there is none, the (stream, last id)
        pairs to block on with XREAD until something new arrives (an empty list:
        call again at once).  With ``snapshot`` the delivery carries the task as the
        script left it (the gateway's answer); an agent does not pay for building it."""
        res = await self.scripts.run(
            "task_take", [self.keys.events], [self.keys.base, agent_id, self.maxlen, *queues]
        )
        if res[0] == "again":
            return []
        if res[0] == "task":
            _, tid, ttype, queue, prio, payload, attempt, maxatt, entry = res[:9]
            return Delivery(
                tid,
                ttype,
                queue,
                int(prio),
                orjson.loads(payload),
                int(attempt),
                int(maxatt),
                entry,
                Snapshot.of(res[9:]) if snapshot and len(res) > 9 else None,
            )
        return list(zip(res[1::2], res[2::2], strict=True))

    async def finish(
        self,
        d: Held,
        agent_id: str,
        *,
        result: Any = None,
        error: tuple[str, str] | None = None,
        retryable: bool = True,
        backoff_s: float = 0.0,
    ) -> tuple[str, str]:
        """Report an attempt's outcome.  Returns ('ok', new status) or ('stale', status)
        when the attempt is no longer this agent's (reclaimed, cancelled)."""
        outcome, status, _ = await self.finish_answer(
            d, agent_id, result=result, error=error, retryable=retryable, backoff_s=backoff_s
        )
        return outcome, status

    async def finish_answer(
        self,
        d: Held,
        agent_id: str,
        *,
        result: Any = None,
        error: tuple[str, str] | None = None,
        retryable: bool = True,
        backoff_s: float = 0.0,
        snapshot: bool = False,
    ) -> tuple[str, str, Snapshot | None]:
        """``finish``, and with ``snapshot`` the task as the script left it."""
        etype, emsg = error or ("", "")
        res = await self.scripts.run(
            "task_finish",
            [self.keys.task(d.id)],
            [
                self.keys.base,
                d.id,
                agent_id,
                d.attempt,
                "failed" if error else "succeeded",
                orjson.dumps(result).decode() if error is None else "",
                etype,
                emsg[:2000],
                1 if retryable else 0,
                int(backoff_s * 1000),
                self.maxlen,
                1 if snapshot else 0,
            ],
        )
        snap = Snapshot.of(res[2:]) if res[0] == "ok" and len(res) > 2 else None
        return res[0], res[1] if len(res) > 1 else "", snap

    async def lease(self, d: Held, agent_id: str) -> bool:
        """Renew the delivery's lease; False when the attempt is no longer this agent's."""
        held, _ = await self.renew(d, agent_id)
        return held

    async def renew(self, d: Held, agent_id: str) -> tuple[bool, str]:
        """``lease``, and the status the task has (``gone`` when deleted)."""
        res = await self.scripts.run(
            "task_lease", [self.keys.task(d.id)], [self.keys.base, d.id, agent_id, d.attempt]
        )
        return res[0] == "ok", str(res[1])

    async def abandon(self, d: Held, agent_id: str) -> str:
        """Give a running task back to its queue (forced stop); not counted as an attempt."""
        res = await self.scripts.run(
            "task_requeue",
            [self.keys.task(d.id)],
            [self.keys.base, d.id, "abandon", agent_id, d.attempt, d.entry, "", self.maxlen],
        )
        return str(res[-1])

    async def reclaim(self, queue: str, claimer: str, idle_s: float, count: int = 100) -> int:
        """Requeue deliveries idle longer than the visibility timeout (their agent is
        gone).  Safe to run from any number of agents and servers at once."""
        levels = cast(set[str], await self.redis.smembers(self.keys.queue_levels(queue)))
        moved = 0
        for level in levels:
            stream = self.keys.queue_stream(queue, int(level))
            start = "0-0"
            while True:
                res = await self.redis.xautoclaim(
                    stream, GROUP, claimer, int(idle_s * 1000), start, count=count
                )
                start, entries = res[0], res[1]
                for entry, fields in entries:
                    if not fields:  # deleted entry still pending (Redis 6.2 shows it)
                        await self.redis.xack(stream, GROUP, entry)
                        continue
                    tid = fields["task"]
                    out = await self.scripts.run(
                        "task_requeue",
                        [self.keys.task(tid)],
                        [self.keys.base, tid, "lost", "", "", entry, claimer, self.maxlen],
                    )
                    if out[0] == "gone":  # the task was deleted: drop the delivery
                        await self.redis.xack(stream, GROUP, entry)
                        await self.redis.xdel(stream, entry)
                    moved += out[0] == "requeued"
                if start == "0-0":
                    break
        return moved

    async def promote_due(self, limit: int = 500) -> int:
        moved: int = await self.scripts.run(
            "task_promote", [self.keys.delayed], [self.keys.base, limit]
        )
        return moved

    async def purge_finished(self, cutoff_ms: int, limit: int = 500) -> int:
        gone: int = await self.scripts.run(
            "task_delete", [self.keys.tasks_finished], [self.keys.base, cutoff_ms, limit]
        )
        return gone


__all__ = [
    "FINISHED_STATUSES",
    "Conflict",
    "Delivery",
    "IdempotencyMismatch",
    "NotFound",
    "TaskStore",
]
