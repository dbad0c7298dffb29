"""Rate-limit budgets: which budget a request spends, and the IETF RateLimit fields.

One Redis script (``lua/authorize.lua``, GCRA) both authenticates and charges the
budget, so every server instance shares the same count and a request costs one
round trip.  Budgets: ``read`` for GETs, ``write`` for task and ingest writes,
``control`` for restarts, stops and admin actions, and ``public`` per client IP
for unauthenticated calls (open endpoints and failed authentications).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from ..settings import Settings, parse_rate


@dataclass(frozen=True)
class Budget:
    name: str
    limit: int
    period_s: float

    @property
    def policy_header(self) -> str:
        return f'"{self.name}";q={self.limit};w={math.ceil(self.period_s)}'

    def state_header(self, remaining: int, reset_ms: int) -> str:
        return f'"{self.name}";r={max(0, remaining)};t={math.ceil(reset_ms / 1000)}'


SCOPE_BUDGET = {
    "read": "read",
    "write": "write",
    "control": "control",
    "admin": "control",
    "any": "read",
    "agent": "agent",
    None: "public",
}


def budget_for(method: str, scope: str | None) -> str:
    """Reads spend the read budget whatever scope they need (an admin listing keys
    is still a read); other methods spend their scope's budget."""
    if scope is None:
        return "public"
    return "read" if method in ("GET", "HEAD") else SCOPE_BUDGET[scope]


def budgets(settings: Settings) -> dict[str, Budget]:
    out = {}
    for name, spec in (
        ("read", settings.rate_read),
        ("write", settings.rate_write),
        ("control", settings.rate_control),
        ("public", settings.rate_public),
        ("agent", settings.rate_agent),
    ):
        limit, period = parse_rate(spec)
        out[name] = Budget(name, limit, period)
    return out


class LocalLimiter:
    """GCRA for one budget, in this process: the open endpoints (live, ready, health,
    the API documents) must answer while Redis is down and never write to it, yet a
    client hammering them is still limited (per client address, per instance).

    The same arithmetic as ``lua/authorize.lua``; the oldest clients are forgotten
    past ``size`` so memory stays bounded whatever addresses call."""

    def __init__(self, budget: Budget, size: int = 50_000) -> None:
        self.budget = budget
        self.size = size
        self._tat: OrderedDict[str, float] = OrderedDict()

    def charge(self, client: str, now_ms: float | None = None) -> tuple[bool, int, int, int]:
        """(allowed, remaining, reset_ms, retry_ms) after one request from ``client``."""
        now = time.monotonic() * 1000 if now_ms is None else now_ms
        period = self.budget.period_s * 1000
        emission = period / self.budget.limit
        tat = max(self._tat.get(client, now), now)
        new_tat = tat + emission
        allow_at = new_tat - period
        if allow_at > now:
            return False, 0, math.ceil(tat - now), math.ceil(allow_at - now)
        self._tat[client] = new_tat
        self._tat.move_to_end(client)
        if len(self._tat) > self.size:
            self._tat.popitem(last=False)
        return True, math.floor((now - allow_at) / emission), math.ceil(new_tat - now), 0
