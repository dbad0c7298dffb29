"""Query and path parameters, each declared once: what it accepts, the answer it
gives otherwise, and its entry in the OpenAPI document.

Handlers list theirs (``APIHandler.query`` per method, ``APIHandler.path`` per
route); ``APIHandler`` checks every request against that list before the method
runs (an unknown or repeated parameter is 400, a bad value 422 naming it) and
``openapi.py`` documents exactly that list. Each check and its schema are written
side by side, from the same pattern or bounds, so a client generated from the
document never sends what the server refuses, and the server refuses what the
document does not allow.

Values are read as sent (no stripping, no control-character rewriting, which
Tornado's ``get_query_argument`` does), so what is checked is what was sent.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..ids import AGENT_ID
from ..timeutil import (
    POSITIVE,
    RELATIVE_TIME,
    TIME_HINT,
    UNIX_TIME,
    parse_duration,
    parse_time,
)

AGENT_ID_PATTERN = AGENT_ID.pattern
SERVER_ID_BODY = "[0-9A-HJKMNP-TV-Z]{26}"
POSITIVE_DURATION = rf"^{POSITIVE}(ms|s|m|h|d|w)?$"
WHOLE_SECONDS = r"^0*[1-9][0-9]{0,6}(s|m|h|d|w)?$"
WHOLE_HOURS = r"^0*[1-9][0-9]{0,6}(h|d|w)$"
PERCENT = r"([1-9][0-9]?(\.[0-9]+)?|0?\.0*[1-9][0-9]*)"
"""A number strictly between 0 and 100, as text."""
STREAM_ID = r"^[0-9]{1,20}-[0-9]{1,20}$"
"""A stream entry id as the server sends them, ``ms-seq``."""
ENTRY_ID = r"^[0-9]{1,20}(-[0-9]{1,20})?$"
"""A stream entry id, ``ms-seq``, or just ``ms`` (as Redis takes them)."""
PRINTABLE = r"^[!-~]([ -~]{0,253}[!-~])?$"
"""1 to 255 printable ASCII characters, no space at either end (HTTP trims those)."""


class Invalid(ValueError):
    """A parameter value the server refuses; the message says what it accepts."""


@dataclass(frozen=True)
class Param:
    """One query parameter. Subclasses give ``schema()`` and ``parse()``, built from
    the same bounds, so the document and the check cannot disagree."""

    name: str
    description: str
    status: ClassVar[int] = 422
    where: ClassVar[str] = "query"
    max_chars: ClassVar[int] = 256
    """Longer values are refused before any pattern runs (see POSITIVE)."""
    required: bool = field(default=False, kw_only=True)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "minLength": 1}

    def parse(self, raw: str) -> Any:
        if not raw:
            raise Invalid("must not be empty")
        return raw

    def openapi(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": self.where,
            "required": self.required,
            "description": self.description,
            "schema": self.schema(),
        }


@dataclass(frozen=True)
class Text(Param):
    """Free text or an identifier: 1 to ``max_len`` characters, matching ``pattern``."""

    max_len: int = 256
    pattern: str | None = None
    hint: str = ""

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": self.max_len}
        if self.pattern is not None:
            out["pattern"] = self.pattern
        return out

    def parse(self, raw: str) -> str:
        if not 1 <= len(raw) <= self.max_len:
            raise Invalid(f"must be 1 to {self.max_len} characters")
        if self.pattern is not None and re.search(self.pattern, raw) is None:
            raise Invalid(self.hint or f"must match {self.pattern}")
        return raw


@dataclass(frozen=True)
class Choice(Param):
    values: tuple[str, ...] = ()

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.values)}

    def parse(self, raw: str) -> str:
        if raw not in self.values:
            raise Invalid(f"must be one of {', '.join(self.values)}")
        return raw


@dataclass(frozen=True)
class Integer(Param):
    lo: int = 0
    hi: int = 1 << 31
    default: int | None = None
    max_chars: ClassVar[int] = 20

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "integer", "minimum": self.lo, "maximum": self.hi}
        if self.default is not None:
            out["default"] = self.default
        return out

    def parse(self, raw: str) -> int:
        if re.fullmatch(r"-?[0-9]+", raw, re.ASCII) is None:
            raise Invalid("must be an integer")
        value = int(raw)
        if not self.lo <= value <= self.hi:
            raise Invalid(f"must be between {self.lo} and {self.hi}")
        return value


@dataclass(frozen=True)
class Number(Param):
    lo: float = 0.0
    hi: float = 1e9
    exclusive_lo: bool = False
    exclusive_hi: bool = False
    max_chars: ClassVar[int] = 64

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "number"}
        out["exclusiveMinimum" if self.exclusive_lo else "minimum"] = self.lo
        out["exclusiveMaximum" if self.exclusive_hi else "maximum"] = self.hi
        return out

    def parse(self, raw: str) -> float:
        if re.fullmatch(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?", raw, re.ASCII) is None:
            raise Invalid("must be a number")
        value = float(raw)
        below = value <= self.lo if self.exclusive_lo else value < self.lo
        above = value >= self.hi if self.exclusive_hi else value > self.hi
        if below or above:
            low, high = "(" if self.exclusive_lo else "[", ")" if self.exclusive_hi else "]"
            raise Invalid(f"must be in {low}{self.lo:g}, {self.hi:g}{high}")
        return value


@dataclass(frozen=True)
class Boolean(Param):
    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}

    def parse(self, raw: str) -> bool:
        if raw not in ("true", "false"):
            raise Invalid("must be true or false")
        return raw == "true"


@dataclass(frozen=True)
class Time(Param):
    """RFC 3339 with a zone, unix seconds, or ``now``/``now-24h``. Parsed when the
    handler knows the time (relative times need Redis's clock): ``parse`` only
    checks the form and returns the text."""

    max_chars: ClassVar[int] = 64

    def schema(self) -> dict[str, Any]:
        return {
            "type": "string",
            "maxLength": self.max_chars,
            "anyOf": [
                {"format": "date-time"},
                {"pattern": UNIX_TIME},
                {"pattern": RELATIVE_TIME},
            ],
        }

    def parse(self, raw: str) -> str:
        try:
            parse_time(raw, now=0)  # the form only: relative times resolve later
        except ValueError as e:
            raise Invalid(str(e) or TIME_HINT) from None
        return raw


@dataclass(frozen=True)
class Duration(Param):
    """A positive duration: ``30s``, ``5m``, ``1h``, ``7d`` (a bare number is seconds);
    parsed to seconds. ``pattern`` narrows it (whole seconds, whole hours)."""

    pattern: str = POSITIVE_DURATION
    hint: str = "not a duration: use e.g. 30s, 5m, 1h, 7d"
    max_chars: ClassVar[int] = 32

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "maxLength": self.max_chars, "pattern": self.pattern}

    def parse(self, raw: str) -> float:
        if re.search(self.pattern, raw) is None:
            raise Invalid(self.hint)
        return parse_duration(raw)


@dataclass(frozen=True)
class Cursor(Param):
    """Opaque: whatever ``next_cursor`` said. Malformed or foreign cursors are 400."""

    status: ClassVar[int] = 400
    pattern: str = r"^[A-Za-z0-9_-]{1,512}$"
    max_chars: ClassVar[int] = 512

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": self.pattern}

    def parse(self, raw: str) -> str:
        if re.search(self.pattern, raw) is None:
            raise Invalid("is not a cursor this server made")
        return raw


@dataclass(frozen=True)
class Percentages(Param):
    """One to four percentages strictly between 0 and 100, comma-separated."""

    max_chars: ClassVar[int] = 64

    def schema(self) -> dict[str, Any]:
        return {
            "type": "string",
            "maxLength": self.max_chars,
            "pattern": f"^{PERCENT}(,{PERCENT}){{0,3}}$",
        }

    def parse(self, raw: str) -> tuple[float, ...]:
        if re.search(self.schema()["pattern"], raw) is None:
            raise Invalid("one to four comma-separated percentages between 0 and 100")
        return tuple(sorted({float(x) for x in raw.split(",")}))


@dataclass(frozen=True)
class Since(Param):
    """Where a stream resumes: an entry id it sent, or a time (as ``Time``)."""

    max_chars: ClassVar[int] = 64

    def schema(self) -> dict[str, Any]:
        return {
            "type": "string",
            "maxLength": self.max_chars,
            "anyOf": [{"pattern": STREAM_ID}, *TIME.schema()["anyOf"]],
        }

    def parse(self, raw: str) -> tuple[str, str]:
        """("id", entry id) or ("time", text for parse_time)."""
        if re.search(STREAM_ID, raw):
            return "id", raw
        try:
            return "time", TIME.parse(raw)
        except Invalid:
            raise Invalid("an entry id this stream sent, or a time") from None


@dataclass(frozen=True)
class Header(Text):
    """A request header a method reads (checked like a query parameter, 400)."""

    status: ClassVar[int] = 400
    where: ClassVar[str] = "header"


@dataclass(frozen=True)
class Group:
    """Query parameters accepted only in some combinations: the rollups keep some
    combinations of dimensions, not every one, so ``group_by=queue&agent=a`` has no
    answer. On the wire they are separate parameters; the document describes them as
    one exploded object whose schema lists the combinations ``accepts`` admits, found
    by asking it about every combination, so the rule is written once (the planner)."""

    name: str
    description: str
    members: tuple[Param, ...]
    accepts: Callable[[dict[str, str]], bool]

    def openapi(self) -> dict[str, Any]:
        choices = [m for m in self.members if isinstance(m, Choice)]
        free = [m.name for m in self.members if not isinstance(m, Choice)]
        schemas = {m.name: m.schema() for m in self.members}
        shapes: list[dict[str, Any]] = []
        for fixed in itertools.product(*([None, *c.values] for c in choices)):
            chosen = {c.name: v for c, v in zip(choices, fixed, strict=True) if v is not None}
            for n in range(len(free) + 1):
                for present in itertools.combinations(free, n):
                    if self.accepts({**chosen, **dict.fromkeys(present, "x")}):
                        shapes.append(_shape(chosen, present, schemas))
        return {
            "name": self.name,
            "in": "query",
            "style": "form",
            "explode": True,
            "required": False,
            "description": self.description,
            "schema": {"type": "object", "anyOf": shapes},
        }


def _shape(
    chosen: dict[str, str], present: tuple[str, ...], schemas: dict[str, Any]
) -> dict[str, Any]:
    """One accepted combination as a closed object: these values, these present,
    nothing else (a generator picks a branch and fills it in; no filtering)."""
    props = {k: {"const": v} for k, v in chosen.items()}
    props.update({k: schemas[k] for k in present})
    return {
        "type": "object",
        "properties": props,
        "required": sorted(props),
        "additionalProperties": False,
    }


def members(params: tuple[Param | Group, ...]) -> tuple[Param, ...]:
    """The parameters on the wire: groups flattened."""
    out: list[Param] = []
    for p in params:
        out.extend(p.members if isinstance(p, Group) else (p,))
    return tuple(out)


@dataclass(frozen=True)
class PathId:
    """A path segment naming a resource; anything else is 404 (no such resource)."""

    name: str
    description: str
    pattern: str
    what: str = field(default="resource")

    def matches(self, raw: str) -> bool:
        return re.search(self.pattern, raw) is not None

    def openapi(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": "path",
            "required": True,
            "description": self.description,
            "schema": {"type": "string", "pattern": self.pattern},
        }


def server_id(kind: str) -> str:
    return f"^{kind}_{SERVER_ID_BODY}$"


# -- the parameters of this API -------------------------------------------------------
TIME = Time("time", "a point in time")
LIMIT = Integer("limit", "Page size (1-500, default 50).", lo=1, hi=500, default=50)
CURSOR = Cursor("cursor", "Opaque cursor from the previous page's next_cursor.")
PAGE = (LIMIT, CURSOR)
DRY_RUN = Boolean("dry_run", "Validate and authorise, change nothing, say what would happen.")
FROM = Time("from", "Start: RFC 3339, unix seconds, or relative (now-24h); default now-24h")
TO = Time("to", "End: RFC 3339, unix seconds, or relative; default now")
AGENT = Text(
    "agent",
    "Only this agent (its id).",
    max_len=128,
    pattern=AGENT_ID_PATTERN,
    hint="agent ids are 1-128 characters of A-Z a-z 0-9 . _ : -",
)

AGENT_PATH = PathId("agent_id", "The agent's own id.", AGENT_ID_PATTERN, "agent")
TASK_PATH = PathId("task_id", "A task id (tsk_...).", server_id("tsk"), "task")
COMMAND_PATH = PathId("command_id", "A command id (cmd_...).", server_id("cmd"), "command")
KEY_PATH = PathId("key_id", "A key id (key_...).", r"^key_[A-Za-z0-9_]{1,64}$", "key")
ACCESS_TOKEN = Text(
    "access_token",
    "A JWT, for browsers' EventSource and WebSocket (they cannot set headers).",
    max_len=8192,
)
IDEMPOTENCY_KEY = Header(
    "Idempotency-Key",
    "A repeat within 24 h (same principal, same body) returns the first result.",
    max_len=255,
    pattern=PRINTABLE,
    hint="must be 1 to 255 printable ASCII characters",
)
