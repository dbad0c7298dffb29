"""Sign-in to the analyst page with an API key, checked against the same key store.

The login form takes an API key (``read`` scope or ``admin``); the session cookie
holds only the key's id, signed with a secret derived from the server's key secret.
Every page load and WebSocket connection re-reads the key, so revoking it (``ezdash
keys revoke`` or ``DELETE /api/auth/keys/{id}``) ends its sessions at once, as it
does for the API.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import tornado.escape
from jinja2 import Template
from panel.auth import BasicAuthProvider, BasicLoginHandler
from panel.config import config
from panel.io.state import state
from tornado.web import RequestHandler

from ..security.apikeys import KeyStore
from ..security.audit import AuditLog

LOGIN_TEMPLATE = Template((Path(__file__).parent / "login.html").read_text())
READ_SCOPES = frozenset({"read", "admin"})


def cookie_secret(key_secret: bytes) -> str:
    """A secret of its own for the page's cookies, the same on every instance."""
    return hmac.new(key_secret, b"ezdash-analyst-cookie", hashlib.sha256).hexdigest()


class KeyLoginHandler(BasicLoginHandler):
    store: KeyStore
    audit: AuditLog

    async def post(self) -> None:
        key = self.get_argument("password", "").strip()
        record = await self.store.verify(key) if key else None
        allowed = record is not None and bool(READ_SCOPES & set(record["scopes"]))
        self.audit.record(
            principal=f"key:{record['id']}" if record else "anonymous",
            action="analyst.login",
            target="analyst",
            client=self.request.remote_ip or "",
            status=200 if allowed else 401,
            detail="" if allowed else ("no read scope" if record else "unknown or revoked key"),
        )
        if record is None or not allowed:
            why = "That key lacks the read scope." if record else "Unknown or revoked API key."
            self.redirect(self.request.path + "?error=" + tornado.escape.url_escape(why))
            return
        self.set_current_user(record["id"])
        self.redirect(self.get_cookie("next_url", state.base_url) or "/")


class KeyAuthProvider(BasicAuthProvider):
    def __init__(self, store: KeyStore, audit: AuditLog) -> None:
        self.store = store  # before super(): bokeh validates the handlers right away
        self.audit = audit
        super().__init__()

    def _remove_user(self, session_context: Any) -> None:
        """Nothing to count: sessions are checked against the key store instead."""

    @property
    def get_user(self) -> None:
        return None

    @property
    def get_user_async(self) -> Any:
        async def get_user(handler: RequestHandler) -> str | None:
            raw = handler.get_secure_cookie("user", max_age_days=config.oauth_expiry)
            if not raw:
                return None
            record = await self.store.live(raw.decode())
            if record is None or not READ_SCOPES & set(record["scopes"]):
                return None
            return str(record["name"] or record["id"])

        return get_user

    @property
    def login_handler(self) -> type[RequestHandler]:
        KeyLoginHandler.store = self.store
        KeyLoginHandler.audit = self.audit
        KeyLoginHandler._login_endpoint = self.login_url
        KeyLoginHandler._login_template = LOGIN_TEMPLATE
        return KeyLoginHandler
