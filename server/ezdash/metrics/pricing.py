"""The model price table and the cost of one LLM call, in exact arithmetic.

Costs are computed in integers.  Every rate carries at most six decimal places of
USD per million tokens, so ``tokens * rate * 10**6`` is a whole number of
pico-dollars (1e-12 USD): the cost of a call is exact, with no rounding at all.
Storage uses nano-dollars (1e-9 USD, see :func:`cost_nanos`): an int64 Redis
counter then holds $9.2 billion, and the one rounding per event is at most half a
nano-dollar, so even ten million events cannot drift by more than half a cent
(half-even rounding keeps the typical drift far below that).

Model names are matched conservatively, because pricing a call at the wrong
family's rate is worse than reporting it as unpriced:

1. provider and model are compared case-insensitively (``str.casefold``), and the
   OpenTelemetry provider name ``gcp.gemini`` means ``google``;
2. the model must equal an entry's ``model`` or one of its explicit ``aliases``;
3. failing that, one dated snapshot suffix is removed and step 2 is retried.  Only
   the two forms providers use to version snapshots of the same model are removed:
   OpenAI's ``-YYYY-MM-DD`` (``gpt-4o-2024-08-06``) and Anthropic's ``-YYYYMMDD``
   (``claude-sonnet-4-20250514``), and only when the digits are a real date.  A
   snapshot priced differently from its alias (``gpt-4o-2024-05-13``) is listed
   explicitly, and step 2 finds it first.

Nothing else is guessed: no prefixes, no ``-latest``, no preview names (Google's
``-preview-05-20`` previews had their own prices), no cross-provider fallback.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

PICO_PER_NANO = 1000
NANOS_PER_USD = 10**9
PROVIDER_SYNONYMS = {"gcp.gemini": "google"}
_SNAPSHOT_SUFFIXES = (
    re.compile(r"^(.+)-(\d{4})-(\d{2})-(\d{2})$"),  # OpenAI: gpt-4o-2024-08-06
    re.compile(r"^(.+)-(\d{4})(\d{2})(\d{2})$"),  # Anthropic: claude-sonnet-4-20250514
)
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$"
_PROVIDER = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_CACHE_LIMIT = 4096


class PriceTableError(ValueError):
    """A price table that cannot be used; the message names the file and the entry."""


def _full_date(value: Any) -> date:
    """RFC 3339 ``full-date`` only: a timestamp here would suggest a precision we
    do not have (an entry takes effect at 00:00 UTC of its day)."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise PydanticCustomError("price_date", "expected an RFC 3339 date such as 2025-06-10")
    return date.fromisoformat(value)


def _rate(value: Any) -> Decimal:
    """Rates are parsed from their decimal text, never through a binary float."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise PydanticCustomError("price_rate", "expected a number of USD per million tokens")
    try:
        rate = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        raise PydanticCustomError("price_rate", "not a number: {value}", {"value": value}) from None
    if not rate.is_finite():
        raise PydanticCustomError("price_rate", "expected a finite number")
    if rate != rate.quantize(Decimal("0.000001")):
        raise PydanticCustomError("price_rate", "at most 6 decimal places (USD per million tokens)")
    return rate


Rate = Annotated[Decimal, BeforeValidator(_rate), Field(ge=0, le=100_000)]
FullDate = Annotated[date, BeforeValidator(_full_date)]


class PriceEntry(BaseModel):
    """One row of the price file: a model's rates from ``effective_from`` on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str = Field(pattern=_PROVIDER)
    model: str = Field(pattern=_NAME)
    effective_from: FullDate
    input_per_mtok: Rate
    output_per_mtok: Rate
    cache_read_per_mtok: Rate
    cache_write_per_mtok: Rate
    aliases: tuple[Annotated[str, Field(pattern=_NAME)], ...] = ()
    note: str | None = Field(None, max_length=2000)


class PriceFile(BaseModel):
    """The whole file, as shipped in ``ezdash/data/prices.json`` or an override."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1, max_length=64)
    source_date: FullDate
    source: str = Field(min_length=1, max_length=4000)
    currency: Literal["USD"]
    conventions: dict[str, str] = Field(default_factory=dict)
    models: list[PriceEntry] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class Price:
    """The rates in effect for one model at one time.

    The ``*_pico`` fields are the same rates as integer pico-dollars per token
    (``rate_per_mtok * 10**6``), which keeps the hot path free of Decimal."""

    provider: str
    model: str
    effective_from: date
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_read_per_mtok: Decimal
    cache_write_per_mtok: Decimal
    input_pico: int
    output_pico: int
    cache_read_pico: int
    cache_write_pico: int

    @classmethod
    def from_entry(cls, entry: PriceEntry) -> Price:
        def pico(rate: Decimal) -> int:
            return int(rate.scaleb(6))

        return cls(
            provider=entry.provider,
            model=entry.model,
            effective_from=entry.effective_from,
            input_per_mtok=entry.input_per_mtok,
            output_per_mtok=entry.output_per_mtok,
            cache_read_per_mtok=entry.cache_read_per_mtok,
            cache_write_per_mtok=entry.cache_write_per_mtok,
            input_pico=pico(entry.input_per_mtok),
            output_pico=pico(entry.output_per_mtok),
            cache_read_pico=pico(entry.cache_read_per_mtok),
            cache_write_pico=pico(entry.cache_write_per_mtok),
        )


class TokenParts(Protocol):
    """What pricing reads from an event (``UsageEvent`` satisfies it)."""

    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cached_tokens(self) -> int: ...
    @property
    def cache_creation_tokens(self) -> int: ...


def cost_pico(parts: TokenParts, price: Price) -> int:
    """Exact cost in pico-dollars.

    ``input_tokens`` includes the cache reads and writes (OpenTelemetry GenAI), so
    only the remainder is billed at the plain input rate; reasoning tokens are
    already inside ``output_tokens`` and are not added again.  Inconsistent parts
    raise rather than produce a negative charge."""
    inp, out = parts.input_tokens, parts.output_tokens
    read, write = parts.cached_tokens, parts.cache_creation_tokens
    if min(inp, out, read, write) < 0:
        raise ValueError("token counts cannot be negative")
    uncached = inp - read - write
    if uncached < 0:
        raise ValueError("cached_tokens + cache_creation_tokens exceeds input_tokens")
    return (
        uncached * price.input_pico
        + read * price.cache_read_pico
        + write * price.cache_write_pico
        + out * price.output_pico
    )


def cost(parts: TokenParts, price: Price) -> Decimal:
    """Exact cost in USD (a Decimal with 12 places: no rounding has happened)."""
    return Decimal(cost_pico(parts, price)).scaleb(-12)


def cost_nanos(parts: TokenParts, price: Price) -> int:
    """Cost in nano-dollars, the unit counters are kept in (rounded half-even)."""
    return _round_half_even(cost_pico(parts, price), PICO_PER_NANO)


def usd_to_nanos(usd: Decimal) -> int:
    """A reported ``cost_usd`` in nano-dollars, rounded half-even like computed costs."""
    return int(usd.scaleb(9).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def nanos_to_usd(nanos: int) -> float:
    """Float USD for JSON answers; sums stay in integers until this last step."""
    return nanos / NANOS_PER_USD


def _round_half_even(numerator: int, divisor: int) -> int:
    quotient, rem = divmod(numerator, divisor)
    if 2 * rem > divisor or (2 * rem == divisor and quotient % 2):
        quotient += 1
    return quotient


def _day_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1000


def _provider_key(provider: str) -> str:
    key = provider.strip().casefold()
    return PROVIDER_SYNONYMS.get(key, key)


def _strip_snapshot(model: str) -> str | None:
    """The model without a dated snapshot suffix, if it has one that is a real date."""
    for pattern in _SNAPSHOT_SUFFIXES:
        m = pattern.match(model)
        if m is None:
            continue
        year, month, day = int(m.group(2)), int(m.group(3)), int(m.group(4))
        try:
            date(year, month, day)
        except ValueError:
            return None
        return m.group(1) if year >= 2020 else None
    return None


class PriceTable:
    """Validated prices, looked up by provider, model and the event's time."""

    def __init__(self, data: PriceFile) -> None:
        self.file = data
        self._by_key: dict[tuple[str, str], tuple[list[int], list[Price]]] = {}
        self._resolved: dict[tuple[str, str], tuple[str, str] | None] = {}
        names: dict[tuple[str, str], str] = {}
        seen: set[tuple[str, str, date]] = set()
        for entry in sorted(data.models, key=lambda e: e.effective_from):
            provider, model = _provider_key(entry.provider), entry.model.casefold()
            where = f"{entry.provider}/{entry.model} from {entry.effective_from}"
            if (provider, model, entry.effective_from) in seen:
                raise PriceTableError(f"models: {where} is listed twice")
            seen.add((provider, model, entry.effective_from))
            for name in (model, *(a.casefold() for a in entry.aliases)):
                owner = names.setdefault((provider, name), model)
                if owner != model:
                    raise PriceTableError(
                        f"models: {where}: name {name!r} already belongs to {provider}/{owner}"
                    )
            starts, prices = self._by_key.setdefault((provider, model), ([], []))
            starts.append(_day_ms(entry.effective_from))
            prices.append(Price.from_entry(entry))
        self._names = names

    @property
    def version(self) -> str:
        return self.file.version

    def price(self, provider: str, model: str, ts_ms: int) -> Price | None:
        """The entry in effect at ``ts_ms`` (latest ``effective_from`` not after it),
        or None for an unknown model or a time before its first price."""
        key = self._resolve(provider, model)
        if key is None:
            return None
        starts, prices = self._by_key[key]
        i = bisect_right(starts, ts_ms)
        return prices[i - 1] if i else None

    def _resolve(self, provider: str, model: str) -> tuple[str, str] | None:
        raw = (provider, model)
        if raw in self._resolved:
            return self._resolved[raw]
        p = _provider_key(provider)
        m = model.strip().casefold()
        owner = self._names.get((p, m))
        if owner is None:
            base = _strip_snapshot(m)
            owner = self._names.get((p, base)) if base else None
        key = (p, owner) if owner else None
        if len(self._resolved) >= _CACHE_LIMIT:
            self._resolved.clear()  # unbounded model strings must not grow memory
        self._resolved[raw] = key
        return key

    def as_api(self) -> dict[str, Any]:
        """The ``GET /api/metrics/prices`` answer (rates as JSON numbers)."""
        rows = sorted(self.file.models, key=lambda e: (e.provider, e.model, e.effective_from))
        return {
            "version": self.file.version,
            "source_date": self.file.source_date.isoformat(),
            "models": [
                {
                    "provider": e.provider,
                    "model": e.model,
                    "effective_from": e.effective_from.isoformat(),
                    "input_per_mtok": float(e.input_per_mtok),
                    "output_per_mtok": float(e.output_per_mtok),
                    "cache_read_per_mtok": float(e.cache_read_per_mtok),
                    "cache_write_per_mtok": float(e.cache_write_per_mtok),
                }
                for e in rows
            ],
        }


def parse_price_table(text: str, *, origin: str = "price table") -> PriceTable:
    """Validate a price file's text; errors name ``origin`` and the failing entry."""
    try:
        raw = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as e:
        raise PriceTableError(f"{origin}: not valid JSON: {e}") from None
    try:
        data = PriceFile.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(_describe(err, raw) for err in e.errors())
        raise PriceTableError(f"{origin}: {problems}") from None
    try:
        return PriceTable(data)
    except PriceTableError as e:
        raise PriceTableError(f"{origin}: {e}") from None


def load_price_table(path: Path | None = None) -> PriceTable:
    """The override file at ``path`` if configured, else the table shipped in the package."""
    if path is None:
        text = (resources.files("ezdash") / "data" / "prices.json").read_text(encoding="utf-8")
        return parse_price_table(text, origin="ezdash/data/prices.json")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PriceTableError(f"{path}: cannot read the price table: {e.strerror}") from None
    return parse_price_table(text, origin=str(path))


def _describe(err: Mapping[str, Any], raw: Any) -> str:
    """``models[3] (openai/gpt-4o): input_per_mtok: ...`` rather than a bare location."""
    loc = list(err["loc"])
    label = ".".join(str(p) for p in loc) or "(file)"
    if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
        entry = raw["models"][loc[1]] if isinstance(raw, dict) else None
        who = ""
        if isinstance(entry, dict):
            who = f" ({entry.get('provider', '?')}/{entry.get('model', '?')})"
        field = ".".join(str(p) for p in loc[2:]) or "(entry)"
        label = f"models[{loc[1]}]{who}: {field}"
    return f"{label}: {err['msg']}"
