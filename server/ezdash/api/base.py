"""The base of every handler: JSON in and out, problem errors, auth hook, query parsing.

Handlers stay thin: parse and validate input here, call a store, serialise.
Every handler class declares ``scopes`` (HTTP method -> scope, or None for
open endpoints); ``app.check_handler_auth`` refuses to start a server with a
method that made no decision, so no endpoint is left open by accident.

Two gates no handler can step around, because they sit under every way a
handler can answer:

- **Credentials.** A read with a plausible credential runs while its check is
  still in Redis (one round trip saved), but ``flush`` and ``finish`` (and so
  ``write_json``, ``send_error``, an SSE stream's first bytes, a redirect) wait
  for the check; a failed check replaces whatever the handler prepared with the
  refusal. WebSocket upgrades never run early.
- **Body size.** Bodies are streamed in (``stream_request_body``): an
  over-limit ``Content-Length`` is refused with 413 before a byte of the body
  is read, and a chunked body is counted as it arrives.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from tornado.concurrent import Future
from tornado.iostream import StreamClosedError
from tornado.web import Finish, HTTPError, RequestHandler, stream_request_body

from ..security.apikeys import digest, looks_like_jwt
from ..security.ratelimit import Budget, budget_for
from ..security.tokens import TokenError
from ..store.availability import redis_unavailable
from ..store.errors import DomainError
from ..timeutil import parse_time
from .errors import Problem, invalid, not_found, problem_for
from .models import UNION_TAGS
from .opdocs import Op
from .params import (
    ACCESS_TOKEN,
    IDEMPOTENCY_KEY,
    LIMIT,
    Group,
    Header,
    Invalid,
    Param,
    PathId,
    members,
)
from .services import Services

log = logging.getLogger("ezdash.api")
M = TypeVar("M", bound=BaseModel)
ALL_SCOPES = frozenset({"read", "write", "control", "admin"})
"""What a JWT or the local principal may carry: never ``agent``, which needs a key's
binding (agent ids, queues) and so only an agent key has."""
AGENT_ONLY = frozenset({"agent"})
EXPOSED_HEADERS = "RateLimit, RateLimit-Policy, Retry-After, Location, Idempotent-Replayed"
ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-API-Key, Last-Event-ID"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling.  Authentication (API keys, JWT) fills this in ``prepare``."""

    id: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    kind: str = "anonymous"

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


class Answered(Finish, StreamClosedError):
    """Raised from ``flush`` once a failed credential check has been answered: handlers
    that stream stop as if the client had gone, and Tornado finishes quietly."""


@stream_request_body
class APIHandler(RequestHandler):
    """JSON API handler.  Errors are problem JSON, never HTML or a traceback.

    ``scopes`` maps each method to the scope it needs: ``None`` for open endpoints,
    ``"any"`` for any valid credential.  ``query_token`` lets SSE and WebSocket
    handlers take ``?access_token=`` (browsers cannot set headers there); every other
    handler refuses a token in the query string, which would end up in logs.
    """

    scopes: dict[str, str | None] = {}
    actions: dict[str, str] = {}
    audit_success = True
    """False for an agent's protocol traffic (takes, finishes, heartbeats, batches):
    thousands a minute that the task and agent records already keep; only its
    refusals are audited (as every GET's 401, 403 and 429 are)."""
    query: dict[str, tuple[Param | Group, ...]] = {}
    """Query parameters each method takes (see ``params``); anything else is 400."""
    path: tuple[PathId, ...] = ()
    """What each captured path segment of the route must look like (else 404)."""
    headers_in: dict[str, tuple[Header, ...]] = {}
    """Request headers each method reads (Idempotency-Key, Last-Event-ID)."""
    docs: dict[str, Op] = {}
    """How each method answers, for the OpenAPI document (see ``opdocs``); every
    routed class declares its own, a subclass does not inherit them."""
    query_token = False
    principal: Principal
    audit_target = ""
    audit_detail = ""

    @property
    def services(self) -> Services:
        svc: Services = self.settings["services"]
        return svc

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
        for name, value in getattr(self, "_sticky", {}).items():
            self.set_header(name, value)  # rate-limit and CORS fields survive an error

    def initialize(self) -> None:
        self.principal = ANONYMOUS
        self._sticky: dict[str, str] = {}
        self._auth: asyncio.Future[Principal] | None = None
        self._finishing: asyncio.Future[None] | None = None
        self._received = 0
        self.args: dict[str, Any] = {}
        self._digest: str | None = None  # of the API key presented, computed once
        self._claims: Any = None  # of the JWT presented, verified once

    def _key_digest(self, secret: str) -> str:
        if self._digest is None:
            self._digest = digest(self.services.secrets.key_secret, secret)
        return self._digest

    def _verified(self, token: str) -> Any:
        """The JWT's claims (raises TokenError); verified once per request."""
        if self._claims is None:
            self._claims = self.services.tokens.verify(token)
        return self._claims

    def _plausible(self) -> bool:
        """Speculate only for credentials that cannot be made up: a JWT whose signature
        verifies here, or an API key this instance accepted within the last minute.
        Anything else is checked before any work is done."""
        try:
            credential = self._credential()
        except Problem:
            return False
        if credential is None or not self.services.settings.auth:
            return False
        kind, secret = credential
        if kind == "jwt":
            try:
                self._verified(secret)
            except TokenError:
                return False
            return True
        return self.services.recent_keys.seen(self._key_digest(secret))

    async def settle(self) -> None:
        """Wait for a credential check started in prepare(); raise its problem, if any.

        Handlers never need to call it (``flush`` and ``finish`` do); a handler about
        to do costly work may, so that a refused caller costs nothing."""
        auth = self._auth
        if auth is None:
            return
        try:
            self.principal = await auth
            self._check_scope(self.scopes[self.request.method or "GET"])
        finally:
            self._auth = None

    def keep_header(self, name: str, value: str) -> None:
        """A header every answer carries, including problem answers (none once a
        WebSocket is open: its messages have no headers)."""
        self._sticky[name] = value
        if getattr(self, "ws_connection", None) is None:
            self.set_header(name, value)

    async def prepare(self) -> None:
        method = self.request.method or "GET"
        self._cors()
        if method == "OPTIONS":
            return
        if method not in self.scopes:
            allowed = self.allowed_methods()
            raise Problem(
                405,
                f"{method} is not allowed here; use {allowed}",
                type="method-not-allowed",
                headers={"Allow": allowed},
            )
        length = self.request.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.services.settings.max_body_bytes:
            raise self._too_large()
        required = self.scopes[method]
        upgrade = self.request.headers.get("Upgrade") is not None
        if method in ("GET", "HEAD") and required is not None and not upgrade and self._plausible():
            # Reads run while the credential is checked (one Redis round trip saved);
            # nothing is sent until the check passed: see flush() and finish().
            self._auth = asyncio.ensure_future(self.authenticate(required))
        else:
            self.principal = await self.authenticate(required)
            self._check_scope(required)
        self.args = self.read_args()

    def allowed_methods(self) -> str:
        return ", ".join(sorted({*self.scopes, "OPTIONS"}))

    # -- the request body ---------------------------------------------------------
    def data_received(self, chunk: bytes) -> None:
        """Collect the body up to the limit; past it, answer 413 at once."""
        if self._finished or self._finishing is not None:
            return  # answered already; the rest is drained by the connection
        self._received += len(chunk)
        if self._received > self.services.settings.max_body_bytes:
            problem = self._too_large()
            self.send_error(413, exc_info=(Problem, problem, None))
            return
        self.request.body += chunk

    def _too_large(self) -> Problem:
        self._linger()
        limit = self.services.settings.max_body_bytes
        return Problem(413, f"request body is larger than {limit} bytes", type="too-large")

    def _linger(self) -> None:
        """Answering before the body is read: drain it before closing (GuardedStream)."""
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None and hasattr(stream, "linger"):
            stream.linger = True

    # -- the credential gate (see the module docstring) ---------------------------
    def flush(self, include_footers: bool = False) -> Future[None]:
        if self._auth is not None and self._auth.done() and not self._settle_now():
            refused: Future[None] = Future()
            refused.set_exception(Answered())
            return refused
        if self._auth is None:
            return super().flush(include_footers)
        return asyncio.ensure_future(self._flush_when_allowed(include_footers))

    async def _flush_when_allowed(self, include_footers: bool) -> None:
        if not await self._allowed():
            raise Answered()
        await super().flush(include_footers)

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> Future[None]:
        if self._auth is not None and self._auth.done() and self._finishing is None:
            if chunk is not None:
                self.write(chunk)
                chunk = None
            if not self._settle_now():  # the refusal has been answered in its place
                done: Future[None] = Future()
                done.set_result(None)
                return done
        if self._auth is None and self._finishing is None:
            length = self.request.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > len(self.request.body):
                self._linger()
            return super().finish(chunk)
        if chunk is not None:
            self.write(chunk)
        if self._finishing is None:
            self._finishing = asyncio.ensure_future(self._finish_when_allowed())
        return self._finishing

    async def _finish_when_allowed(self) -> None:
        allowed = await self._allowed()
        self._finishing = None
        if allowed:
            self.finish()

    async def _allowed(self) -> bool:
        """Settle the check; when it fails, answer its problem in place of whatever
        the handler prepared (its status, headers and body are discarded)."""
        try:
            await self.settle()
        except Exception as e:
            self._refuse(e)
            return False
        return True

    def _settle_now(self) -> bool:
        """The check has already finished (the usual case by the time a read is
        done): settle it without a task.  A refusal replaces the prepared answer,
        as in _allowed; False then."""
        auth, self._auth = self._auth, None
        assert auth is not None and auth.done()
        try:
            self.principal = auth.result()
            self._check_scope(self.scopes[self.request.method or "GET"])
        except Exception as e:
            self._refuse(e)
            return False
        return True

    def _refuse(self, e: Exception) -> None:
        self._finishing = None
        self.clear()
        problem = problem_for(e, 500, self.allowed_methods())
        self.set_status(problem.status_code)
        self.write_error(problem.status_code, exc_info=(type(e), e, e.__traceback__))

    def _check_scope(self, required: str | None) -> None:
        if required is None:
            return
        if required == "any" and self.principal.scopes == AGENT_ONLY:
            raise Problem(
                403,
                "an agent key reaches only the agent gateway (/api/agent/v1)",
                type="forbidden",
            )
        if required != "any" and not self.principal.allows(required):
            raise Problem(
                403,
                f"this needs the {required!r} scope; the credentials have "
                f"{', '.join(sorted(self.principal.scopes)) or 'none'}",
                type="forbidden",
            )

    @property
    def client_ip(self) -> str:
        return self.request.remote_ip or "unknown"

    def _credential(self) -> tuple[str, str] | None:
        """(kind, secret) from the request: Bearer, X-API-Key, or ?access_token=."""
        auth = self.request.headers.get("Authorization")
        if auth is not None:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise Problem(
                    401,
                    "use 'Authorization: Bearer <API key or JWT>'",
                    type="unauthorized",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            value = value.strip()
            return ("jwt" if looks_like_jwt(value) else "key"), value
        api_key = self.request.headers.get("X-API-Key")
        if api_key is not None:
            return "key", api_key.strip()
        token = self.get_query_argument("access_token", None)
        if token is not None:
            if not self.query_token:
                raise Problem(
                    401,
                    "access_token in the query string is accepted only by the "
                    "SSE and WebSocket endpoints; send an Authorization header",
                    type="unauthorized",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            return "jwt", token
        return None

    async def authenticate(self, required: str | None, budget: str | None = None) -> Principal:
        """Who is calling, and charge their rate-limit budget (the method's, unless
        ``budget`` names one: a gateway socket's messages), in one Redis call."""
        svc = self.services
        s = svc.settings
        budget = budget or budget_for(self.request.method or "GET", required)
        if required is None:  # open endpoint: credentials, if any, are not looked at
            self._rate_here()
            return ANONYMOUS
        if not s.auth:
            await self._rate("anon", "", f"ip:{self.client_ip}", budget)
            return Principal("local", ALL_SCOPES, "local")
        credential = self._credential()
        if credential is None:
            await self._rate("anon", "", f"ip:{self.client_ip}", "public")
            raise Problem(
                401,
                "this needs credentials: an API key or a JWT as a Bearer token",
                type="unauthorized",
                headers={"WWW-Authenticate": "Bearer"},
            )
        kind, secret = credential
        if kind == "key":
            presented = self._key_digest(secret)
            status, kid, scopes, stored = await self._rate("key", presented, "", budget)
            if status != "ok" or not hmac.compare_digest(stored, presented):
                svc.recent_keys.forget(presented)
                raise Problem(
                    401,
                    "unknown or revoked API key",
                    type="unauthorized",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            svc.recent_keys.remember(presented)
            return Principal(f"key:{kid}", frozenset(scopes.split(",")), "key")
        try:
            claims = self._verified(secret)
        except TokenError as e:
            await self._rate("anon", "", f"ip:{self.client_ip}", "public")
            raise Problem(
                401,
                f"token refused: {e}",
                type="unauthorized",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            ) from None
        principal = f"ext:{claims.subject}" if claims.external else claims.subject
        status, *_ = await self._rate("jwt", claims.key_id or "", principal, budget)
        if status != "ok":
            raise Problem(
                401,
                "token refused: its API key was revoked",
                type="unauthorized",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return Principal(principal, claims.scopes & ALL_SCOPES, "jwt")

    def _rate_here(self) -> None:
        """Open endpoints spend the public budget in this process, not in Redis: they
        answer while Redis is down and never write to it."""
        svc = self.services
        if not svc.settings.rate_limit:
            return
        allowed, remaining, reset_ms, retry_ms = svc.open_limiter.charge(self.client_ip)
        self._rate_answer(svc.open_limiter.budget, allowed, remaining, reset_ms, retry_ms)

    def _rate_answer(
        self, budget: Budget, allowed: bool, remaining: int, reset_ms: int, retry_ms: int
    ) -> None:
        """The RateLimit fields on every answer; 429 with Retry-After when over budget."""
        self.keep_header("RateLimit-Policy", budget.policy_header)
        self.keep_header("RateLimit", budget.state_header(remaining, reset_ms))
        if not allowed:
            retry = max(1, math.ceil(retry_ms / 1000))
            raise Problem(
                429,
                f"rate limit of the {budget.name!r} budget reached "
                f"({budget.limit} per {budget.period_s:g}s); retry in {retry}s",
                type="rate-limited",
                headers={"Retry-After": str(retry)},
            )

    async def _rate(
        self, mode: str, ident: str, principal: str, budget_name: str
    ) -> tuple[str, str, str, str]:
        """Run the authorize script; set the RateLimit fields; 429 when over budget."""
        svc = self.services
        budget = svc.budgets[budget_name]
        enforce = svc.settings.rate_limit
        if not enforce and mode == "anon":
            return "ok", "", "", ""
        res = await svc.authorize(
            [svc.keys.api_key_digests],
            [
                svc.keys.base,
                mode,
                ident,
                principal,
                budget.name,
                budget.limit,
                int(budget.period_s * 1000),
                1 if enforce else 0,
                f"ip:{self.client_ip}",
            ],
        )
        status, kid, scopes, stored, allowed, remaining, reset_ms, retry_ms = res
        if enforce:
            self._rate_answer(
                budget, bool(int(allowed)), int(remaining), int(reset_ms), int(retry_ms)
            )
        return str(status), str(kid), str(scopes), str(stored)

    # -- CORS -------------------------------------------------------------------
    def _cors(self) -> None:
        origin = self.request.headers.get("Origin")
        self.keep_header("Vary", "Origin")
        if not origin:
            return
        allowed = self.services.settings.cors_origins
        if "*" in allowed:
            self.keep_header("Access-Control-Allow-Origin", "*")
        elif origin in allowed:
            self.keep_header("Access-Control-Allow-Origin", origin)
            self.keep_header("Access-Control-Allow-Credentials", "true")
        else:
            if self.request.method == "OPTIONS":
                raise Problem(403, f"origin {origin!r} is not allowed", type="cors-forbidden")
            return
        self.keep_header("Access-Control-Expose-Headers", EXPOSED_HEADERS)

    def options(self, *args: str) -> None:
        """CORS preflight: answered without credentials."""
        if not self.request.headers.get("Origin"):
            raise Problem(400, "a preflight needs an Origin header", type="bad-preflight")
        wanted = self.request.headers.get("Access-Control-Request-Method", "")
        if wanted and wanted not in self.scopes:
            raise Problem(405, f"{wanted} is not allowed here", type="method-not-allowed")
        self.set_header("Access-Control-Allow-Methods", ", ".join(sorted(self.scopes)))
        self.set_header("Access-Control-Allow-Headers", ALLOWED_HEADERS)
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.finish()

    # -- audit ------------------------------------------------------------------
    def on_finish(self) -> None:
        if self._auth is not None and not self._auth.done():
            self._auth.cancel()
        method = self.request.method or "GET"
        status = self.get_status()
        if method == "OPTIONS" or (method in ("GET", "HEAD") and status not in (401, 403, 429)):
            return
        if status < 400 and not self.audit_success:
            return
        action = self.actions.get(method) or f"{method} {self.request.path}"
        path_args = getattr(self, "path_args", None)  # unset when Tornado refused the method
        target = self.audit_target or (path_args[0] if path_args else "")
        self.services.audit.record(
            principal=self.principal.id,
            action=action,
            target=str(target),
            client=self.client_ip,
            status=status,
            detail=self.audit_detail,
        )

    # -- output -----------------------------------------------------------------
    def write_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        problem = problem_for(exc, status_code, self.allowed_methods())
        if problem.status_code != self.get_status():
            self.set_status(problem.status_code)  # e.g. 503 for a Redis outage, not 500
        for name, value in problem.headers.items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/problem+json")
        self.finish(orjson.dumps(problem.body()))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, HTTPError | DomainError):
            return  # answered as problem JSON; client errors are not server faults
        if value is not None and redis_unavailable(value):
            self.services.redis_watch.failed(value)  # one line per outage, not per request
            return
        super().log_exception(typ, value, tb)

    # -- input ------------------------------------------------------------------
    def json_body(self, model: type[M]) -> M:
        """Parse and validate the body; wrong JSON is 400, wrong content 422."""
        ctype = self.request.headers.get("Content-Type", "application/json")
        if "json" not in ctype.split(";")[0]:
            raise Problem(415, "send the body as application/json", type="unsupported-media-type")
        try:
            data = orjson.loads(self.request.body or b"")
        except orjson.JSONDecodeError as e:
            raise Problem(400, f"body is not valid JSON: {e}", type="malformed-json") from e
        if not isinstance(data, dict):
            raise invalid("body", "must be a JSON object", 400)
        return validated(model, data)

    def read_args(self) -> dict[str, Any]:
        """Check the query string and the path against what this method declares
        (``query``, ``path``): unknown or repeated parameters are 400, a bad value 422
        naming it (a typo must not silently widen a filter), a malformed id 404."""
        method = self.request.method or "GET"
        declared = {p.name: p for p in members(self.query.get(method, ()))}
        if self.query_token:
            declared.setdefault(ACCESS_TOKEN.name, ACCESS_TOKEN)
        args: dict[str, Any] = {}
        for name, values in self.request.query_arguments.items():
            param = declared.get(name)
            if param is None:
                known = ", ".join(sorted(declared)) or "none"
                raise invalid(name, f"unknown query parameter; known: {known}", 400)
            if len(values) > 1:
                raise invalid(name, "given more than once", 400)
            try:
                raw = values[0].decode("utf-8")
            except UnicodeDecodeError:
                raise invalid(name, "is not UTF-8", 400) from None
            if len(raw) > max(param.max_chars, getattr(param, "max_len", 0)):
                raise invalid(name, "is too long", param.status)
            try:
                args[name] = param.parse(raw)
            except Invalid as e:
                raise invalid(name, str(e), param.status) from None
        for param in members(self.query.get(method, ())):
            if param.required and param.name not in args:
                raise invalid(param.name, "is required")
        for header in self.headers_in.get(method, ()):
            value = self.request.headers.get(header.name)
            if value is not None:
                try:
                    args[header.name] = header.parse(value)
                except Invalid as e:
                    raise invalid(header.name, str(e), header.status) from None
        for segment, raw in zip(self.path, getattr(self, "path_args", ()), strict=False):
            if not segment.matches(raw):
                raise not_found(segment.what, raw)
        return args

    def q_str(self, name: str) -> str | None:
        value: str | None = self.args.get(name)
        return value

    def q_int(self, name: str, default: int) -> int:
        value: int = self.args.get(name, default)
        return value

    def q_bool(self, name: str) -> bool:
        return bool(self.args.get(name, False))

    def q_time(self, name: str, now_ms: int) -> int | None:
        raw = self.args.get(name)
        return None if raw is None else parse_time(raw, now=now_ms)

    def q_duration(self, name: str, default: float | None) -> float | None:
        value: float | None = self.args.get(name, default)
        return value

    def page_args(self) -> tuple[int, str | None]:
        return self.q_int("limit", LIMIT.default or 50), self.q_str("cursor")

    def batch_items(self, name: str) -> list[Any]:
        """The items of an ingest body: a JSON array, or ``{name: [...]}``; at least one,
        at most ``EZ_INGEST_MAX_EVENTS`` (413 above, before anything is validated)."""
        try:
            body = orjson.loads(self.request.body or b"")
        except orjson.JSONDecodeError as e:
            raise Problem(400, f"body is not valid JSON: {e}", type="malformed-json") from e
        items = body.get(name) if isinstance(body, dict) else body
        if isinstance(body, dict) and set(body) - {name}:
            raise invalid(sorted(set(body) - {name})[0], "unknown field", 422)
        if not isinstance(items, list):
            raise invalid(name, f'send a JSON array of {name} (or {{"{name}": [...]}})')
        if not items:
            raise invalid(name, "the batch is empty")
        cap = self.services.settings.ingest_max_events
        if len(items) > cap:
            raise Problem(
                413,
                f"{len(items)} {name}; at most {cap} per batch",
                type="too-large",
                errors=[{"field": name, "message": f"too many {name}"}],
            )
        return items

    def refuse_batch(self, name: str, total: int, bad: list[dict[str, Any]]) -> Problem:
        """All or nothing: every problem of every bad item (``{"index", "errors"}``),
        named ``name[i].field``, and nothing accepted."""
        self.audit_detail = f"refused {len(bad)}/{total}"
        return Problem(
            422,
            f"{len(bad)} of {total} {name} are invalid; none were accepted",
            type="validation-error",
            title=f"Invalid {name}",
            errors=[
                {
                    "field": f"{name}[{b['index']}]" + (f".{e['field']}" if e["field"] else ""),
                    "message": e["message"],
                }
                for b in bad
                for e in b["errors"]
            ],
        )

    def batch_id(self) -> str:
        """The dedupe id of an ingest batch: the caller's Idempotency-Key, per principal."""
        key = self.idempotency_key()
        return f"{self.principal.id}:{key}" if key else ""

    def idempotency_key(self) -> str | None:
        """The Idempotency-Key header, checked in read_args (IDEMPOTENCY_KEY)."""
        value: str | None = self.args.get(IDEMPOTENCY_KEY.name)
        return value


ANONYMOUS = Principal("anonymous")


def validated(model: type[M], data: dict[str, Any]) -> M:
    """``data`` as ``model``, or 422 naming every field that is wrong (a request body,
    a gateway socket's message)."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = [
            {"field": field_path(err), "message": err["msg"]} for err in e.errors(include_url=False)
        ]
        names = ", ".join(x["field"] for x in errors)
        raise Problem(
            422,
            f"invalid fields: {names}",
            type="validation-error",
            title="Invalid request",
            errors=errors,
        ) from e


def require_upgrade(handler: RequestHandler) -> None:
    """426 unless the request asks for a WebSocket (the socket endpoints' plain GET)."""
    if handler.request.headers.get("Upgrade", "").lower() != "websocket":
        raise Problem(
            426,
            "this endpoint speaks WebSocket: send an Upgrade: websocket request",
            type="upgrade-required",
            headers={"Upgrade": "websocket", "Connection": "Upgrade"},
        )


def field_path(err: Any) -> str:
    """``rules.0.threshold`` for an error pydantic places at ``rules.0.error_rate.threshold``:
    a tagged union (one model per alert kind) puts the tag in the path, which names no
    field the client sent; a bad or missing tag is reported on the tag's own field."""
    loc = list(err["loc"])
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc.append(str(err.get("ctx", {}).get("discriminator", "")).strip("'"))
    parts = [
        str(p)
        for i, p in enumerate(loc)
        if not (i > 0 and isinstance(loc[i - 1], int) and isinstance(p, str) and p in UNION_TAGS)
    ]
    return ".".join(parts) or "body"


class NotFoundHandler(APIHandler):
    """JSON 404 for every path no route matched."""

    scopes = {m: None for m in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")}

    def prepare(self) -> None:  # type: ignore[override]
        raise Problem(404, f"no such endpoint: {self.request.path}", type="not-found")
