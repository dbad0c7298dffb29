"""The rule set: kept whole as one document, shown without webhook secrets.

Rules arrive validated (the HTTP layer's ``AlertRule`` model checks them and passes its
``stored()`` form); here is what saving and showing them means.
"""

from __future__ import annotations

from typing import Any

from .store import AlertStore


async def save_rules(
    store: AlertStore, rules: list[dict[str, Any]], now_ms: int
) -> list[dict[str, Any]]:
    """Replace the set. A webhook sent without a secret keeps the secret it had when
    the rule id and URL are unchanged: GET never shows secrets, so a client that
    edits what it read must not silently unsign the webhook."""
    before = {r["id"]: r for r in await store.rules()}
    for rule in rules:
        hook = rule.get("webhook")
        old = (before.get(rule["id"]) or {}).get("webhook")
        if hook and not hook.get("secret") and old and old.get("url") == hook["url"]:
            hook["secret"] = old.get("secret")
    await store.put_rules(rules, updated_at=now_ms)
    return rules


def public_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """A rule as shown: a webhook's secret only as whether there is one."""
    out = dict(rule)
    hook = rule.get("webhook")
    if hook:
        out["webhook"] = {"url": hook["url"], "signed": bool(hook.get("secret"))}
    return out
