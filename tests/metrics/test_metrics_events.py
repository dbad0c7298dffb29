"""Usage events are refused with the field named, and a batch reports bad events by
index without refusing the good ones."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from ezdash.metrics import FUTURE_SKEW_MS, UsageEvent, validate_batch

NOW = 1_795_860_000_000  # 2026-11-28T10:00:00Z
DAY = 86_400_000


def raw(**changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "ts": "2026-11-28T09:59:00.250Z",
        "agent_id": "demo-coder-002",
        "task_id": "tsk_01JDX3K8Z1Q2W3E4R5T6Y7U8I9",
        "model": "claude-sonnet-4",
        "provider": "anthropic",
        "input_tokens": 1200,
        "output_tokens": 300,
        "cached_tokens": 800,
        "cache_creation_tokens": 100,
        "reasoning_tokens": 50,
        "cost_usd": 0.0123,
        "latency_ms": 812.5,
        "status": "ok",
        "error_type": None,
    }
    item.update(changes)
    return {k: v for k, v in item.items() if v is not ...}


def problems(item: Any) -> list[dict[str, str]]:
    events, errors = validate_batch([item], now_ms=NOW, oldest_ms=NOW - 400 * DAY)
    assert not events
    assert [e["index"] for e in errors] == [0]
    result: list[dict[str, str]] = errors[0]["errors"]
    return result


def fields(item: Any) -> list[str]:
    return [p["field"] for p in problems(item)]


def test_a_full_event_validates() -> None:
    e = UsageEvent.model_validate(raw())
    assert e.ts == NOW - 59_750
    assert e.cost_usd == Decimal("0.0123")
    assert e.error_type is None and e.latency_ms == 812.5


def test_optional_parts_default_to_zero() -> None:
    e = UsageEvent.model_validate(
        raw(
            cached_tokens=...,
            cache_creation_tokens=...,
            reasoning_tokens=...,
            cost_usd=...,
            task_id=...,
            error_type=...,
        )
    )
    assert (e.cached_tokens, e.cache_creation_tokens, e.reasoning_tokens) == (0, 0, 0)
    assert e.cost_usd is None and e.task_id is None


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2026-11-28T10:00:00Z", NOW),
        ("2026-11-28T11:00:00+01:00", NOW),
        ("2026-11-28t10:00:00.5z", NOW + 500),
        ("2026-11-28 10:00:00.123456789Z", NOW + 123),
        (1_795_860_000, NOW),
        (1_795_860_000.25, NOW + 250),
    ],
)
def test_timestamps_become_milliseconds(ts: Any, expected: int) -> None:
    assert UsageEvent.model_validate(raw(ts=ts)).ts == expected


@pytest.mark.parametrize(
    "ts",
    ["2026-11-28T10:00:00", "2026-11-28", "yesterday", "2026-02-30T10:00:00Z", True, -5, None],
)
def test_bad_timestamps_are_refused(ts: Any) -> None:
    assert fields(raw(ts=ts)) == ["ts"]


def test_parts_exceeding_the_whole_are_refused_naming_the_part() -> None:
    [problem] = problems(raw(input_tokens=500, cached_tokens=800, cache_creation_tokens=0))
    assert problem["field"] == "cached_tokens"
    assert "exceeds input_tokens (500)" in problem["message"]
    [problem] = problems(raw(input_tokens=850, cached_tokens=800, cache_creation_tokens=100))
    assert problem["field"] == "cache_creation_tokens"
    assert "(900) exceeds input_tokens (850)" in problem["message"]
    [problem] = problems(raw(output_tokens=40, reasoning_tokens=50))
    assert problem["field"] == "reasoning_tokens"
    # Exactly equal is fine: a call served entirely from the cache.
    UsageEvent.model_validate(raw(input_tokens=900, cached_tokens=800, cache_creation_tokens=100))
    # A whole number written with a point is that integer (JSON has one number type).
    assert UsageEvent.model_validate(raw(output_tokens=700.0)).output_tokens == 700


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"input_tokens": -1}, "input_tokens"),
        ({"output_tokens": 1.5}, "output_tokens"),  # 1.0 is the integer 1, as JSON says
        ({"cached_tokens": True}, "cached_tokens"),
        ({"reasoning_tokens": "5"}, "reasoning_tokens"),
        ({"input_tokens": 10**12}, "input_tokens"),
        ({"cost_usd": -0.01}, "cost_usd"),
        ({"cost_usd": "0.01"}, "cost_usd"),
        ({"cost_usd": float("inf")}, "cost_usd"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"latency_ms": float("nan")}, "latency_ms"),
        ({"agent_id": "has space"}, "agent_id"),
        ({"agent_id": "x" * 129}, "agent_id"),
        ({"model": ""}, "model"),
        ({"model": "m" * 129}, "model"),
        ({"provider": ""}, "provider"),
        ({"status": "failed"}, "status"),
        ({"surprise": 1}, "surprise"),
        ({"model": ...}, "model"),
    ],
)
def test_each_bad_field_is_named(change: dict[str, Any], field: str) -> None:
    assert fields(raw(**change)) == [field]


def test_error_type_is_required_exactly_when_status_is_error() -> None:
    assert UsageEvent.model_validate(raw(status="error", error_type="RateLimitError")).error_type
    assert UsageEvent.model_validate(raw(error_type="")).error_type is None
    assert fields(raw(status="error")) == ["error_type"]
    assert fields(raw(status="error", error_type="")) == ["error_type"]
    assert fields(raw(status="error", error_type="rate limit!")) == ["error_type"]
    assert fields(raw(status="ok", error_type="Timeout")) == ["error_type"]


def test_batch_reports_bad_events_by_index_and_keeps_good_ones() -> None:
    items = [
        raw(),
        raw(input_tokens=10, cached_tokens=20, agent_id="bad id", cache_creation_tokens=0),
        "not an object",
        raw(agent_id="demo-support-001"),
        raw(status="error"),
    ]
    events, errors = validate_batch(items, now_ms=NOW, oldest_ms=NOW - 400 * DAY)
    assert [e.agent_id for e in events] == ["demo-coder-002", "demo-support-001"]
    assert [e["index"] for e in errors] == [1, 2, 4]
    assert {p["field"] for p in errors[0]["errors"]} == {"agent_id", "cached_tokens"}
    assert errors[1]["errors"] == [{"field": "", "message": "expected a JSON object"}]
    assert errors[2]["errors"][0]["field"] == "error_type"
    assert all(p["message"] for e in errors for p in e["errors"])


def test_future_timestamps_beyond_a_minute_are_refused() -> None:
    ok, _ = validate_batch([raw(ts=(NOW + FUTURE_SKEW_MS) / 1000)], now_ms=NOW, oldest_ms=0)
    assert len(ok) == 1
    [problem] = problems(raw(ts=(NOW + FUTURE_SKEW_MS + 1) / 1000))
    assert problem["field"] == "ts" and "future" in problem["message"]
    [problem] = problems(raw(ts="2026-11-28T10:05:00Z"))
    assert problem["field"] == "ts"


def test_events_older_than_retention_are_refused() -> None:
    oldest = NOW - 30 * DAY
    events, errors = validate_batch(
        [raw(ts=oldest / 1000), raw(ts=(oldest - 1) / 1000)], now_ms=NOW, oldest_ms=oldest
    )
    assert len(events) == 1
    assert errors[0]["index"] == 1 and errors[0]["errors"][0]["field"] == "ts"


def test_the_model_alone_knows_no_clock() -> None:
    """Validation outside a batch (tests, imports) does not depend on the time."""
    assert UsageEvent.model_validate(raw(ts="2099-01-01T00:00:00Z")).ts > NOW
    with pytest.raises(ValidationError):
        UsageEvent.model_validate(raw(ts="2099-01-01T00:00:00Z"), context={"now_ms": NOW})
