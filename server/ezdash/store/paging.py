"""Opaque, tamper-evident cursors for stable paging over sorted sets.

A cursor carries the position (score and member) of the last item returned
and a fingerprint of the filters it was made for, so reusing it with other
filters is refused instead of silently skipping or repeating items.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import orjson

_KEY = b"ezdash-cursor-v1"


class CursorError(ValueError):
    """The cursor is not one this server made for this query."""


def _fingerprint(filters: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(filters, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def encode_cursor(position: list[Any], filters: dict[str, Any]) -> str:
    body = orjson.dumps({"p": position, "f": _fingerprint(filters)})
    tag = hmac.new(_KEY, body, hashlib.sha256).digest()[:8]
    return base64.urlsafe_b64encode(body + tag).decode().rstrip("=")


def decode_cursor(cursor: str, filters: dict[str, Any]) -> list[Any]:
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
    if data.get("f") != _fingerprint(filters):
        raise CursorError("cursor was made for different filters")
    position = data.get("p")
    if not isinstance(position, list):
        raise CursorError("cursor is not valid")
    return position
