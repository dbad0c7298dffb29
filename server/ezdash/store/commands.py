"""Control commands: queued by the API, acknowledged and completed by agents."""

from __future__ import annotations

from typing import Any, cast

from redis.asyncio import Redis

from ..ids import new_id
from ..keys import Keys
from ..timeutil import format_ms
from .errors import Conflict, IdempotencyMismatch, NotFound
from .scripts import Scripts
from .tasks import fingerprint

FIELDS = (
    "id",
    "agent_id",
    "action",
    "force",
    "status",
    "created_at",
    "acknowledged_at",
    "completed_at",
    "requested_by",
    "error",
    "deadline",
)


def command_doc(v: list[str | None]) -> dict[str, Any]:
    cid, agent, action, force, status, created, acked, done, by, err, deadline = v
    return {
        "id": cid,
        "agent_id": agent,
        "action": action,
        "force": force == "1",
        "status": status,
        "created_at": format_ms(int(created)) if created else None,
        "acknowledged_at": format_ms(int(acked)) if acked else None,
        "completed_at": format_ms(int(done)) if done else None,
        "expires_at": format_ms(int(deadline)) if deadline else None,
        "requested_by": by or None,
        "error": err or None,
    }


class CommandStore:
    def __init__(
        self, redis: Redis, keys: Keys, scripts: Scripts, *, events_maxlen: int, ttl_s: float
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.maxlen = events_maxlen
        self.ttl_s = ttl_s

    async def create(
        self,
        agent_id: str,
        action: str,
        *,
        force: bool = False,
        requested_by: str = "",
        idempotency: tuple[str, float] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        cid = new_id("cmd")
        idem_key, idem_ttl = idempotency or ("", 0.0)
        fp = fingerprint({"agent": agent_id, "action": action, "force": force})
        res = await self.scripts.run(
            "command_create",
            [self.keys.command(cid)],
            [
                self.keys.base,
                cid,
                agent_id,
                action,
                1 if force else 0,
                requested_by,
                int(self.ttl_s * 1000),
                self.maxlen,
                idem_key,
                int(idem_ttl * 1000),
                fp,
                *FIELDS,
            ],
        )
        if res[0] == "noagent":
            raise NotFound("agent", agent_id)
        if res[0] == "conflict":
            raise Conflict(f"agent {agent_id!r} is {res[1]}; it cannot {action}", str(res[1]))
        if res[0] == "duplicate":
            seen_fp, _, cid = res[1].partition("|")
            if seen_fp != fp:
                raise IdempotencyMismatch()
        if res[0] == "ok":  # as created: its agent may have acknowledged it since
            return command_doc(list(res[2:])), True
        doc = await self.get(cid)
        if doc is None:  # a replay of a command purged since (retention < idempotency TTL)
            raise Conflict(f"the command first created with this Idempotency-Key ({cid}) is gone")
        return doc, res[0] == "ok"

    async def get(self, cid: str) -> dict[str, Any] | None:
        v = cast(list[str | None], await self.redis.hmget(self.keys.command(cid), FIELDS))
        return command_doc(v) if v[0] is not None else None

    async def update(self, cid: str, to: str, *, agent_id: str = "", error: str = "") -> str:
        """Returns the status the command ended in ('refused:<status>' when not allowed)."""
        res = await self.scripts.run(
            "command_update",
            [self.keys.command(cid)],
            [self.keys.base, cid, agent_id, to, error[:2000], self.maxlen],
        )
        return str(res[1]) if res[0] == "ok" else f"refused:{res[1]}"

    async def expire_due(self, limit: int = 500) -> int:
        n: int = await self.scripts.run(
            "command_expire", [self.keys.commands_pending], [self.keys.base, limit, self.maxlen]
        )
        return n

    async def fail_orphans(self, heartbeat_timeout_s: float, now_ms: int) -> int:
        """Acknowledged commands whose agent stopped heartbeating will never complete:
        fail them so nobody waits on them forever."""
        acked = cast(list[str], await self.redis.zrange(self.keys.commands_acked, 0, 499))
        failed = 0
        for cid in acked:
            agent = cast(str | None, await self.redis.hget(self.keys.command(cid), "agent_id"))
            hb = await self.redis.zscore(self.keys.heartbeats, agent) if agent else None
            if hb is None or now_ms - hb > heartbeat_timeout_s * 1000:
                status = await self.update(
                    cid, "failed", error="the agent stopped responding before completing it"
                )
                failed += status == "failed"
        return failed

    async def purge_finished(self, cutoff_ms: int, limit: int = 500) -> int:
        n: int = await self.scripts.run(
            "command_purge", [self.keys.commands], [self.keys.base, cutoff_ms, limit]
        )
        return n

    async def pending_for(self, agent_id: str) -> list[dict[str, Any]]:
        ids = cast(
            list[str], await self.redis.zrevrange(self.keys.commands_by_agent(agent_id), 0, 49)
        )
        docs = [await self.get(c) for c in ids]
        return [d for d in docs if d and d["status"] in ("pending", "acknowledged")]

    async def page(
        self,
        *,
        agent: str | None = None,
        status: str | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first, from just after command ``after`` when given; with the last
        command this page looked at, None at the end. Filtered by agent through its
        index, by status per item."""
        index = self.keys.commands_by_agent(agent) if agent else self.keys.commands
        offset = 0
        if after is not None:
            rank = cast(int | None, await self.redis.zrevrank(index, after))
            offset = (rank + 1) if rank is not None else 0
        items: list[dict[str, Any]] = []
        last = None
        while len(items) < limit:
            ids = cast(list[str], await self.redis.zrevrange(index, offset, offset + limit * 2 - 1))
            if not ids:
                return items, None
            async with self.redis.pipeline(transaction=False) as pipe:
                for c in ids:
                    pipe.hmget(self.keys.command(c), FIELDS)
                rows = await pipe.execute()
            for cid, v in zip(ids, rows, strict=True):
                offset += 1
                last = cid
                if v[0] is None or (status and v[4] != status):
                    continue
                items.append(command_doc(v))
                if len(items) == limit:
                    break
            if len(ids) < limit * 2 and len(items) < limit:
                return items, None
        if not await self.redis.zrevrange(index, offset, offset):
            return items, None
        return items, last
