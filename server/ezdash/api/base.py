"""The base of every handler: JSON in and out, problem errors, auth hook, query parsing.

Handlers stay thin: parse and validate input here, call a store, serialise.
Every handler class declares ``scopes`` (HTTP method -> scope, or None for
open endpoints); ``app.check_handler_auth`` refuses to start a server with a
method that made no decision, so no endpoint is left open by accident.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from tornado.web import HTTPError, RequestHandler

from ..store.paging import CursorError
from ..timeutil import parse_duration, parse_time
from .errors import Problem, invalid
from .services import Services

log = logging.getLogger("ezdash.api")
M = TypeVar("M", bound=BaseModel)
ALL_SCOPES = frozenset({"read", "write", "control", "admin"})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling.  Authentication (API keys, JWT) fills this in ``prepare``."""

    id: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    kind: str = "anonymous"

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


class APIHandler(RequestHandler):
    """JSON API handler.  Errors are problem JSON, never HTML or a traceback."""

    scopes: dict[str, str | None] = {}
    principal: Principal

    @property
    def services(self) -> Services:
        svc: Services = self.settings["services"]
        return svc

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")

    async def prepare(self) -> None:
        method = self.request.method or "GET"
        if method == "OPTIONS":
            return
        if method not in self.scopes:
            allowed = ", ".join(sorted(self.scopes))
            raise Problem(
                405,
                f"{method} is not allowed here; use {allowed}",
                type="method-not-allowed",
                headers={"Allow": allowed},
            )
        required = self.scopes[method]
        self.principal = await self.authenticate()
        if required is not None and not self.principal.allows(required):
            raise Problem(403, f"this needs the {required!r} scope", type="forbidden")
        limit = self.services.settings.max_body_bytes
        length = self.request.headers.get("Content-Length")
        if (length and length.isdigit() and int(length) > limit) or len(self.request.body) > limit:
            raise Problem(413, f"request body is larger than {limit} bytes", type="too-large")

    async def authenticate(self) -> Principal:
        """The place authentication plugs in (API keys and JWT come with the security
        work); until then every caller is a local operator with every scope."""
        return Principal("local", ALL_SCOPES, "local")

    # -- output -----------------------------------------------------------------
    def write_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, Problem):
            problem = exc
        elif isinstance(exc, HTTPError):
            problem = Problem(status_code, exc.log_message or self._reason)
        else:
            problem = Problem(500, "internal error; it has been logged", type="internal")
        for name, value in problem.headers.items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/problem+json")
        self.finish(orjson.dumps(problem.body()))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, HTTPError):
            return  # answered as problem JSON; client errors are not server faults
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
        try:
            return model.model_validate(data)
        except ValidationError as e:
            errors = [
                {"field": ".".join(str(p) for p in err["loc"]) or "body", "message": err["msg"]}
                for err in e.errors(include_url=False)
            ]
            names = ", ".join(x["field"] for x in errors)
            raise Problem(
                422,
                f"invalid fields: {names}",
                type="validation-error",
                title="Invalid request",
                errors=errors,
            ) from e

    def check_query(self, allowed: Iterable[str]) -> None:
        """Refuse unknown query parameters: a typo must not silently widen a filter."""
        known = set(allowed)
        for name in self.request.query_arguments:
            if name not in known:
                raise invalid(
                    name, f"unknown query parameter; known: {', '.join(sorted(known))}", 400
                )
        for name, values in self.request.query_arguments.items():
            if len(values) > 1:
                raise invalid(name, "given more than once", 400)

    def q_str(
        self, name: str, *, max_len: int = 256, choices: Iterable[str] | None = None
    ) -> str | None:
        value = self.get_query_argument(name, None)
        if value is None:
            return None
        if not value or len(value) > max_len:
            raise invalid(name, f"must be 1 to {max_len} characters")
        if choices is not None:
            options = tuple(choices)
            if value not in options:
                raise invalid(name, f"must be one of {', '.join(options)}")
        return value

    def q_int(self, name: str, default: int, *, lo: int, hi: int) -> int:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise invalid(name, "must be an integer") from None
        if not lo <= value <= hi:
            raise invalid(name, f"must be between {lo} and {hi}")
        return value

    def q_bool(self, name: str) -> bool:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return False
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise invalid(name, "must be true or false")

    def q_time(self, name: str, now_ms: int) -> int | None:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return None
        try:
            return parse_time(raw, now=now_ms)
        except ValueError as e:
            raise invalid(name, str(e)) from None

    def q_duration(self, name: str, default: float | None) -> float | None:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        try:
            value = parse_duration(raw)
        except ValueError as e:
            raise invalid(name, str(e)) from None
        if value <= 0:
            raise invalid(name, "must be positive")
        return value

    def page_args(self) -> tuple[int, str | None]:
        limit = self.q_int("limit", 50, lo=1, hi=500)
        cursor = self.get_query_argument("cursor", None)
        if cursor is not None and (not cursor or len(cursor) > 512):
            raise invalid("cursor", "is not valid", 400)
        return limit, cursor

    def idempotency_key(self) -> str | None:
        key = self.request.headers.get("Idempotency-Key")
        if key is None:
            return None
        if not 1 <= len(key) <= 255 or not key.isprintable():
            raise invalid("Idempotency-Key", "must be 1 to 255 printable characters", 400)
        return key


def cursor_problem(e: CursorError) -> Problem:
    return invalid("cursor", str(e), 400)


class NotFoundHandler(APIHandler):
    """JSON 404 for every path no route matched."""

    scopes = {m: None for m in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")}

    def prepare(self) -> None:  # type: ignore[override]
        raise Problem(404, f"no such endpoint: {self.request.path}", type="not-found")
