"""API keys: ``ezk_`` + 43 random URL-safe characters (256 bits).

Only an HMAC-SHA256 of the key (keyed with the server's key secret) is stored;
the key is found by that digest and the stored digest is compared again in
constant time.  Revocation deletes the digest's lookup entry in Redis, which
every instance reads on every request, so it takes effect at once everywhere.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from ..ids import new_id
from ..keys import Keys
from ..timeutil import format_ms, now_ms

PREFIX = "ezk_"
SCOPES = ("read", "write", "control", "admin", "agent")
"""``agent`` keys reach only the agent gateway, bound to agent ids and queues."""


AGENT_GLOB = r"^[A-Za-z0-9._:*?-]{1,128}$"
"""Agent ids a key may act as: an id, or a glob of ``*`` and ``?`` (``ci-*``)."""
GRANTED_QUEUE = r"^(\*|[A-Za-z0-9._-]{1,64})$"
"""A queue an agent key may take from, or ``*`` for every queue."""


@dataclass(frozen=True)
class AgentBinding:
    """What an agent key may act as: agent ids matching the glob ``ids``, taking from
    ``queues`` (``*`` for every queue).  A key's binding never changes (a key is
    revoked and another made), so instances may cache it for the key's life."""

    ids: str
    queues: tuple[str, ...]

    @classmethod
    def parse(cls, ids: str, queues: list[str]) -> AgentBinding:
        """From the CLI's text (the API validates the same patterns in its model)."""
        if not re.match(AGENT_GLOB, ids):
            raise ValueError(f"agent ids {ids!r}: 1-128 of A-Z a-z 0-9 . _ : - * ?")
        bad = [q for q in queues if not re.match(GRANTED_QUEUE, q)]
        if not queues or bad:
            raise ValueError(f"queues: 1-64 characters of A-Z a-z 0-9 . _ - each, or *: {bad}")
        return cls(ids, tuple(queues))

    def allows_id(self, agent_id: str) -> bool:
        return fnmatch.fnmatchcase(agent_id, self.ids)

    def allows_queue(self, queue: str) -> bool:
        return "*" in self.queues or queue in self.queues

    def doc(self) -> dict[str, Any]:
        return {"ids": self.ids, "queues": list(self.queues)}


def binding_of(h: dict[str, str]) -> AgentBinding | None:
    if not h.get("agent_ids"):
        return None
    return AgentBinding(h["agent_ids"], tuple(q for q in h.get("agent_queues", "").split(",") if q))


def digest(secret: bytes, key: str) -> str:
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def looks_like_jwt(token: str) -> bool:
    """JWTs are three base64url parts, the first a JSON header ('eyJ...'); anything
    else is an API key (EZ_ADMIN_KEY may be any string of 32+ characters)."""
    return token.startswith("eyJ") and token.count(".") == 2


def key_doc(h: dict[str, str]) -> dict[str, Any]:
    return {
        "id": h["id"],
        "name": h["name"],
        "scopes": h["scopes"].split(",") if h.get("scopes") else [],
        "created_at": format_ms(int(h["created_at"])),
        "last_used_at": format_ms(int(h["last_used_at"])) if h.get("last_used_at") else None,
        "revoked_at": format_ms(int(h["revoked_at"])) if h.get("revoked_at") else None,
        "created_by": h.get("created_by") or None,
        "agent": b.doc() if (b := binding_of(h)) is not None else None,
    }


class KeyStore:
    def __init__(self, redis: Redis, keys: Keys, secret: bytes) -> None:
        self.redis = redis
        self.keys = keys
        self.secret = secret
        self._bindings: dict[str, AgentBinding | None] = {}

    async def create(
        self,
        name: str,
        scopes: list[str],
        *,
        created_by: str = "",
        key: str | None = None,
        key_id: str | None = None,
        agent: AgentBinding | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Returns (the key, its record).  ``key`` is given only for EZ_ADMIN_KEY;
        ``agent`` binds an ``agent``-scoped key (and only such a key has one)."""
        if (agent is not None) != ("agent" in scopes) or (
            "agent" in scopes and len(set(scopes)) > 1
        ):
            raise ValueError("an agent key has the scope 'agent' alone, and a binding")
        key = key or PREFIX + secrets.token_urlsafe(32)
        kid = key_id or new_id("key")
        d = digest(self.secret, key)
        record: dict[Any, Any] = {
            "id": kid,
            "name": name,
            "scopes": ",".join(sorted(set(scopes))),
            "created_at": str(now_ms()),
            "digest": d,
            "created_by": created_by,
        }
        if agent is not None:
            record["agent_ids"] = agent.ids
            record["agent_queues"] = ",".join(agent.queues)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.api_key(kid), mapping=record)
            pipe.hset(self.keys.api_key_digests, d, kid)
            pipe.zadd(self.keys.api_key_ids, {kid: int(record["created_at"])})
            await pipe.execute()
        return key, key_doc(record)

    async def get(self, kid: str) -> dict[str, Any] | None:
        h = cast(dict[str, str], await self.redis.hgetall(self.keys.api_key(kid)))
        return key_doc(h) if h else None

    async def verify(self, key: str) -> dict[str, Any] | None:
        """The record of a live key, or None when it is unknown or revoked.

        For callers outside the API's authorize script (the analyst page's login),
        which need the same answer without charging a rate-limit budget.
        """
        presented = digest(self.secret, key)
        kid = cast(str | None, await self.redis.hget(self.keys.api_key_digests, presented))
        if not kid:
            return None
        h = cast(dict[str, str], await self.redis.hgetall(self.keys.api_key(kid)))
        if not h or h.get("revoked_at") or not hmac.compare_digest(h["digest"], presented):
            return None
        return key_doc(h)

    async def binding(self, kid: str) -> AgentBinding | None:
        """The agent binding of key ``kid`` (None: not an agent key).  Cached: a binding
        never changes, and revocation is checked on every request anyway."""
        if kid not in self._bindings:
            h = cast(
                list[str | None],
                await self.redis.hmget(self.keys.api_key(kid), ["agent_ids", "agent_queues"]),
            )
            found = {"agent_ids": h[0] or "", "agent_queues": h[1] or ""}
            while len(self._bindings) >= 10_000:
                self._bindings.pop(next(iter(self._bindings)))
            self._bindings[kid] = binding_of(found)
        return self._bindings[kid]

    async def live(self, kid: str) -> dict[str, Any] | None:
        """The record of key ``kid`` while it is not revoked (sessions re-check it)."""
        doc = await self.get(kid)
        return doc if doc is not None and doc["revoked_at"] is None else None

    async def all(self) -> list[dict[str, Any]]:
        ids = cast(list[str], await self.redis.zrevrange(self.keys.api_key_ids, 0, -1))
        async with self.redis.pipeline(transaction=False) as pipe:
            for kid in ids:
                pipe.hgetall(self.keys.api_key(kid))
            rows = await pipe.execute()
        return [key_doc(r) for r in rows if r]

    async def revoke(self, kid: str) -> dict[str, Any] | None:
        h = cast(dict[str, str], await self.redis.hgetall(self.keys.api_key(kid)))
        if not h:
            return None
        if not h.get("revoked_at"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self.keys.api_key(kid), "revoked_at", str(now_ms()))
                pipe.hdel(self.keys.api_key_digests, h["digest"])
                pipe.sadd(self.keys.api_keys_revoked, kid)
                await pipe.execute()
        return await self.get(kid)

    async def replace(
        self,
        key_id: str,
        name: str,
        scopes: list[str],
        *,
        agent: AgentBinding | None = None,
        created_by: str = "",
    ) -> str:
        """A new key under the fixed id ``key_id``, instead of the one it had: the old key
        stops working at once and its record goes, so issuing one at every start (the
        demo fleet's key) leaves one record, never a growing list.  Returns the key.

        A JWT names only the key id, so the tokens of every earlier key under this id
        must die too: the id goes into the revoked set, which refuses JWTs (a key itself
        is checked against its record).  A key issued this way is used as itself, never
        exchanged for a token."""
        record = self.keys.api_key(key_id)
        old = cast(str | None, await self.redis.hget(record, "digest"))
        async with self.redis.pipeline(transaction=True) as pipe:
            if old:
                pipe.hdel(self.keys.api_key_digests, old)
            pipe.delete(record)  # no field of the old key (revoked_at, last_used_at) stays
            pipe.sadd(self.keys.api_keys_revoked, key_id)
            await pipe.execute()
        self._bindings.pop(key_id, None)
        key, _ = await self.create(name, scopes, created_by=created_by, key_id=key_id, agent=agent)
        return key

    async def count(self) -> int:
        return await self.redis.zcard(self.keys.api_key_ids)

    async def ensure(self, key: str, name: str, scopes: list[str], key_id: str) -> bool:
        """Make sure a configured key exists (EZ_ADMIN_KEY); True when it was created."""
        d = digest(self.secret, key)
        if await self.redis.hexists(self.keys.api_key_digests, d):
            return False
        old = cast(str | None, await self.redis.hget(self.keys.api_key(key_id), "digest"))
        if old:  # EZ_ADMIN_KEY changed: the previous value stops working
            await self.redis.hdel(self.keys.api_key_digests, old)
        await self.create(name, scopes, key=key, key_id=key_id, created_by="EZ_ADMIN_KEY")
        await self.redis.srem(self.keys.api_keys_revoked, key_id)
        return True
