"""Log entries: validation, the append script, filtered scans, and the live tail.

Entries live in one capped Redis stream (``Keys.logs``); the stream entry id is the
log id, so ids are monotonic and a reader resumes exactly where it stopped. Each
entry is one JSON value (field ``d``): a read parses one value per entry. Filters
are applied while scanning, in bounded chunks, so no request's cost grows with the
stream: a search page examines at most ``SCAN_BUDGET`` entries, an export streams
chunk by chunk, and live readers share one blocking ``XREAD`` per server instance.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from ..keys import Keys
from ..timeutil import format_ms, parse_time
from .errors import IdempotencyMismatch
from .scripts import Scripts
from .tail import StreamTail, read_after

log = logging.getLogger(__name__)

LEVELS = ("debug", "info", "warning", "error", "critical")
RANK = {name: i for i, name in enumerate(LEVELS)}
ALIASES = {"warn": "warning", "fatal": "critical", "err": "error"}
MAX_MESSAGE_CHARS = 8192
MAX_FIELDS_BYTES = 16 * 1024
MAX_ID_CHARS = 128
SCAN_CHUNK = 500
SCAN_BUDGET = 20_000
"""Entries one search page may examine; a sparse filter gets a cursor to go on."""

Doc = dict[str, Any]


def stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def is_stream_id(text: str) -> bool:
    ms, sep, seq = text.partition("-")
    return ms.isdigit() and (not sep or seq.isdigit()) and len(text) <= 41


def level_name(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    name = value.strip().lower()
    name = ALIASES.get(name, name)
    return name if name in RANK else None


def validate(raw: Any, now_ms: int) -> tuple[Doc | None, list[dict[str, str]]]:
    """One entry as sent by an agent -> the stored document, or the field errors.

    ``ts`` (unix seconds or milliseconds as a number, or RFC 3339) defaults to now;
    ``agent_id`` and ``message`` are required; ``fields`` must be a JSON object.
    """
    errors: list[dict[str, str]] = []
    if not isinstance(raw, dict):
        return None, [{"field": "", "message": "expected a JSON object"}]
    unknown = sorted(set(raw) - {"ts", "agent_id", "task_id", "level", "message", "fields"})
    errors += [{"field": name, "message": "unknown field"} for name in unknown]
    agent = raw.get("agent_id")
    if not isinstance(agent, str) or not 1 <= len(agent) <= MAX_ID_CHARS:
        errors.append({"field": "agent_id", "message": "required, 1-128 characters"})
    task = raw.get("task_id")
    if task is not None and (not isinstance(task, str) or not 1 <= len(task) <= MAX_ID_CHARS):
        errors.append({"field": "task_id", "message": "a task id (1-128 characters) or null"})
    given = raw.get("level", "info")
    level = ALIASES.get(given, given) if isinstance(given, str) else None
    if level not in RANK:  # exactly as documented: no case folding, no spaces
        errors.append({"field": "level", "message": f"one of {', '.join((*LEVELS, *ALIASES))}"})
    message = raw.get("message")
    if not isinstance(message, str) or not message:
        errors.append({"field": "message", "message": "required, a non-empty string"})
    elif len(message) > MAX_MESSAGE_CHARS:
        errors.append({"field": "message", "message": f"at most {MAX_MESSAGE_CHARS} characters"})
    fields = raw.get("fields", {})
    if fields is None:
        fields = {}
    if not isinstance(fields, dict):
        errors.append({"field": "fields", "message": "a JSON object"})
    elif len(orjson.dumps(fields)) > MAX_FIELDS_BYTES:
        errors.append({"field": "fields", "message": f"at most {MAX_FIELDS_BYTES} bytes"})
    ts = _timestamp(raw.get("ts"), now_ms)
    if ts is None:
        errors.append({"field": "ts", "message": "unix seconds or RFC 3339, not in the future"})
    if errors:
        return None, errors
    doc: Doc = {"ts": ts, "agent_id": agent, "level": level, "message": message}
    if task is not None:
        doc["task_id"] = task
    if fields:
        doc["fields"] = fields
    return doc, []


def _timestamp(value: Any, now_ms: int) -> int | None:
    if value is None:
        return now_ms
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            return None
        ms = int(value * 1000) if value < 1e11 else int(value)  # seconds or milliseconds
    elif isinstance(value, str):
        try:
            ms = parse_time(value, now=now_ms)
        except ValueError:
            return None
    else:
        return None
    return ms if ms <= now_ms + 5 * 60_000 else None  # a little clock skew is fine


def public(entry_id: str, doc: Doc) -> Doc:
    """The API's form of an entry."""
    return {
        "id": entry_id,
        "ts": format_ms(int(doc["ts"])),
        "agent_id": doc["agent_id"],
        "task_id": doc.get("task_id"),
        "level": doc["level"],
        "message": doc["message"],
        "fields": doc.get("fields", {}),
    }


@dataclass(frozen=True)
class LogFilter:
    agent: str | None = None
    task: str | None = None
    min_level: str = "debug"
    q: str | None = None
    _q: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_q", (self.q or "").casefold())

    def match(self, doc: Doc) -> bool:
        if self.agent is not None and doc.get("agent_id") != self.agent:
            return False
        if self.task is not None and doc.get("task_id") != self.task:
            return False
        if RANK.get(str(doc.get("level")), 0) < RANK[self.min_level]:
            return False
        return not self._q or self._q in str(doc.get("message", "")).casefold()


def decode(entries: list[Any]) -> list[tuple[str, Doc]]:
    out: list[tuple[str, Doc]] = []
    for entry_id, fields in entries:
        raw = fields.get("d") if isinstance(fields, dict) else None
        if raw is None:
            continue
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue  # not ours; never let one bad entry stop a reader
        if isinstance(doc, dict):
            out.append((str(entry_id), doc))
    return out


class LogStore:
    def __init__(
        self, redis: Redis, keys: Keys, scripts: Scripts, *, maxlen: int, retention_ms: int
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.maxlen = maxlen
        self.retention_ms = retention_ms

    async def append(
        self,
        docs: list[Doc],
        *,
        now_ms: int,
        batch_id: str = "",
        fingerprint: str = "",
        dedupe_ttl_ms: int = 86_400_000,
    ) -> list[str] | None:
        """Append a batch atomically; the new ids, or None when it was a replay."""
        res = await self.scripts.run(
            "logs_append",
            [self.keys.logs],
            [
                self.keys.base,
                self.keys.log_batch(batch_id) if batch_id else "",
                dedupe_ttl_ms,
                fingerprint,
                self.maxlen,
                max(0, now_ms - self.retention_ms) if self.retention_ms else 0,
                *(orjson.dumps(d) for d in docs),
            ],
        )
        if res[0] == "seen":
            if res[1] != fingerprint:
                raise IdempotencyMismatch("batch")
            return None
        return [str(x) for x in res[1:]]

    async def last_id(self) -> str:
        newest = await self.redis.xrevrange(self.keys.logs, "+", "-", count=1)
        return str(newest[0][0]) if newest else "0-0"

    async def search(
        self,
        flt: LogFilter,
        *,
        start_ms: int,
        end_ms: int,
        before: str | None,
        limit: int,
    ) -> tuple[list[tuple[str, Doc]], str | None]:
        """Newest first, below ``before`` (exclusive): up to ``limit`` matches and where
        to go on (None at the start of the range). At most ``SCAN_BUDGET`` entries are
        examined, so a filter that matches rarely returns a short page and a cursor."""
        upper = f"({before}" if before else str(max(0, end_ms - 1))
        lower = str(start_ms)
        found: list[tuple[str, Doc]] = []
        examined = 0
        while examined < SCAN_BUDGET:
            chunk = await self.redis.xrevrange(self.keys.logs, upper, lower, count=SCAN_CHUNK)
            if not chunk:
                return found, None
            for entry_id, doc in decode(chunk):
                if flt.match(doc):
                    found.append((entry_id, doc))
                    if len(found) == limit:
                        return found, entry_id
            examined += len(chunk)
            last = str(chunk[-1][0])
            if len(chunk) < SCAN_CHUNK:
                return found, None
            upper = f"({last}"
        return found, last

    async def forward(
        self, flt: LogFilter, *, after: str, end: str = "+", chunk: int = SCAN_CHUNK
    ) -> AsyncIterator[list[tuple[str, Doc]]]:
        """Oldest first from just after ``after`` to ``end``, in chunks (exports and
        catch-up after a reconnect); yields the matches of each chunk read, possibly
        none, so a caller can report progress or keep a connection alive."""
        async for entries in read_after(self.redis, self.keys.logs, after, end=end, chunk=chunk):
            yield [(i, d) for i, d in decode(entries) if flt.match(d)]


class LogTail(StreamTail[tuple[str, Doc]]):
    """The live tail of the log stream (see :class:`StreamTail`)."""

    def __init__(self, redis_url: str, keys: Keys, *, queue_size: int = 2000) -> None:
        super().__init__(redis_url, keys.logs, decode, queue_size=queue_size)
