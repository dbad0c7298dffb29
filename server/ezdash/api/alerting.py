"""Alert rules, evaluated by the server, with signed webhook deliveries.

One instance at a time evaluates (a short Redis lock, as for maintenance) every
``EZ_ALERT_INTERVAL``. Each rule yields findings per subject (the fleet, an agent, a
queue); a subject that starts breaking its rule fires an alert, one that stops
resolves it. Both transitions are atomic scripts that also write ``alert.fired`` /
``alert.resolved`` to the events stream, so every instance's WebSocket clients hear
of them whichever instance evaluated. Webhooks are POSTed with an HMAC-SHA256
signature over ``timestamp.body``, retried with exponential back-off, and every
attempt's outcome is kept with the alert.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from ..analysis import jobs
from ..analysis.loader import fleet_series, load_plan
from ..ids import new_id
from ..keys import Keys
from ..leader import leader_loop
from ..metrics.histogram import merge
from ..metrics.query import QueryError, percentiles, plan
from ..timeutil import format_ms, parse_duration

if TYPE_CHECKING:
    from .services import Services


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


# -- rules ---------------------------------------------------------------------------


async def load_rules(svc: Services) -> list[dict[str, Any]]:
    raw = await svc.redis.get(svc.keys.alert_rules)
    if not raw:
        return []
    rules = orjson.loads(raw).get("rules", [])
    return list(rules) if isinstance(rules, list) else []


async def save_rules(svc: Services, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace the set. A webhook sent without a secret keeps the secret it had when
    the rule id and URL are unchanged: GET never shows secrets, so a client that
    edits what it read must not silently unsign the webhook."""
    before = {r["id"]: r for r in await load_rules(svc)}
    for rule in rules:
        hook = rule.get("webhook")
        old = (before.get(rule["id"]) or {}).get("webhook")
        if hook and not hook.get("secret") and old and old.get("url") == hook["url"]:
            hook["secret"] = old.get("secret")
    doc = {"rules": rules, "updated_at": await svc.redis_now_ms()}
    await svc.redis.set(svc.keys.alert_rules, orjson.dumps(doc))
    return rules


def public_rule(rule: dict[str, Any]) -> dict[str, Any]:
    out = dict(rule)
    hook = rule.get("webhook")
    if hook:
        out["webhook"] = {"url": hook["url"], "signed": bool(hook.get("secret"))}
    return out


# -- evaluation ----------------------------------------------------------------------


async def _usage(
    svc: Services, filters: dict[str, str], window_ms: int, now: int
) -> tuple[int, int, float | None]:
    """Requests, errors and p95 latency (ms) over the last ``window_ms``."""
    p = plan(
        svc.tiers,
        start_ms=now - window_ms,
        end_ms=now,
        step_ms=60_000,
        now_ms=now,
        group_by="none",
        filters=filters,
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


async def evaluate(svc: Services, rule: dict[str, Any], now: int) -> list[Finding]:
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
    svc: Services, rule: dict[str, Any], filters: dict[str, str], window_ms: int, now: int
) -> Finding:
    """Spend over the last complete ``window`` hours against the forecast made from
    the 30 days before them; fires above the upper bound at ``threshold`` percent."""
    level = float(rule.get("threshold") or 95.0)
    end = now // HOUR * HOUR
    cut = end - window_ms
    filters = _one_dimension(filters)
    p = plan(
        svc.tiers,
        start_ms=cut - 30 * DAY,
        end_ms=end,
        step_ms=HOUR,
        now_ms=now,
        group_by="none",
        filters=filters,
    )
    cost = fleet_series(await load_plan(svc.metrics, p, "cost_usd"), "cost_usd")
    steps = window_ms // HOUR
    history, recent = cost.iloc[:-steps], cost.iloc[-steps:]
    spent = float(recent.sum())
    key = ("cost_burn", rule["id"], level, steps, tuple(sorted(filters.items())), end)

    async def fit() -> Any:
        return await svc.pool.run(jobs.spend_bound, history, int(steps), level)

    expected, upper = cast(tuple[float, float], await svc.cache.get(key, 3600.0, fit))
    return Finding(
        FLEET,
        spent > upper > 0,
        round(spent, 6),
        f"spend of {_scope(filters)} over the last {rule.get('window')} is ${spent:,.2f}; "
        f"forecast ${expected:,.2f}, {level:g}% upper bound ${upper:,.2f}",
    )


def _field(rule_id: str, subject: str) -> str:
    return f"{rule_id}|{subject}"


async def evaluate_all(svc: Services) -> dict[str, int]:
    """One pass: fire what newly breaks its rule, resolve what stopped (or whose rule
    was removed or disabled)."""
    now = await svc.redis_now_ms()
    rules = {r["id"]: r for r in await load_rules(svc) if r.get("enabled", True)}
    active = cast(dict[str, str], await svc.redis.hgetall(svc.keys.alerts_active))
    fired = resolved = 0
    still: set[str] = set()
    for rule in rules.values():
        try:
            findings = await evaluate(svc, rule, now)
        except (QueryError, jobs.JobInputError) as e:
            log.warning("alert rule %s cannot be evaluated: %s", rule["id"], e)
            still.update(f for f in active if f.startswith(rule["id"] + "|"))
            continue
        for finding in findings:
            field = _field(rule["id"], finding.subject)
            if finding.firing:
                still.add(field)
                if field not in active:
                    fired += await _fire(svc, rule, finding, now)
    for field, alert_id in active.items():
        if field in still:
            continue
        rule_id = field.split("|", 1)[0]
        why = "condition cleared" if rule_id in rules else "rule removed or disabled"
        resolved += await _resolve(svc, rules.get(rule_id), field, alert_id, now, why)
    return {"fired": fired, "resolved": resolved}


async def _fire(svc: Services, rule: dict[str, Any], finding: Finding, now: int) -> int:
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
    got = await svc.scripts.run(
        "alert_fire",
        [svc.keys.alerts_active],
        [
            svc.keys.base,
            _field(rule["id"], finding.subject),
            alert_id,
            orjson.dumps(doc),
            int(svc.settings.alert_retention * 1000),
            svc.settings.events_maxlen,
        ],
    )
    if got != alert_id:
        return 0
    log.warning("alert fired: %s", finding.message)
    _deliver_later(svc, rule, doc, "fired")
    return 1


async def _resolve(
    svc: Services,
    rule: dict[str, Any] | None,
    field: str,
    alert_id: str,
    now: int,
    why: str,
) -> int:
    raw = await svc.redis.get(svc.keys.alert(alert_id))
    doc: dict[str, Any] = orjson.loads(raw) if raw else {"id": alert_id}
    doc.update(
        {
            "status": "resolved",
            "resolved_at": format_ms(now),
            "message": f"{doc.get('message', '')} (resolved: {why})",
        }
    )
    done = await svc.scripts.run(
        "alert_resolve",
        [svc.keys.alerts_active],
        [
            svc.keys.base,
            field,
            alert_id,
            orjson.dumps(doc),
            int(svc.settings.alert_retention * 1000),
            svc.settings.events_maxlen,
        ],
    )
    if not int(done):
        return 0
    log.info("alert resolved: %s", doc["message"])
    if rule is not None:
        _deliver_later(svc, rule, doc, "resolved")
    return 1


async def alert_loop(svc: Services) -> None:
    await leader_loop(
        svc,
        svc.keys.alert_lock,
        svc.settings.alert_interval,
        lambda: evaluate_all(svc),
        skipped="alert evaluation skipped",
        errors=(RedisError, OSError),
    )


# -- webhooks ------------------------------------------------------------------------


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, timestamp + "." + body): the timestamp is
    signed too, so a receiver can refuse old replays."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def _deliver_later(svc: Services, rule: dict[str, Any], doc: dict[str, Any], event: str) -> None:
    hook = rule.get("webhook")
    if not hook:
        return
    task = asyncio.create_task(deliver(svc, hook, doc, event))
    svc.deliveries.add(task)
    task.add_done_callback(svc.deliveries.discard)


async def deliver(svc: Services, hook: dict[str, Any], doc: dict[str, Any], event: str) -> None:
    s = svc.settings
    body = orjson.dumps({"event": f"alert.{event}", "alert": doc})
    status: int | None = None
    error: str | None = None
    attempts = 0
    for attempt in range(1, s.webhook_attempts + 1):
        attempts = attempt
        stamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-EzDash-Timestamp": stamp}
        if hook.get("secret"):
            headers["X-EzDash-Signature"] = sign(hook["secret"], stamp, body)
        request = HTTPRequest(
            hook["url"],
            method="POST",
            body=body,
            headers=headers,
            request_timeout=s.webhook_timeout,
            follow_redirects=False,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except Exception as e:  # refused, unresolvable, reset: the receiver's failure
            status, error = None, f"{type(e).__name__}: {e}"
        else:
            status = response.code if response.code != 599 else None
            error = None if status and 200 <= status < 300 else str(response.error or status)
        if error is None:
            break
        if attempt < s.webhook_attempts:
            await asyncio.sleep(s.webhook_backoff * 2 ** (attempt - 1))
    record = {
        "event": event,
        "attempts": attempts,
        "status": status,
        "error": error,
        "at": format_ms(int(time.time() * 1000)),
    }
    key = svc.keys.alert_deliveries(doc["id"])
    try:
        async with svc.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, orjson.dumps(record))
            pipe.pexpire(key, int(s.alert_retention * 1000))
            await pipe.execute()
    except RedisError as e:
        log.warning("webhook delivery of %s not recorded: %s", doc["id"], e)
    if error is not None:
        log.warning("webhook for alert %s failed after %d attempts: %s", doc["id"], attempts, error)


# -- reading -------------------------------------------------------------------------


async def alerts_view(redis: Redis, keys: Keys, recent_limit: int = 100) -> dict[str, Any]:
    """Active alerts and the most recent ones, each with its deliveries (the API, the
    summary and the analyst page read them alike)."""
    active_ids = set(cast(dict[str, str], await redis.hgetall(keys.alerts_active)).values())
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
