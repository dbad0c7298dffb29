"""The alert keys in Redis, read and written in one place.

The engine, the HTTP handlers and the analyst page all go through :class:`AlertStore`:
firing and resolving are the ``alert_fire`` / ``alert_resolve`` scripts (which also
emit to the events stream), everything else plain reads and writes of the keys
``Keys`` names for alerts.
"""

from __future__ import annotations

from typing import Any, cast

import orjson
from redis.asyncio import Redis

from ..keys import Keys
from ..store.scripts import Scripts


def active_field(rule_id: str, subject: str) -> str:
    """The field of the active hash for one rule and subject (rule ids have no ``|``)."""
    return f"{rule_id}|{subject}"


def rule_of(field: str) -> str:
    """The rule id of an active hash field."""
    return field.split("|", 1)[0]


class AlertStore:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        scripts: Scripts,
        *,
        retention_ms: int,
        events_maxlen: int,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.retention_ms = retention_ms
        self.events_maxlen = events_maxlen

    # -- rules -------------------------------------------------------------------

    async def rules(self) -> list[dict[str, Any]]:
        raw = await self.redis.get(self.keys.alert_rules)
        if not raw:
            return []
        rules = orjson.loads(raw).get("rules", [])
        return list(rules) if isinstance(rules, list) else []

    async def put_rules(self, rules: list[dict[str, Any]], updated_at: int) -> None:
        """Replace the whole set."""
        doc = {"rules": rules, "updated_at": updated_at}
        await self.redis.set(self.keys.alert_rules, orjson.dumps(doc))

    # -- alerts ------------------------------------------------------------------

    async def active(self) -> dict[str, str]:
        """Active hash field -> id of the alert firing for it."""
        return cast(dict[str, str], await self.redis.hgetall(self.keys.alerts_active))

    async def get(self, alert_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self.keys.alert(alert_id))
        return cast(dict[str, Any], orjson.loads(raw)) if raw else None

    async def fire(self, field: str, doc: dict[str, Any]) -> bool:
        """Record ``doc`` as firing for ``field``; false if an alert already fires for it."""
        got = await self.scripts.run(
            "alert_fire",
            [self.keys.alerts_active],
            [self.keys.base, field, doc["id"], orjson.dumps(doc), *self._limits()],
        )
        return bool(got == doc["id"])

    async def resolve(self, field: str, alert_id: str, doc: dict[str, Any]) -> bool:
        """Record ``doc`` as alert ``alert_id`` resolved; false if that alert no longer
        fired for ``field``."""
        done = await self.scripts.run(
            "alert_resolve",
            [self.keys.alerts_active],
            [self.keys.base, field, alert_id, orjson.dumps(doc), *self._limits()],
        )
        return bool(int(done))

    def _limits(self) -> tuple[int, int]:
        return self.retention_ms, self.events_maxlen

    async def record_delivery(self, alert_id: str, record: dict[str, Any]) -> None:
        """Append one webhook delivery's outcome; kept as long as the alert."""
        key = self.keys.alert_deliveries(alert_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, orjson.dumps(record))
            pipe.pexpire(key, self.retention_ms)
            await pipe.execute()

    async def view(self, recent_limit: int = 100) -> dict[str, Any]:
        """Active alerts and the most recent ones, each with its deliveries (the API, the
        summary and the analyst page read them alike)."""
        redis, keys = self.redis, self.keys
        active_ids = set((await self.active()).values())
        recent_ids = cast(list[str], await redis.zrevrange(keys.alerts_recent, 0, recent_limit - 1))
        ids = list(dict.fromkeys([*sorted(active_ids), *recent_ids]))
        async with redis.pipeline(transaction=False) as pipe:
            for alert_id in ids:
                pipe.get(keys.alert(alert_id))
                pipe.lrange(keys.alert_deliveries(alert_id), 0, -1)
            replies = await pipe.execute()
        docs: dict[str, dict[str, Any]] = {}
        for alert_id, raw, deliveries in zip(ids, replies[::2], replies[1::2], strict=True):
            if raw:
                doc = orjson.loads(raw)
                doc["deliveries"] = [orjson.loads(d) for d in deliveries]
                docs[alert_id] = doc
        active = sorted(
            (docs[i] for i in active_ids if i in docs), key=lambda d: d["fired_at"], reverse=True
        )
        recent = [docs[i] for i in recent_ids if i in docs]
        return {"active": active, "recent": recent}
