"""Alerts: the active and recent ones, and the rules (PUT needs ``admin``).

Thin adapters over :mod:`ezdash.alerts`, which keeps, evaluates and delivers them.
"""

from __future__ import annotations

from ..alerts.rules import public_rule, save_rules
from .base import APIHandler
from .models import AlertRules
from .opdocs import Body, Op, ok


class AlertsHandler(APIHandler):
    scopes = {"GET": "read"}
    docs = {
        "GET": Op(
            "Alerts firing now and the most recent ones, with webhook deliveries",
            {"200": ok("AlertsAnswer")},
        )
    }

    async def get(self) -> None:
        self.write_json(await self.services.alerts.view())


class AlertRulesHandler(APIHandler):
    scopes = {"GET": "read", "PUT": "admin"}
    docs = {
        "GET": Op(
            "The alert rules (webhook secrets are never shown)", {"200": ok("AlertRulesAnswer")}
        ),
        "PUT": Op(
            "Replace the alert rules (a webhook without a secret keeps its old one "
            "when id and URL are unchanged)",
            {"200": ok("AlertRulesAnswer")},
            body=Body(AlertRules),
        ),
    }
    actions = {"PUT": "alerts.rules"}

    async def get(self) -> None:
        rules = await self.services.alerts.rules()
        self.write_json({"rules": [public_rule(r) for r in rules]})

    async def put(self) -> None:
        body = self.json_body(AlertRules)
        rules = [r.stored() for r in body.rules]
        svc = self.services
        saved = await save_rules(svc.alerts, rules, await svc.redis_now_ms())
        self.audit_detail = f"rules={len(saved)}"
        self.write_json({"rules": [public_rule(r) for r in saved]})


default_handlers = [
    (r"/api/alerts", AlertsHandler),
    (r"/api/alerts/rules", AlertRulesHandler),
]
