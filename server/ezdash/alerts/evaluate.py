"""Evaluating the rules: findings per subject, alerts fired and resolved, the loop.

Each rule kind reads what it judges (usage rollups, agents, queues, a spend forecast
fitted in the analytics pool) and yields a finding per subject; :func:`evaluate_all`
turns the changes since the last pass into ``alert_fire`` / ``alert_resolve``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from ..analysis import jobs
from ..ids import new_id
from ..leader import leader_loop
from ..metrics.histogram import merge
from ..metrics.query import QueryError, percentiles
from ..timeutil import format_ms, parse_duration
from .context import AlertContext
from .delivery import deliver_later
from .store import active_field, rule_of

log = logging.getLogger("ezdash.alerts")

HOUR = 3_600_000
DAY = 86_400_000
FLEET = "fleet"


@dataclass(frozen=True)
class Finding:
    subject: str
    firing: bool
    value: float | None
    message: str


async def _usage(
    svc: AlertContext, filters: dict[str, str], window_ms: int, now: int
) -> tuple[int, int, float | None]:
    """Requests, errors and p95 latency (ms) over the last ``window_ms``."""
    p = svc.analytics.plan(
        start_ms=now - window_ms, end_ms=now, step_ms=60_000, now_ms=now, filters=filters
    )
    groups = [g for g, _ in await svc.metrics.groups(p)]
    if not groups:
        return 0, 0, None
    data = await svc.metrics.counters(p, groups, ["requests", "errors"])
    hists = await svc.metrics.histograms(p, groups, "latency")
    requests = int(sum(data[(g, "requests")].sum() for g in groups))
    errors = int(sum(data[(g, "errors")].sum() for g in groups))
    merged = merge(*(h for g in groups for h in hists[g]))
    (p95,) = percentiles([merged], (0.95,))[0]
    return requests, errors, p95


def _one_dimension(filters: dict[str, str]) -> dict[str, str]:
    """Rollups are indexed by one dimension at a time: keep the first filter."""
    return dict(sorted(filters.items())[:1])


def _scope(filters: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(filters.items())) or "the fleet"


async def evaluate(svc: AlertContext, rule: dict[str, Any], now: int) -> list[Finding]:
    kind = rule["kind"]
    threshold = rule.get("threshold")
    filters = {k: v for k, v in (rule.get("filters") or {}).items() if v}
    window_ms = int(parse_duration(rule.get("window", "5m")) * 1000)
    window = rule.get("window", "5m")
    if kind in ("error_rate", "latency_p95"):
        filters = _one_dimension(filters)
        requests, errors, p95 = await _usage(svc, filters, window_ms, now)
        if kind == "error_rate":
            rate = errors / requests if requests else 0.0
            enough = requests >= int(rule.get("min_requests", 10))
            firing = enough and threshold is not None and rate > threshold
            return [
                Finding(
                    FLEET,
                    firing,
                    round(rate, 6),
                    f"error rate of {_scope(filters)} is {rate:.1%} over {window} "
                    f"({errors}/{requests} requests; threshold {threshold:.1%})",
                )
            ]
        firing = p95 is not None and threshold is not None and p95 > threshold
        shown = "no data" if p95 is None else f"{p95:.0f} ms"
        return [
            Finding(
                FLEET,
                firing,
                p95,
                f"p95 latency of {_scope(filters)} is {shown} over {window} "
                f"(threshold {threshold:g} ms)",
            )
        ]
    if kind == "agent_unresponsive":
        out = []
        after: str | None = None
        while True:
            items, after = await svc.agents.page(status="unresponsive", limit=500, after=after)
            for a in items:
                if filters.get("agent") in (None, a["id"]):
                    age = a.get("heartbeat_age_s")
                    out.append(
                        Finding(
                            a["id"],
                            True,
                            age,
                            f"agent {a['id']} has not sent a heartbeat for {age} s",
                        )
                    )
            if after is None:
                return out
    if kind == "queue_age":
        out = []
        for q in await svc.tasks.queue_stats(now):
            if filters.get("queue") in (None, q["name"]):
                age = float(q["oldest_age_s"])
                out.append(
                    Finding(
                        q["name"],
                        threshold is not None and age > threshold,
                        age,
                        f"oldest task in queue {q['name']} has waited {age:.0f} s "
                        f"(threshold {threshold:g} s)",
                    )
                )
        return out
    if kind == "cost_burn":
        return [await _cost_burn(svc, rule, filters, window_ms, now)]
    return []


async def _cost_burn(
    svc: AlertContext, rule: dict[str, Any], filters: dict[str, str], window_ms: int, now: int
) -> Finding:
    """Spend over the last complete ``window`` hours against the forecast made from
    the 30 days before them; fires above the upper bound at ``threshold`` percent."""
    level = float(rule.get("threshold") or 95.0)
    filters = _one_dimension(filters)
    cost = await svc.analytics.fleet(
        "cost_usd",
        step_ms=HOUR,
        span_ms=window_ms + 30 * DAY,
        filters=filters,
        now_ms=now,
        keep_step=False,
    )
    steps = window_ms // HOUR
    spent = float(cost.series.iloc[-steps:].sum())
    expected, upper = await svc.analytics.spend_bound(cost, steps, level)
    return Finding(
        FLEET,
        spent > upper > 0,
        round(spent, 6),
        f"spend of {_scope(filters)} over the last {rule.get('window')} is ${spent:,.2f}; "
        f"forecast ${expected:,.2f}, {level:g}% upper bound ${upper:,.2f}",
    )


async def evaluate_all(svc: AlertContext) -> dict[str, int]:
    """One pass: fire what newly breaks its rule, resolve what stopped (or whose rule
    was removed or disabled)."""
    now = await svc.redis_now_ms()
    rules = {r["id"]: r for r in await svc.alerts.rules() if r.get("enabled", True)}
    active = await svc.alerts.active()
    fired = resolved = 0
    still: set[str] = set()
    for rule in rules.values():
        try:
            findings = await evaluate(svc, rule, now)
        except (QueryError, jobs.JobInputError) as e:
            log.warning("alert rule %s cannot be evaluated: %s", rule["id"], e)
            still.update(f for f in active if rule_of(f) == rule["id"])
            continue
        for finding in findings:
            field = active_field(rule["id"], finding.subject)
            if finding.firing:
                still.add(field)
                if field not in active:
                    fired += await _fire(svc, rule, finding, now)
    for field, alert_id in active.items():
        if field in still:
            continue
        rule_id = rule_of(field)
        why = "condition cleared" if rule_id in rules else "rule removed or disabled"
        resolved += await _resolve(svc, rules.get(rule_id), field, alert_id, now, why)
    return {"fired": fired, "resolved": resolved}


async def _fire(svc: AlertContext, rule: dict[str, Any], finding: Finding, now: int) -> int:
    alert_id = new_id("alert")
    doc = {
        "id": alert_id,
        "rule_id": rule["id"],
        "rule_name": rule.get("name") or rule["id"],
        "kind": rule["kind"],
        "subject": finding.subject,
        "status": "firing",
        "value": finding.value,
        "threshold": rule.get("threshold"),
        "message": finding.message,
        "fired_at": format_ms(now),
        "resolved_at": None,
    }
    if not await svc.alerts.fire(active_field(rule["id"], finding.subject), doc):
        return 0
    log.warning("alert fired: %s", finding.message)
    deliver_later(svc, rule, doc, "fired")
    return 1


async def _resolve(
    svc: AlertContext,
    rule: dict[str, Any] | None,
    field: str,
    alert_id: str,
    now: int,
    why: str,
) -> int:
    doc = await svc.alerts.get(alert_id)
    if doc is None:
        doc = {"id": alert_id}
    doc.update(
        {
            "status": "resolved",
            "resolved_at": format_ms(now),
            "message": f"{doc.get('message', '')} (resolved: {why})",
        }
    )
    if not await svc.alerts.resolve(field, alert_id, doc):
        return 0
    log.info("alert resolved: %s", doc["message"])
    if rule is not None:
        deliver_later(svc, rule, doc, "resolved")
    return 1


async def alert_loop(svc: AlertContext) -> None:
    await leader_loop(
        svc,
        svc.keys.alert_lock,
        svc.settings.alert_interval,
        lambda: evaluate_all(svc),
        skipped="alert evaluation skipped",
        errors=(RedisError, OSError),
    )
