"""Agents as the API sees them: the agent's own document plus derived liveness.

Each agent writes one JSON document (it is the only writer) and heartbeats
into a sorted set.  A page of agents is therefore one script call returning a
few hundred strings, and ``unresponsive`` is derived at read time from the
heartbeat age, so it needs no sweeper and cannot go stale.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

import orjson
from redis.asyncio import Redis

from ..keys import Keys
from ..timeutil import format_ms
from .scripts import Scripts

_PAGE = """
local ids
if ARGV[1] == '' then
  ids = redis.call('ZRANGEBYLEX', KEYS[1], '-', '+', 'LIMIT', 0, tonumber(ARGV[2]))
else
  ids = redis.call('ZRANGEBYLEX', KEYS[1], '(' .. ARGV[1], '+', 'LIMIT', 0, tonumber(ARGV[2]))
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if #ids == 0 then return {now, {}, {}, {}} end
return {now, ids, redis.call('HMGET', KEYS[2], unpack(ids)),
        redis.call('ZMSCORE', KEYS[3], unpack(ids))}
"""
SCAN_BUDGET = 20_000
NO_HEARTBEAT_STATUSES = frozenset({"stopped"})


@lru_cache(maxsize=8192)
def _parsed(raw: str) -> dict[str, Any]:
    """Agent documents change only when the agent's state does, while a dashboard
    re-reads them every few seconds: parse each distinct document once."""
    doc: dict[str, Any] = orjson.loads(raw)
    doc["started_at"] = format_ms(doc.get("started_at"))
    return doc


Transport = Literal["redis", "http"]
"""How an agent reaches the fleet: Redis itself, or the agent gateway (which writes
``transport: "http"`` into the documents it registers; agents on Redis write none)."""


def agent_view(raw: str, hb: float | None, now: int, timeout_s: float) -> dict[str, Any]:
    doc = dict(_parsed(raw))
    doc["transport"] = "http" if doc.get("transport") == "http" else "redis"
    age = (now - hb) / 1000 if hb is not None else None
    if doc.get("status") not in NO_HEARTBEAT_STATUSES and (age is None or age > timeout_s):
        doc["status"] = "unresponsive"
    doc["last_heartbeat"] = format_ms(hb)
    doc["heartbeat_age_s"] = round(max(age, 0.0), 3) if age is not None else None
    return doc


class AgentStore:
    def __init__(self, redis: Redis, keys: Keys, *, heartbeat_timeout: float) -> None:
        self.redis = redis
        self.keys = keys
        self.timeout = heartbeat_timeout
        self._page = redis.register_script(_PAGE)

    async def _raw_page(
        self, after: str, count: int
    ) -> tuple[int, list[Any], list[Any], list[Any]]:
        now, ids, docs, hbs = await self._page(
            keys=[self.keys.agent_ids, self.keys.agents, self.keys.heartbeats], args=[after, count]
        )
        return int(now), ids, docs, [float(h) if h is not None else None for h in hbs]

    async def page(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        q: str | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Agents in id order, from just after id ``after`` when given; with the last
        id this page looked at, None at the end. Filters are applied to the derived
        status, so ``status=unresponsive`` finds the agents that stopped heartbeating."""
        after = after or ""
        needle = q.lower() if q else None
        items: list[dict[str, Any]] = []
        scanned = 0
        while len(items) < limit and scanned < SCAN_BUDGET:
            want = limit - len(items) if not (status or kind or q) else max(limit, 200)
            now, ids, docs, hbs = await self._raw_page(after, want)
            for aid, raw, hb in zip(ids, docs, hbs, strict=True):
                scanned += 1
                after = aid
                if raw is None:
                    continue
                doc = agent_view(raw, hb, now, self.timeout)
                if (
                    (status and doc.get("status") != status)
                    or (kind and doc.get("kind") != kind)
                    or (
                        needle
                        and needle not in aid.lower()
                        and needle not in str(doc.get("name", "")).lower()
                    )
                ):
                    continue
                items.append(doc)
                if len(items) == limit:
                    break
            if len(ids) < want and len(items) < limit:  # the end, and not a full page
                return items, None
        if not await self.redis.zrangebylex(self.keys.agent_ids, f"({after}", "+", 0, 1):
            return items, None
        return items, after

    async def get(self, agent_id: str) -> dict[str, Any] | None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.hget(self.keys.agents, agent_id)
            pipe.zscore(self.keys.heartbeats, agent_id)
            (sec, usec), raw, hb = await pipe.execute()
        if raw is None:
            return None
        return agent_view(raw, hb, sec * 1000 + usec // 1000, self.timeout)

    async def document(self, agent_id: str) -> dict[str, Any] | None:
        """The document as its agent wrote it (no derived status, no heartbeat)."""
        raw = await self.redis.hget(self.keys.agents, agent_id)
        if raw is None:
            return None
        doc: dict[str, Any] = orjson.loads(raw)  # as stored: times in ms, not formatted
        return doc

    async def put(self, scripts: Scripts, doc: dict[str, Any], events_maxlen: int) -> int:
        """Write an agent's document for it (the gateway's agents), as the runtime does
        for itself: ``agent_put``, which also counts as a heartbeat."""
        res = await scripts.run(
            "agent_put",
            [self.keys.agents],
            [self.keys.base, doc["id"], orjson.dumps(doc).decode(), events_maxlen],
        )
        return int(res)

    async def detail_extras(self, agent_id: str, now_ms: int) -> dict[str, Any]:
        """Task counts of the last hour and the newest errors of one agent."""
        minute = now_ms // 60000
        minutes = range(minute - 59, minute + 1)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.mget([self.keys.agent_counter(agent_id, "succeeded", m) for m in minutes])
            pipe.mget([self.keys.agent_counter(agent_id, "failed", m) for m in minutes])
            pipe.lrange(self.keys.agent_errors(agent_id), 0, 9)
            ok, failed, errors = await pipe.execute()
        recent = []
        for raw in errors:
            e = orjson.loads(raw)
            e["ts"] = format_ms(e.get("ts"))
            recent.append(e)
        return {
            "stats": {
                "tasks_succeeded_1h": sum(int(x or 0) for x in ok),
                "tasks_failed_1h": sum(int(x or 0) for x in failed),
            },
            "recent_errors": recent,
        }

    async def purge_silent(self, scripts: Scripts, cutoff_ms: int, limit: int = 500) -> int:
        """Forget agents not heard from since the cutoff."""
        n: int = await scripts.run(
            "agent_purge", [self.keys.heartbeats], [self.keys.base, cutoff_ms, limit]
        )
        return n

    async def count_by_status(self) -> dict[str, int]:
        """Agents per derived status (every agent is read; a fleet of thousands is a
        few pages of one script call each)."""
        counts: dict[str, int] = {}
        after: str | None = None
        while True:
            items, after = await self.page(limit=500, after=after)
            for a in items:
                counts[a["status"]] = counts.get(a["status"], 0) + 1
            if after is None:
                return counts

    async def count(self) -> int:
        n: int = await self.redis.zcard(self.keys.agent_ids)
        return n
