"""Metrics queries over the rollups: plan (tier, buckets, groups), read, assemble.

The plan reads the coarsest tier whose step divides the requested step and whose
retention still covers the start, so a query's cost depends on the number of
buckets and groups it returns, never on the number of events behind them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from redis.asyncio import Redis

from ..keys import MetricKeys
from ..timeutil import format_duration, format_ms
from . import histogram
from .catalog import QueryError as QueryError  # what plan() raises
from .catalog import slice_for
from .rollup import Tier

MAX_BUCKETS = 10_000
NICE_STEPS_MS = (60_000, 300_000, 900_000, 3_600_000, 21_600_000, 86_400_000, 604_800_000)


@dataclass(frozen=True)
class Plan:
    tier: Tier
    step_ms: int
    start_ms: int  # aligned, inclusive
    end_ms: int  # aligned, exclusive
    dim: str  # the stored dimension read
    groups: tuple[str, ...] | None  # None: every group seen in the range
    label: str | None  # the group_by name shown in the answer
    label_part: int | None  # for combined dimensions: which part of "a|b" is the label
    prefix: str | None  # for combined dimensions: required other part

    @property
    def buckets(self) -> int:
        return (self.end_ms - self.start_ms) // self.step_ms

    @property
    def factor(self) -> int:
        return self.step_ms // self.tier.step_ms


def fmt_step(ms: int) -> str:
    return format_duration(ms / 1000)


def plan(
    tiers: Sequence[Tier],
    *,
    start_ms: int,
    end_ms: int,
    step_ms: int | None,
    now_ms: int,
    group_by: str,
    filters: dict[str, str],
    keep_step: bool = False,
) -> Plan:
    """What to read for a range and step. It answers every range and step rather than
    refusing one (the answer's ``from``, ``step`` and ``stats.tier`` say what was read):

    - nothing older than the longest retention is kept, so the range starts there at
      the earliest; a ``to`` before ``from`` is an empty range;
    - a step is a whole number of the finest tier's buckets (rounded up);
    - a step too fine for the age of the range, or giving more than ``MAX_BUCKETS``
      buckets, is coarsened to the first nice step that fits; with ``keep_step``
      (forecasts, whose step is the model's) the range is shortened instead.
    """
    oldest = now_ms - tiers[-1].retention_ms
    start_ms = max(start_ms, oldest)
    end_ms = max(end_ms, start_ms)
    span = end_ms - start_ms
    finest = tiers[0].step_ms
    if step_ms is not None:
        step_ms = max(finest, -(-step_ms // finest) * finest)
    if step_ms is not None and keep_step:
        dividing = [t for t in tiers if step_ms % t.step_ms == 0]
        tier = _tier_for(tiers, step_ms, start_ms, now_ms) or max(
            dividing, key=lambda t: t.retention_ms
        )
        start_ms = max(start_ms, now_ms - tier.retention_ms, end_ms - MAX_BUCKETS * step_ms)
        end_ms = max(end_ms, start_ms)
    else:
        wanted = 300 if step_ms is None else MAX_BUCKETS
        candidates = [step_ms] if step_ms is not None else []
        candidates += [s for s in NICE_STEPS_MS if step_ms is None or s > step_ms]
        # A tier whose retention misses the start by less than a bucket still serves:
        # the range then starts where the tier's data does.
        fitting = [
            s
            for s in candidates
            if span / s <= wanted and _tier_for(tiers, s, start_ms + s, now_ms) is not None
        ]
        step_ms = fitting[0] if fitting else NICE_STEPS_MS[-1]
        tier = _tier_for(tiers, step_ms, start_ms + step_ms, now_ms) or tiers[-1]
        start_ms = max(start_ms, end_ms - MAX_BUCKETS * step_ms, now_ms - tier.retention_ms)
        end_ms = max(end_ms, start_ms)
    start = start_ms // step_ms * step_ms
    end = max(start, -(-end_ms // step_ms) * step_ms) if end_ms > start_ms else start
    sl = slice_for(group_by, filters)
    return Plan(tier, step_ms, start, end, sl.dim, sl.groups, sl.label, sl.label_part, sl.prefix)


def _tier_for(tiers: Sequence[Tier], step_ms: int, start_ms: int, now_ms: int) -> Tier | None:
    ok = [t for t in tiers if step_ms % t.step_ms == 0 and start_ms >= now_ms - t.retention_ms]
    return ok[-1] if ok else None  # the coarsest that fits


class Reader:
    """Reads rollups for a plan: packed counters and sparse histograms."""

    def __init__(self, redis: Redis, raw: Redis, keys: MetricKeys) -> None:
        self.redis = redis
        self.raw = raw  # no reply decoding: counter arrays are binary
        self.keys = keys

    def _range(self, p: Plan) -> tuple[int, int, range]:
        t = p.tier
        b0, b1 = p.start_ms // t.step_ms, p.end_ms // t.step_ms
        return b0, b1, range(b0 // t.chunk, (b1 - 1) // t.chunk + 1)

    async def groups(self, p: Plan) -> list[tuple[str, str]]:
        """(stored group, label) pairs the answer has series for."""
        if p.groups is not None:
            stored = list(p.groups)
        else:
            _, _, chunks = self._range(p)
            async with self.redis.pipeline(transaction=False) as pipe:
                for c in chunks:
                    pipe.smembers(self.keys.groups(p.tier.name, p.dim, c))
                sets = await pipe.execute()
            stored = sorted(set().union(*sets)) if sets else []
        out = []
        for g in stored:
            if p.label_part is None:
                out.append((g, g))
                continue
            parts = g.split("|", 1)
            if len(parts) == 2 and parts[1 - p.label_part] == p.prefix:
                out.append((g, parts[p.label_part]))
        return out

    async def counters(
        self, p: Plan, groups: list[str], metrics: list[str]
    ) -> dict[tuple[str, str], np.ndarray]:
        """(group, metric) -> int64 array of the plan's buckets (zeros where empty)."""
        b0, b1, chunks = self._range(p)
        t = p.tier
        async with self.raw.pipeline(transaction=False) as pipe:
            for g in groups:
                for m in metrics:
                    for c in chunks:
                        pipe.get(self.keys.counter(t.name, p.dim, g, m, c))
            raw = await pipe.execute()
        out: dict[tuple[str, str], np.ndarray] = {}
        i = 0
        n_chunks = len(chunks)
        for g in groups:
            for m in metrics:
                parts = []
                for value in raw[i : i + n_chunks]:
                    arr = np.zeros(t.chunk, dtype=np.int64)
                    if value:
                        data = np.frombuffer(value, dtype=">i8")
                        arr[: len(data)] = data
                    parts.append(arr)
                i += n_chunks
                if not parts:  # an empty range reads no chunk
                    out[(g, m)] = np.zeros(0, dtype=np.int64)
                    continue
                full = np.concatenate(parts)[b0 - chunks[0] * t.chunk : b1 - chunks[0] * t.chunk]
                out[(g, m)] = full.reshape(p.buckets, p.factor).sum(axis=1)
        return out

    async def histograms(
        self, p: Plan, groups: list[str], name: str
    ) -> dict[str, list[dict[int, int]]]:
        """group -> one merged histogram per bucket of the plan."""
        b0, b1, chunks = self._range(p)
        t = p.tier
        async with self.redis.pipeline(transaction=False) as pipe:
            for g in groups:
                for c in chunks:
                    pipe.hgetall(self.keys.histogram(t.name, p.dim, g, name, c))
            raw = await pipe.execute()
        out: dict[str, list[dict[int, int]]] = {}
        i = 0
        for g in groups:
            per: list[dict[int, int]] = [{} for _ in range(p.buckets)]
            for c, fields in zip(chunks, raw[i : i + len(chunks)], strict=True):
                base = c * t.chunk
                for field, count in fields.items():
                    off, _, hb = field.partition(":")
                    bucket = base + int(off)
                    if b0 <= bucket < b1:
                        h = per[(bucket - b0) // p.factor]
                        k = int(hb)
                        h[k] = h.get(k, 0) + int(count)
            i += len(chunks)
            out[g] = per
        return out

    async def error_types(self, p: Plan) -> list[str]:
        _, _, chunks = self._range(p)
        async with self.redis.pipeline(transaction=False) as pipe:
            for c in chunks:
                pipe.smembers(self.keys.error_types(p.tier.name, c))
            sets = await pipe.execute()
        return sorted(set().union(*sets)) if sets else []

    async def as_of(self) -> str | None:
        raw = await self.redis.get(self.keys.as_of)
        return format_ms(int(raw)) if raw else None


def stats(p: Plan, started: float) -> dict[str, Any]:
    """The ``stats`` every metrics and analytics answer carries: how costly it was."""
    return {
        "exec_ms": round((time.perf_counter() - started) * 1000, 3),
        "buckets": p.buckets,
        "tier": p.tier.name,
    }


def envelope(
    p: Plan,
    group_by: str,
    series: list[dict[str, Any]],
    totals: dict[str, Any],
    as_of: str | None,
    started: float,
    **extra: Any,
) -> dict[str, Any]:
    t = [format_ms(p.start_ms + i * p.step_ms) for i in range(p.buckets)]
    return {
        "from": format_ms(p.start_ms),
        "to": format_ms(p.end_ms),
        "step": fmt_step(p.step_ms),
        "group_by": group_by,
        "t": t,
        "series": series,
        "totals": totals,
        **extra,
        "as_of": as_of,
        "stats": stats(p, started),
    }


def percentiles(hists: list[dict[int, int]], qs: Sequence[float]) -> list[list[float | None]]:
    """Per bucket, the requested quantiles (None where the bucket is empty)."""
    out: list[list[float | None]] = [[] for _ in qs]
    for h in hists:
        values = histogram.quantiles(h, qs) if h else [None] * len(qs)
        for i, v in enumerate(values):
            out[i].append(None if v is None else round(v, 3))
    return out


def ratio(num: np.ndarray, den: np.ndarray) -> list[float | None]:
    return [
        None if d == 0 else round(float(n) / float(d), 6) for n, d in zip(num, den, strict=True)
    ]
