"""Costs against figures worked out by hand, the price in effect at an event's time,
and the conservative model-name rule."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ezdash.metrics import (
    Price,
    PriceTable,
    PriceTableError,
    UsageEvent,
    cost,
    cost_nanos,
    cost_pico,
    load_price_table,
    nanos_to_usd,
    parse_price_table,
    usd_to_nanos,
)


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def event(
    model: str = "gpt-4o",
    provider: str = "openai",
    *,
    ts: str = "2026-11-28T09:00:00Z",
    inp: int = 0,
    out: int = 0,
    cached: int = 0,
    created: int = 0,
    reasoning: int = 0,
) -> UsageEvent:
    return UsageEvent.model_validate(
        {
            "ts": ts,
            "agent_id": "agent-1",
            "model": model,
            "provider": provider,
            "input_tokens": inp,
            "output_tokens": out,
            "cached_tokens": cached,
            "cache_creation_tokens": created,
            "reasoning_tokens": reasoning,
            "latency_ms": 850,
            "status": "ok",
        }
    )


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return load_price_table()


def priced(table: PriceTable, e: UsageEvent) -> Price:
    price = table.price(e.provider, e.model, e.ts)
    assert price is not None, (e.provider, e.model)
    return price


@dataclass(frozen=True)
class Parts:
    """Any object with the four counts can be priced (``TokenParts``)."""

    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cache_creation_tokens: int


def cents(usd: Decimal) -> Decimal:
    return usd.quantize(Decimal("0.01"))


def test_anthropic_call_with_cache_reads_writes_and_thinking(table: PriceTable) -> None:
    # claude-sonnet-4: input $3, cache write $3.75, cache hit $0.30, output $15 per Mtok.
    # 12,345 input = 10,000 cache reads + 1,200 cache writes + 1,145 uncached.
    #   1,145 * 3.00 =  3,435.00 USD/Mtok-token
    #  10,000 * 0.30 =  3,000.00
    #   1,200 * 3.75 =  4,500.00
    #   2,345 * 15.0 = 35,175.00   (the 1,000 thinking tokens are inside the 2,345)
    #   total        = 46,110.00 / 1,000,000 = $0.046110
    e = event(
        "claude-sonnet-4-20250514",
        "anthropic",
        inp=12_345,
        cached=10_000,
        created=1_200,
        out=2_345,
        reasoning=1_000,
    )
    price = priced(table, e)
    assert cost(e, price) == Decimal("0.046110")
    assert cents(cost(e, price)) == Decimal("0.05")
    assert cost_nanos(e, price) == 46_110_000
    assert cost_nanos(e, price) // 1000 == 46_110  # micro-dollars


def test_openai_call_with_cached_input(table: PriceTable) -> None:
    # gpt-4o since 2024-08-06: input $2.50, cached input $1.25, output $10 per Mtok.
    #  20,000 uncached * 2.50 = 50,000
    #  30,000 cached   * 1.25 = 37,500
    #   1,234 output   * 10   = 12,340
    #   total = 99,840 / 1e6 = $0.099840 -> 10 cents
    e = event(inp=50_000, cached=30_000, out=1_234)
    price = priced(table, e)
    assert cost(e, price) == Decimal("0.09984")
    assert cents(cost(e, price)) == Decimal("0.10")
    assert cost_nanos(e, price) == 99_840_000


def test_reasoning_tokens_are_not_counted_twice(table: PriceTable) -> None:
    # o3 after the 2025-06-10 cut: input $2, output $8 per Mtok.
    # 1,000 * 2 + 5,000 * 8 = 42,000 -> $0.042 (double counting 4,500 thinking tokens
    # would give $0.078).
    e = event("o3", inp=1_000, out=5_000, reasoning=4_500, ts="2025-07-01T00:00:00Z")
    assert cost(e, priced(table, e)) == Decimal("0.042")


def test_price_change_applies_only_from_its_effective_date(table: PriceTable) -> None:
    # o3 launched at $10/$40 and was cut to $2/$8 on 2025-06-10 (00:00 UTC).
    def o3_cost(ts: str) -> Decimal:
        e = event("o3-2025-04-16", inp=1_000_000, out=1_000_000, ts=ts)
        return cost(e, priced(table, e))

    assert o3_cost("2025-04-16T00:00:00Z") == Decimal("50")
    assert o3_cost("2025-06-09T23:59:59.999Z") == Decimal("50")
    assert o3_cost("2025-06-10T00:00:00Z") == Decimal("10")
    assert o3_cost("2026-11-28T12:00:00Z") == Decimal("10")
    assert table.price("openai", "o3", ms("2025-04-15T23:59:59")) is None  # before launch

    # A range of daily events across the change: each is priced by its own day.
    days = [f"2025-06-{d:02d}T12:00:00Z" for d in range(5, 16)]
    totals = [o3_cost(d) for d in days]
    assert totals == [Decimal("50")] * 5 + [Decimal("10")] * 6


def test_model_name_normalisation_is_conservative(table: PriceTable) -> None:
    now = ms("2026-11-28T00:00:00")

    def model_of(provider: str, model: str) -> str | None:
        price = table.price(provider, model, now)
        return None if price is None else price.model

    assert model_of("openai", "gpt-4o") == "gpt-4o"
    assert model_of("OpenAI", "GPT-4o") == "gpt-4o"
    assert model_of("openai", "gpt-4o-2024-11-20") == "gpt-4o"
    assert model_of("openai", "gpt-4o-mini-2024-07-18") == "gpt-4o-mini"
    assert model_of("openai", "gpt-4o-2024-05-13") == "gpt-4o-2024-05-13"  # own price
    assert model_of("anthropic", "claude-opus-4-1-20250805") == "claude-opus-4-1"
    assert model_of("anthropic", "claude-sonnet-4-0") == "claude-sonnet-4"  # explicit alias
    assert model_of("gcp.gemini", "gemini-2.5-pro") == "gemini-2.5-pro"
    for provider, model in [
        ("openai", "gpt-4"),  # no prefix matching across families
        ("openai", "gpt-4o-latest"),
        ("openai", "gpt-4o-2024-13-01"),  # not a date
        ("openai", "gpt-4-0613"),  # MMDD snapshots are not stripped
        ("anthropic", "gpt-4o"),  # model of another provider
        ("azure", "gpt-4o"),
        ("google", "gemini-2.5-flash-preview-05-20"),
        ("anthropic", "claude-haiku-4"),  # not a model Anthropic publishes a price for
        ("openai", "unknown-model"),
    ]:
        assert model_of(provider, model) is None, (provider, model)


def test_gpt_4o_launch_snapshot_keeps_its_price(table: PriceTable) -> None:
    e = event("gpt-4o-2024-05-13", inp=1_000_000, out=1_000_000, cached=500_000)
    assert cost(e, priced(table, e)) == Decimal("20")  # no cached discount: 5 + 15
    e = event("gpt-4o", inp=1_000_000, out=1_000_000, ts="2024-06-01T00:00:00Z")
    assert cost(e, priced(table, e)) == Decimal("20")
    e = event("gpt-4o", inp=1_000_000, out=1_000_000, ts="2024-09-01T00:00:00Z")
    assert cost(e, priced(table, e)) == Decimal("12.5")


def test_cost_is_never_negative_and_sums_exactly(table: PriceTable) -> None:
    prices = [(e.provider, e.model, e.effective_from.isoformat()) for e in table.file.models]
    for seed in range(5):
        rng = random.Random(seed)
        total_pico = 0
        total_usd = Decimal(0)
        for _ in range(400):
            provider, model, day = rng.choice(prices)
            inp = rng.choice([0, 1, rng.randint(0, 2_000_000)])
            cached = rng.randint(0, inp)
            created = rng.randint(0, inp - cached)
            out = rng.choice([0, 1, rng.randint(0, 200_000)])
            e = event(
                model,
                provider,
                ts=f"{day}T00:00:00Z",
                inp=inp,
                cached=cached,
                created=created,
                out=out,
                reasoning=rng.randint(0, out),
            )
            price = priced(table, e)
            exact = cost(e, price)
            assert exact >= 0
            assert cost_nanos(e, price) >= 0
            total_pico += cost_pico(e, price)
            total_usd += exact
        assert total_usd == Decimal(total_pico).scaleb(-12)


def test_inconsistent_parts_are_refused_not_priced(table: PriceTable) -> None:
    bad = Parts(input_tokens=10, output_tokens=0, cached_tokens=20, cache_creation_tokens=0)
    price = priced(table, event())
    with pytest.raises(ValueError, match="exceeds input_tokens"):
        cost(bad, price)


def test_rounding_to_nanos_is_half_even() -> None:
    table = parse_price_table(
        _table_text([_row("openai", "tiny", input_per_mtok="0.0005")]), origin="test"
    )
    price = table.price("openai", "tiny", ms("2026-01-01T00:00:00"))
    assert price is not None
    # 0.0005 USD/Mtok = 500 pico-dollars per token: 1 token is exactly half a nano-dollar.
    assert [cost_nanos(event("tiny", inp=n), price) for n in (1, 2, 3, 5)] == [0, 1, 2, 2]
    assert usd_to_nanos(Decimal("0.0000000025")) == 2
    assert usd_to_nanos(Decimal("0.0000000035")) == 4
    assert usd_to_nanos(Decimal("0.1")) == 100_000_000
    assert nanos_to_usd(46_110_000) == 0.04611


def test_shipped_table_validates_and_every_entry_has_four_prices(table: PriceTable) -> None:
    from importlib import resources

    raw = json.loads((resources.files("ezdash") / "data" / "prices.json").read_text())
    assert raw["currency"] == "USD" and raw["version"] and raw["source"]
    fields = ("input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "cache_write_per_mtok")
    for row in raw["models"]:
        for field in fields:
            assert isinstance(row[field], int | float) and row[field] >= 0, (row["model"], field)
    for e in table.file.models:
        assert e.cache_read_per_mtok <= e.input_per_mtok < e.output_per_mtok, e.model
        if e.provider in ("openai", "google"):  # no cache-write premium
            assert e.cache_write_per_mtok == e.input_per_mtok, e.model
        else:  # Anthropic: writes cost more than input, hits far less
            assert e.cache_write_per_mtok > e.input_per_mtok, e.model
    counts: dict[tuple[str, str], int] = {}
    for e in table.file.models:
        counts[e.provider, e.model] = counts.get((e.provider, e.model), 0) + 1
    assert max(counts.values()) >= 2  # at least one documented price change
    now = ms("2026-11-28T00:00:00")
    for provider, model in [
        ("openai", "gpt-4o"),
        ("anthropic", "claude-sonnet-4"),
        ("openai", "gpt-4.1"),
        ("openai", "gpt-4o-mini"),
    ]:
        assert table.price(provider, model, now) is not None, model


def test_api_shape(table: PriceTable) -> None:
    api = table.as_api()
    assert set(api) == {"version", "source_date", "models"}
    assert api["version"] == table.version
    keys = {
        "provider",
        "model",
        "effective_from",
        "input_per_mtok",
        "output_per_mtok",
        "cache_read_per_mtok",
        "cache_write_per_mtok",
    }
    assert all(set(row) == keys for row in api["models"])
    row = next(r for r in api["models"] if r["model"] == "gpt-4o-mini")
    assert row["cache_read_per_mtok"] == 0.075 and row["effective_from"] == "2024-07-18"
    json.dumps(api)  # plain JSON types only


def _row(provider: str, model: str, **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "provider": provider,
        "model": model,
        "effective_from": "2025-01-01",
        "input_per_mtok": 1,
        "output_per_mtok": 2,
        "cache_read_per_mtok": 0.1,
        "cache_write_per_mtok": 1.25,
    }
    row.update(changes)
    return row


def _table_text(rows: list[dict[str, Any]]) -> str:
    return json.dumps(
        {
            "version": "t.1",
            "source_date": "2026-01-01",
            "source": "test",
            "currency": "USD",
            "models": rows,
        }
    )


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (
            [_row("openai", "a"), _row("openai", "b", input_per_mtok=-1)],
            r"models\[1\] \(openai/b\): input_per_mtok",
        ),
        (
            [_row("openai", "a", cache_read_per_mtok=None)],
            r"models\[0\] \(openai/a\): cache_read_per_mtok",
        ),
        ([_row("openai", "a", output_per_mtok="0.0000001")], "at most 6 decimal places"),
        ([_row("openai", "a", effective_from="2025-01-01T00:00:00Z")], "RFC 3339 date"),
        ([_row("openai", "a", price=1)], r"models\[0\] \(openai/a\): price"),
        ([_row("openai", "a"), _row("OpenAI", "A")], "OpenAI/A from 2025-01-01 is listed twice"),
        ([_row("openai", "a"), _row("openai", "b", aliases=["a"])], "already belongs to openai/a"),
        ([], "models"),
    ],
)
def test_invalid_tables_name_the_entry(rows: list[dict[str, Any]], expected: str) -> None:
    with pytest.raises(PriceTableError, match=expected):
        parse_price_table(_table_text(rows), origin="override.json")


def test_override_file_is_loaded_and_errors_name_it(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(_table_text([_row("acme", "m1")]))
    table = load_price_table(path)
    assert table.version == "t.1"
    assert table.price("acme", "m1", ms("2025-01-01T00:00:00")) is not None
    assert table.price("openai", "gpt-4o", ms("2026-01-01T00:00:00")) is None
    path.write_text("{not json")
    with pytest.raises(PriceTableError, match=f"{path}: not valid JSON"):
        load_price_table(path)
    with pytest.raises(PriceTableError, match="cannot read"):
        load_price_table(tmp_path / "missing.json")
