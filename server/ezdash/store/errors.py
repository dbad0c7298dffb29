"""What the stores refuse, in their own terms (no HTTP here).

The API answers each of these through one table (``ezdash.api.errors.DOMAIN``), so a
handler lets them pass instead of translating them; their message is the answer's
``detail`` and is written here, where the facts are.
"""

from __future__ import annotations


class DomainError(Exception):
    """A refusal that is the caller's to fix, never a server fault."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(DomainError, LookupError):
    """No such task, agent, command or key."""

    def __init__(self, what: str, ident: str) -> None:
        super().__init__(f"no {what} with id {ident!r}")
        self.what = what
        self.ident = ident


class Conflict(DomainError):
    """The object is in a state that does not allow the operation (``status``)."""

    def __init__(self, detail: str, status: str = "") -> None:
        super().__init__(detail)
        self.status = status


class IdempotencyMismatch(DomainError):
    """An Idempotency-Key was used before for a different request: a task, a command
    or an ingest batch with other contents."""

    def __init__(self, what: str = "request") -> None:
        super().__init__(f"Idempotency-Key was already used for a different {what}")
