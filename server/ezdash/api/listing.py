"""Pages of a list: the one place cursors are made and read.

A cursor is bound to the query as the client wrote it (every parameter but ``cursor``
and ``limit``), not to the values the server resolved it to: ``from=now-2h`` names a
new instant at each request, yet the same list. A list that resolves relative times
also keeps, in its cursors, the instant its first page resolved them at, so every
page of it is cut from the same window however long the client takes between pages;
the position of the last item returned keeps the order stable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..store.logs import is_stream_id
from ..store.paging import CursorError, decode_cursor, encode_cursor
from .base import APIHandler
from .errors import Problem


def cursor_problem(e: CursorError) -> Problem:
    """A cursor in the right form that names no page of this list (made by another
    server, for other filters, or tampered with): like an unknown id, 404. A cursor in
    the wrong form is refused earlier, 400 (``params.CURSOR``)."""
    return Problem(
        404,
        f"cursor: {e}; start again from the first page",
        type="unknown-cursor",
        errors=[{"field": "cursor", "message": str(e)}],
    )


PAGING = ("cursor", "limit")
"""What a cursor is not bound to: a client may change the page size between pages."""

Part = Callable[[Any], Any]
"""Reads one part of a position back from a cursor; raises ValueError if it cannot."""


def number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(value)
    return float(value)


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(value)
    return value


def entry_id(value: Any) -> str:
    """A stream entry id (``ms-seq``)."""
    if not isinstance(value, str) or "-" not in value or not is_stream_id(value):
        raise ValueError(value)
    return value


@dataclass(frozen=True)
class Page:
    limit: int
    after: Any
    """Where the previous page ended, as the store gave it (None on the first page)."""
    written: dict[str, str]
    now_ms: int | None

    @property
    def now(self) -> int:
        """The instant relative times of this list resolve at: the first page's."""
        if self.now_ms is None:
            raise RuntimeError("list_page(timed=True) for a list that resolves times")
        return self.now_ms

    def next_cursor(self, position: Any) -> str | None:
        """The cursor of the next page, from where the store says this one ended."""
        if position is None:
            return None
        parts = list(position) if isinstance(position, tuple) else [position]
        return encode_cursor(parts, self.written, now_ms=self.now_ms)


async def list_page(
    h: APIHandler, position: Part | tuple[Part, ...], *, timed: bool = False
) -> Page:
    """``limit`` and ``cursor`` of the request; ``position`` reads the store's position
    back (one part, or a tuple of parts); ``timed`` for lists that take ``from``/``to``."""
    limit, cursor = h.page_args()
    written = {
        name: values[0].decode()
        for name, values in h.request.query_arguments.items()
        if name not in PAGING
    }
    if cursor is None:
        now = await h.services.redis_now_ms() if timed else None
        return Page(limit, None, written, now)
    try:
        parts, now = decode_cursor(cursor, written)
        if timed and now is None:
            raise ValueError("no instant")
        if isinstance(position, tuple):
            if len(parts) != len(position):
                raise ValueError(parts)
            after: Any = tuple(read(p) for read, p in zip(position, parts, strict=True))
        else:
            (one,) = parts
            after = position(one)
    except CursorError as e:
        raise cursor_problem(e) from None
    except ValueError:
        raise cursor_problem(CursorError("cursor is not valid")) from None
    return Page(limit, after, written, now if timed else None)
