"""Opaque, tamper-evident cursors for stable paging.

A cursor carries the position of the last item returned (a score and a member, an
id, a stream entry id), a fingerprint of the query it was made for, so reusing it
with other filters is refused instead of silently skipping or repeating items, and,
for lists that resolve relative times, the instant the first page resolved them at
(see ``ezdash.api.listing``, the one place cursors are made and read).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import orjson

_KEY = b"ezdash-cursor-v2"


class CursorError(ValueError):
    """The cursor is not one this server made for this query."""


def _fingerprint(filters: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(filters, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def encode_cursor(
    position: list[Any], filters: dict[str, Any], *, now_ms: int | None = None
) -> str:
    data: dict[str, Any] = {"p": position, "f": _fingerprint(filters)}
    if now_ms is not None:
        data["n"] = now_ms
    body = orjson.dumps(data)
    tag = hmac.new(_KEY, body, hashlib.sha256).digest()[:8]
    return base64.urlsafe_b64encode(body + tag).decode().rstrip("=")


def decode_cursor(cursor: str, filters: dict[str, Any]) -> tuple[list[Any], int | None]:
    """The position and the instant (None if the cursor carries none)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        body, tag = raw[:-8], raw[-8:]
        if not hmac.compare_digest(tag, hmac.new(_KEY, body, hashlib.sha256).digest()[:8]):
            raise CursorError("cursor is corrupt")
        data = orjson.loads(body)
    except CursorError:
        raise
    except Exception:
        raise CursorError("cursor is not valid") from None
    if not isinstance(data, dict):
        raise CursorError("cursor is not valid")
    if data.get("f") != _fingerprint(filters):
        raise CursorError("cursor was made for different filters")
    position, now = data.get("p"), data.get("n")
    if not isinstance(position, list) or not (
        now is None or (isinstance(now, int) and not isinstance(now, bool))
    ):
        raise CursorError("cursor is not valid")
    return position, now
