"""The audit log: one capped Redis stream of who did what, to what, from where, and
with what result.  Every write, control and admin request is recorded, and so is
every denied one (401, 403, 429), whatever its method."""

from __future__ import annotations

from typing import Any, cast

from redis.asyncio import Redis

from ..keys import Keys
from ..timeutil import format_ms

SCAN_BUDGET = 10_000


def entry_doc(entry_id: str, f: dict[str, str]) -> dict[str, Any]:
    return {
        "id": entry_id,
        "ts": format_ms(int(entry_id.split("-")[0])),
        "principal": f.get("principal"),
        "action": f.get("action"),
        "target": f.get("target") or None,
        "client": f.get("client"),
        "status": int(f.get("status", "0")),
        "result": f.get("result"),
        "detail": f.get("detail") or None,
    }


class AuditLog:
    def __init__(self, redis: Redis, keys: Keys, maxlen: int) -> None:
        self.redis = redis
        self.keys = keys
        self.maxlen = maxlen

    async def write(
        self,
        *,
        principal: str,
        action: str,
        target: str,
        client: str,
        status: int,
        detail: str = "",
    ) -> None:
        result = "denied" if status in (401, 403, 429) else "ok" if status < 400 else "failed"
        await self.redis.xadd(
            self.keys.audit,
            {
                "principal": principal,
                "action": action,
                "target": target,
                "client": client,
                "status": str(status),
                "result": result,
                "detail": detail[:500],
            },
            maxlen=self.maxlen,
            approximate=True,
        )

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
