"""One usage event per LLM call, validated before anything is counted.

Token semantics are OpenTelemetry GenAI's: ``input_tokens`` includes the cache
reads (``cached_tokens``) and cache writes (``cache_creation_tokens``), and
``reasoning_tokens`` are part of ``output_tokens``.  An event whose parts exceed
the whole is refused, naming the part: it is almost always an agent that copied
Anthropic's ``input_tokens`` (which excludes cache tokens) or Gemini's
``candidatesTokenCount`` (which excludes thoughts) without adding them back, and
no price computed from it would be right (the uncached remainder would be negative).

Decisions:

- ``ts`` is RFC 3339 with a zone (a naive time is refused) or unix seconds as a
  JSON number; after validation it is integer milliseconds.
- ``error_type`` is required (non-empty) when ``status`` is ``error``; for ``ok`` it
  must be absent, null or ``""`` (stored as None).  An ``ok`` event carrying an
  error type is refused: counting it as a success or as an error would both be
  guesses.
- ``cached_tokens``, ``cache_creation_tokens`` and ``reasoning_tokens`` default to
  0 (most providers report none of some of them); ``task_id`` is optional, since
  not every call serves a task, and follows the agent-id character set;
  ``cost_usd`` is optional (the server prices the call).  The rest is required.
- Bounds (tokens <= 1e9, ``cost_usd`` <= 10 000, ``latency_ms`` <= 1 day) are far
  above any real call and exist to catch unit mistakes and keep integer sums safe.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from ..ids import AGENT_ID

FUTURE_SKEW_MS = 60_000
MAX_UNIX_S = 1e11
"""Unix seconds beyond this (the year 5138) are a unit mistake, not a time."""
MAX_TOKENS = 1_000_000_000
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})$"
)
_MODEL = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$"
_PROVIDER = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_ERROR_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def _refuse(message: str) -> PydanticCustomError:
    """A message without pydantic's "Value error, " prefix: it goes to agents verbatim."""
    return PydanticCustomError("usage_event", message, {})


def _timestamp_ms(value: Any) -> int:
    if isinstance(value, str):
        if not _RFC3339.match(value):
            raise _refuse("expected RFC 3339 with a zone, e.g. 2026-11-28T09:15:02.123Z")
        try:
            moment = datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
        except ValueError:
            raise _refuse("not a valid date or time") from None
        if moment < _EPOCH:
            raise _refuse("times before 1970 are not accepted")
        return (moment - _EPOCH) // _ONE_MS
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse("expected an RFC 3339 time or unix seconds")
    if not math.isfinite(value) or not 0 <= value <= MAX_UNIX_S:
        raise _refuse(f"unix seconds must be a number from 0 to {MAX_UNIX_S:g}")
    return round(value * 1000)


def _finite(value: Any, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse(f"expected a number of {unit}")
    if not math.isfinite(value):
        raise _refuse("expected a finite number")
    return value


def _usd(value: Any) -> Decimal:
    """Through the number's decimal text, so 0.1 stays 0.1 and not 0.1000000000000000055."""
    return Decimal(repr(_finite(value, "USD")))


def _latency(value: Any) -> float:
    return float(_finite(value, "milliseconds"))


def _whole(v: Any) -> Any:
    """JSON has one kind of number: 44.0 is the integer 44, as JSON Schema (and so the
    API document) says; 44.5 stays a float and is refused."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


JsonInt = Annotated[int, BeforeValidator(_whole)]
"""An integer of a strict model, as JSON means it (see ``_whole``)."""
Tokens = Annotated[JsonInt, Field(ge=0, le=MAX_TOKENS)]
# What agents send, for the OpenAPI document (the Python types are what they become).
_TS_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {"type": "string", "format": "date-time"},
            {"type": "number", "minimum": 0, "maximum": 1e11},
        ],
        "description": "RFC 3339 with a zone, or unix seconds",
    },
    mode="validation",
)
_USD_SCHEMA = WithJsonSchema({"type": "number", "minimum": 0, "maximum": 10_000}, mode="validation")
TimestampMs = Annotated[int, BeforeValidator(_timestamp_ms), _TS_SCHEMA]
Usd = Annotated[Decimal, BeforeValidator(_usd), Field(ge=0, le=10_000), _USD_SCHEMA]
LatencyMs = Annotated[float, BeforeValidator(_latency), Field(ge=0, le=86_400_000)]


class UsageEvent(BaseModel):
    """One LLM call as reported by an agent (``POST /api/ingest/usage``)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        # For the document: error_type goes with status (see _error_type_matches_status).
        json_schema_extra={
            "oneOf": [
                {
                    "properties": {
                        "status": {"const": "ok"},
                        "error_type": {"anyOf": [{"const": ""}, {"type": "null"}]},
                    }
                },
                {
                    "properties": {
                        "status": {"const": "error"},
                        "error_type": {"type": "string", "pattern": _ERROR_TYPE.pattern},
                    },
                    "required": ["error_type"],
                },
            ]
        },
    )

    ts: TimestampMs
    agent_id: str = Field(pattern=AGENT_ID.pattern)
    task_id: str | None = Field(None, pattern=AGENT_ID.pattern)
    model: str = Field(pattern=_MODEL)
    provider: str = Field(pattern=_PROVIDER)
    input_tokens: Tokens
    output_tokens: Tokens
    cached_tokens: Tokens = 0
    cache_creation_tokens: Tokens = 0
    reasoning_tokens: Tokens = 0
    cost_usd: Usd | None = None
    latency_ms: LatencyMs
    status: Literal["ok", "error"]
    error_type: str | None = Field(None, validate_default=True)

    @field_validator("ts")
    @classmethod
    def _within_window(cls, ts: int, info: ValidationInfo) -> int:
        """Only ``validate_batch`` knows the clock and the retention; it passes them
        as validation context so every problem of an event is reported at once."""
        ctx = info.context or {}
        if "now_ms" in ctx and ts > ctx["now_ms"] + FUTURE_SKEW_MS:
            raise PydanticCustomError(
                "ts_future",
                "more than {skew} s in the future (is the agent's clock right?)",
                {"skew": FUTURE_SKEW_MS // 1000},
            )
        if "oldest_ms" in ctx and ts < ctx["oldest_ms"]:
            raise PydanticCustomError(
                "ts_too_old", "older than the retention of the coarsest rollup tier", {}
            )
        return ts

    @field_validator("cached_tokens")
    @classmethod
    def _cached_within_input(cls, cached: int, info: ValidationInfo) -> int:
        total = info.data.get("input_tokens")
        if total is not None and cached > total:
            raise PydanticCustomError(
                "usage_parts",
                "cached_tokens ({part}) exceeds input_tokens ({whole}); input_tokens must "
                "include cache reads and writes",
                {"part": cached, "whole": total},
            )
        return cached

    @field_validator("cache_creation_tokens")
    @classmethod
    def _cache_parts_within_input(cls, created: int, info: ValidationInfo) -> int:
        total, cached = info.data.get("input_tokens"), info.data.get("cached_tokens")
        if total is not None and cached is not None and cached + created > total:
            raise PydanticCustomError(
                "usage_parts",
                "cached_tokens + cache_creation_tokens ({part}) exceeds input_tokens "
                "({whole}); input_tokens must include cache reads and writes",
                {"part": cached + created, "whole": total},
            )
        return created

    @field_validator("reasoning_tokens")
    @classmethod
    def _reasoning_within_output(cls, reasoning: int, info: ValidationInfo) -> int:
        total = info.data.get("output_tokens")
        if total is not None and reasoning > total:
            raise PydanticCustomError(
                "usage_parts",
                "reasoning_tokens ({part}) exceeds output_tokens ({whole}); output_tokens "
                "must include reasoning tokens",
                {"part": reasoning, "whole": total},
            )
        return reasoning

    @field_validator("error_type")
    @classmethod
    def _error_type_matches_status(cls, value: str | None, info: ValidationInfo) -> str | None:
        status = info.data.get("status")
        if value == "":
            value = None
        if status == "error":
            if value is None:
                raise PydanticCustomError(
                    "error_type_missing", "required when status is 'error'", {}
                )
            if not _ERROR_TYPE.match(value):
                raise PydanticCustomError(
                    "error_type_format",
                    "1-128 characters from letters, digits and . _ : / - "
                    "(a class name such as RateLimitError)",
                    {},
                )
        elif status == "ok" and value is not None:
            raise PydanticCustomError(
                "error_type_unexpected", "must be empty when status is 'ok'", {}
            )
        return value


def validate_batch(
    items: list[Any], *, now_ms: int, oldest_ms: int
) -> tuple[list[UsageEvent], list[dict[str, Any]]]:
    """The valid events, and for each invalid one ``{"index", "errors": [{"field",
    "message"}]}``, every problem of every event at once.  The caller sets the batch
    policy: the ingest API refuses a batch with any bad event as a whole."""
    context = {"now_ms": now_ms, "oldest_ms": oldest_ms}
    events: list[UsageEvent] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            problems = [{"field": "", "message": "expected a JSON object"}]
            errors.append({"index": index, "errors": problems})
            continue
        try:
            events.append(UsageEvent.model_validate(item, context=context))
        except ValidationError as e:
            problems = [
                {"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"]}
                for err in e.errors(include_url=False)
            ]
            errors.append({"index": index, "errors": problems})
    return events, errors
