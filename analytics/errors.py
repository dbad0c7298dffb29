"""Errors raised at the boundary of the analytics package.

Every input problem is reported as an :class:`AnalyticsInputError` that names the
offending argument in ``field``, so an HTTP layer can map it to a 422 response that
points at the right query parameter without parsing the message.
"""

from __future__ import annotations

__all__ = ["AnalyticsInputError"]


class AnalyticsInputError(ValueError):
    """An argument cannot be analysed as given; the message says how to fix it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
