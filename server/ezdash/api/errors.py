"""RFC 9457 problem details: the one error shape of the API."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from tornado.web import HTTPError

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
    ) -> None:
        super().__init__(status, log_message=None)
        self.detail = detail
        self.type = type
        self.title = title or HTTPStatus(status).phrase
        self.errors = errors
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": PROBLEM_BASE + self.type if self.type else "about:blank",
            "title": self.title,
            "status": self.status_code,
            "detail": self.detail,
        }
        if self.errors:
            doc["errors"] = self.errors
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
