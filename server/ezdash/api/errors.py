"""RFC 9457 problem details: the one error shape of the API."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from tornado.web import HTTPError

from ..store.availability import redis_unavailable
from ..store.errors import Conflict, DomainError, IdempotencyMismatch, NotFound

PROBLEM_BASE = "https://ezaugent.dev/problems/"


class Problem(HTTPError):
    """An error answer.  Handlers raise it; ``APIHandler.write_error`` renders it."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type: str | None = None,
        title: str | None = None,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        members: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(status, log_message=None)
        self.detail = detail
        self.type = type
        self.title = title or HTTPStatus(status).phrase
        self.errors = errors
        self.headers = headers or {}
        self.members = members or {}
        """Extension members (RFC 9457 section 3.2) a client acts on, so it never has
        to parse ``detail`` (each documented by its own problem schema)."""

    def body(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": PROBLEM_BASE + self.type if self.type else "about:blank",
            "title": self.title,
            "status": self.status_code,
            "detail": self.detail,
        }
        if self.errors:
            doc["errors"] = self.errors
        doc.update(self.members)
        return doc


def invalid(field: str, message: str, status: int = 422) -> Problem:
    """A validation problem about one field (query parameter or body member)."""
    return Problem(
        status,
        f"{field}: {message}",
        type="validation-error",
        title="Invalid request",
        errors=[{"field": field, "message": message}],
    )


def not_found(what: str, ident: str) -> Problem:
    return Problem(404, f"no {what} with id {ident!r}", type="not-found")


def conflict(detail: str) -> Problem:
    return Problem(409, detail, type="conflict")


# -- dependencies -------------------------------------------------------------------
REDIS_RETRY_AFTER_S = 2
"""What a client is told to wait while Redis is away: about one probe interval."""


def unavailable(exc: BaseException) -> Problem:
    return Problem(
        503,
        f"the data store is unavailable ({type(exc).__name__}); retry shortly",
        type="redis-unavailable",
        title="Service Unavailable",
        headers={"Retry-After": str(REDIS_RETRY_AFTER_S)},
    )


DOMAIN: dict[type[DomainError], tuple[int, str]] = {
    NotFound: (404, "not-found"),
    Conflict: (409, "conflict"),
    IdempotencyMismatch: (422, "idempotency-mismatch"),
}
"""The stores' refusals as answers (status, problem type); their message is the detail.
Handlers let these pass: this table is the only translation."""


def problem_for(exc: BaseException | None, status: int, allowed: str = "") -> Problem:
    """The one mapping from what went wrong to the answer: a Problem as raised, a
    store's refusal through ``DOMAIN``, an outage of Redis as 503, Tornado's own errors
    (405 from an unknown method, ...) with their status, and anything else as 500 (a
    bug: it is logged)."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, DomainError):
        code, kind = next(v for k, v in DOMAIN.items() if isinstance(exc, k))
        return Problem(code, exc.detail, type=kind)
    if exc is not None and redis_unavailable(exc):
        return unavailable(exc)
    if isinstance(exc, HTTPError):
        code = exc.status_code
        if code == 405:
            return Problem(
                405,
                f"this method is not allowed here; use {allowed}",
                type="method-not-allowed",
                headers={"Allow": allowed},
            )
        return Problem(code, exc.log_message or HTTPStatus(code).phrase)
    if exc is None and status < 500:
        return Problem(status, HTTPStatus(status).phrase)
    return Problem(500, "internal error; it has been logged", type="internal")
