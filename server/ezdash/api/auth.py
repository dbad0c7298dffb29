"""Tokens, API key administration and the audit log."""

from __future__ import annotations

from .base import APIHandler
from .errors import Problem, invalid, not_found
from .listing import entry_id, list_page
from .models import KeyCreate


class TokenHandler(APIHandler):
    """Exchange an API key for a short-lived JWT carrying the key's scopes."""

    scopes = {"POST": "any"}
    actions = {"POST": "auth.token"}

    def post(self) -> None:
        self.check_query(())
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
    actions = {"POST": "auth.keys.create"}

    async def get(self) -> None:
        self.check_query(())
        self.write_json({"items": await self.services.api_keys.all(), "next_cursor": None})

    async def post(self) -> None:
        self.check_query(())
        body = self.json_body(KeyCreate)
        key, doc = await self.services.api_keys.create(
            body.name, [str(s) for s in body.scopes], created_by=self.principal.id
        )
        self.audit_target = doc["id"]
        self.audit_detail = f"scopes={','.join(sorted(set(body.scopes)))}"
        self.set_header("Location", f"/api/auth/keys/{doc['id']}")
        self.write_json({**doc, "key": key}, 201)


class KeyHandler(APIHandler):
    scopes = {"DELETE": "admin"}
    actions = {"DELETE": "auth.keys.revoke"}

    async def delete(self, key_id: str) -> None:
        self.check_query(())
        doc = await self.services.api_keys.revoke(key_id) if len(key_id) <= 64 else None
        if doc is None:
            raise not_found("API key", key_id)
        self.write_json(doc)


class AuditHandler(APIHandler):
    scopes = {"GET": "admin"}

    async def get(self) -> None:
        self.check_query({"principal", "action", "result", "from", "to", "limit", "cursor"})
        page = await list_page(self, entry_id, timed=True)
        start, end = self.q_time("from", page.now), self.q_time("to", page.now)
        if start is not None and end is not None and end < start:
            raise invalid("to", "must not be before from")
        items, last = await self.services.audit.page(
            principal=self.q_str("principal"),
            action=self.q_str("action"),
            result=self.q_str("result", choices=("ok", "denied", "failed")),
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
