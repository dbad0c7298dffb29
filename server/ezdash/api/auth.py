"""Tokens, API key administration and the audit log."""

from __future__ import annotations

from ..security.apikeys import AgentBinding
from .base import APIHandler
from .errors import Problem, not_found
from .listing import entry_id, list_page
from .models import KeyCreate
from .opdocs import Body, Op, ok, problem
from .params import KEY_PATH, PAGE, Choice, Text, Time


class TokenHandler(APIHandler):
    """Exchange an API key for a short-lived JWT carrying the key's scopes."""

    scopes = {"POST": "any"}
    docs = {
        "POST": Op(
            "Exchange the API key you authenticate with for a short-lived JWT",
            {"200": ok("Token")},
        )
    }
    actions = {"POST": "auth.token"}

    def post(self) -> None:
        if self.principal.kind != "key":
            raise Problem(
                400, "send an API key (Bearer or X-API-Key) to get a token", type="api-key-required"
            )
        key_id = self.principal.id.removeprefix("key:")
        token, ttl = self.services.tokens.mint(key_id, sorted(self.principal.scopes))
        self.audit_target = key_id
        self.write_json({"access_token": token, "token_type": "Bearer", "expires_in": ttl})


class KeysHandler(APIHandler):
    scopes = {"GET": "admin", "POST": "admin"}
    docs = {
        "GET": Op("List API keys (never the keys)", {"200": ok("KeyPage")}),
        "POST": Op(
            "Create an API key; the key is in this answer only",
            {"201": ok("ApiKeyCreated", "Created")},
            body=Body(KeyCreate),
        ),
    }
    actions = {"POST": "auth.keys.create"}

    async def get(self) -> None:
        self.write_json({"items": await self.services.api_keys.all(), "next_cursor": None})

    async def post(self) -> None:
        body = self.json_body(KeyCreate)
        binding = (
            None if body.agent is None else AgentBinding(body.agent.ids, tuple(body.agent.queues))
        )
        key, doc = await self.services.api_keys.create(
            body.name, [str(s) for s in body.scopes], created_by=self.principal.id, agent=binding
        )
        self.audit_target = doc["id"]
        self.audit_detail = f"scopes={','.join(sorted(set(body.scopes)))}"
        self.set_header("Location", f"/api/auth/keys/{doc['id']}")
        self.write_json({**doc, "key": key}, 201)


class KeyHandler(APIHandler):
    scopes = {"DELETE": "admin"}
    docs = {
        "DELETE": Op(
            "Revoke an API key (at once, on every instance)",
            {"200": ok("ApiKey"), "404": problem("Unknown key")},
        )
    }
    actions = {"DELETE": "auth.keys.revoke"}
    path = (KEY_PATH,)

    async def delete(self, key_id: str) -> None:
        doc = await self.services.api_keys.revoke(key_id)
        if doc is None:
            raise not_found("API key", key_id)
        self.write_json(doc)


class AuditHandler(APIHandler):
    scopes = {"GET": "admin"}
    docs = {"GET": Op("Audit log, newest first", {"200": ok("AuditPage")})}
    query = {
        "GET": (
            Text("principal", "Who (key:<id>, ext:<sub>, anonymous)"),
            Text("action", "e.g. agents.restart, tasks.create"),
            Choice("result", "ok, denied or failed", values=("ok", "denied", "failed")),
            Time("from", "At or after"),
            Time("to", "At or before (a to before from selects nothing)"),
            *PAGE,
        )
    }

    async def get(self) -> None:
        page = await list_page(self, entry_id, timed=True)
        start, end = self.q_time("from", page.now), self.q_time("to", page.now)
        items, last = await self.services.audit.page(
            principal=self.q_str("principal"),
            action=self.q_str("action"),
            result=self.q_str("result"),
            start_ms=start,
            end_ms=end,
            limit=page.limit,
            after=page.after,
        )
        self.write_json({"items": items, "next_cursor": page.next_cursor(last)})


default_handlers = [
    (r"/api/auth/token", TokenHandler),
    (r"/api/auth/keys", KeysHandler),
    (r"/api/auth/keys/([^/]+)", KeyHandler),
    (r"/api/audit", AuditHandler),
]
