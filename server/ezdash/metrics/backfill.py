"""Realistic usage history written straight into the metrics rollups (``ezdash backfill``).

Why it exists: a fresh dashboard is empty, and a cost or latency chart is only
convincing with weeks of history behind it: daily and weekly cycles, growth,
incidents, a price change.  Thirty days of a hundred agents are about four million
LLM calls; sending them through ``POST /api/ingest/usage`` or a ``UsageRecorder``
would take many minutes and fill the raw usage stream (capped at a million) with
made-up events.  So nothing here goes through the raw stream:

1. Calls are simulated with numpy one UTC day at a time (:class:`Simulation`):
   per agent a kind (the demo fleet's kinds, queues and models), a request rate
   with daily and weekly cycles and gradual growth, log-normal tokens and latency
   per model, a baseline mix of error types, and a few incidents (error-rate and
   latency spikes of one provider or model).
2. They are summed per (minute, agent, model) cell and each cell is priced with
   ``PriceTable.price(provider, model, ts)`` (one rounding per cell, half-even, as
   ingest rounds once per event).  A day never crosses 00:00 UTC, the moment price
   entries take effect, so one lookup per model and day is exact and any price
   change inside the range applies from its date on.  The shipped table's real
   changes (gpt-4o, o3) are in the past, so a demo range simply shows today's
   prices; pass a table with a dated entry inside the range to see a change.
3. Each tier is written from the cells summed to its own step, and only for
   buckets inside its retention (``Aggregator.ops`` drops only whole expired
   chunks, and a 1m chunk is a day: minutes up to 72 h old would otherwise land in
   the 1m tier).  Batches go through ``write_batch`` and the ``metrics_apply``
   script like any ingest, but their records are built by :class:`CellAggregator`
   with array operations: ``Aggregator.ops`` loops over cells, dimensions and
   metrics in Python, which alone took longer than Redis.  The tests prove the two
   write the same records (the plain ``Aggregator`` filled through ``add_bulk``).
4. Batches split the per-agent dimensions by groups of agents and the shared ones
   by slices of time, so each key gets about one record per day, and three script
   calls are in flight while the next is encoded (with hiredis, for a URL).

On this machine 30 days of 100 agents (4.3M calls) take about 70 s, nearly all of
it Redis running the script: some 15M histogram fields, one HINCRBY each.

The history is additive: running it twice doubles it, and live usage recorded
meanwhile adds on top.  Backfilled agents are history only (nothing registers
them); their kind and queue are rollup labels, so ``group_by=kind`` works.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import hiredis
import numpy as np
import numpy.typing as npt
from redis.asyncio import Connection, Redis

from ..keys import Keys, MetricKeys
from ..store.scripts import Scripts
from ..timeutil import format_ms
from . import histogram
from .catalog import ALL, COUNTERS, SEP, STORED, STORED_KEYS, Labels, Stored, labels
from .pricing import NANOS_PER_USD, PriceTable, load_price_table
from .recorder import Batch, write_batch
from .rollup import DEFAULT_TIERS, Aggregator, Tier, parse_tiers

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000


# -- what the fleet looks like ---------------------------------------------------------


@dataclass(frozen=True)
class ModelProfile:
    """How one model behaves: who serves it, how fast, how much it thinks."""

    provider: str
    ttft_ms: float  # median time to first token
    tokens_per_s: float  # output speed
    output_factor: float  # output length relative to the kind's median
    reasoning_share: float  # mean share of output tokens that are reasoning
    cache_writes: bool  # reports cache_creation_tokens (Anthropic's explicit caching)


MODELS: dict[str, ModelProfile] = {
    "gpt-4o": ModelProfile("openai", 450.0, 95.0, 1.0, 0.0, False),
    "gpt-4o-mini": ModelProfile("openai", 300.0, 140.0, 0.9, 0.0, False),
    "gpt-4.1": ModelProfile("openai", 500.0, 90.0, 1.1, 0.0, False),
    "o3": ModelProfile("openai", 2500.0, 120.0, 3.0, 0.65, False),
    "claude-sonnet-4": ModelProfile("anthropic", 900.0, 75.0, 1.1, 0.12, True),
    "claude-haiku-4-5": ModelProfile("anthropic", 400.0, 170.0, 0.9, 0.0, True),
}
"""Every name is priced in the shipped ``prices.json``."""

MODEL_SUBSTITUTES = {"claude-haiku-4": "claude-haiku-4-5"}
"""The demo fleet names a model the price table does not have; history uses the
priced successor, or every summarizer's calls would show as unpriced."""

EXTRA_MODELS = {"researcher": ("o3",)}
"""A reasoning model for the researchers, so reasoning tokens have a real source."""


@dataclass(frozen=True)
class KindProfile:
    """The traffic of one agent kind (rates are per agent, at a weekday's peak)."""

    peak_calls_per_min: float
    calls_per_task: float
    input_median: float
    output_median: float
    cache_read_share: float  # typical share of the prompt read from the cache
    task_median_s: float


KIND_PROFILES: dict[str, KindProfile] = {
    "researcher": KindProfile(1.5, 5.0, 9_000.0, 650.0, 0.35, 45.0),
    "coder": KindProfile(1.9, 8.0, 16_000.0, 850.0, 0.55, 95.0),
    "summarizer": KindProfile(3.0, 1.5, 5_000.0, 300.0, 0.20, 4.0),
    "support": KindProfile(2.2, 2.5, 2_500.0, 220.0, 0.40, 6.0),
}
"""Over nights, weekends and a month of growth this averages about one call per
agent and minute."""

ERROR_TYPES = (
    "RateLimitError",
    "APITimeoutError",
    "InternalServerError",
    "OverloadedError",
    "ContextWindowExceededError",
)
_ERR = {name: i for i, name in enumerate(ERROR_TYPES)}
BASE_ERROR_RATES = {
    "openai": (0.006, 0.003, 0.0015, 0.0, 0.001),
    "anthropic": (0.005, 0.002, 0.001, 0.003, 0.001),
}
ERROR_LATENCY_MS = {
    "RateLimitError": (40.0, 400.0),
    "APITimeoutError": (60_000.0, 60_400.0),  # the client's timeout
    "InternalServerError": (300.0, 3_000.0),
    "OverloadedError": (150.0, 1_200.0),
    "ContextWindowExceededError": (60.0, 250.0),
}
"""Failed calls return early (or at the client's timeout) and bill no tokens."""

GROWTH_PER_DAY = 0.012
"""About 40 % more traffic at the end of a month than at its start."""
WEEKEND_FACTOR = 0.45
PEAK_HOUR_UTC = 14.5  # European afternoon, American morning


def daily_factor(hour_utc: FloatArray) -> FloatArray:
    """Request rate relative to the peak: quiet nights (about a quarter), busy afternoons."""
    return np.asarray(
        0.22 + 0.78 * np.exp(-0.5 * ((hour_utc - PEAK_HOUR_UTC) / 4.5) ** 2), dtype=np.float64
    )


@dataclass(frozen=True)
class IncidentTemplate:
    name: str
    error_type: str
    excess_rate: float  # added to the affected calls' error probability
    latency_factor: float
    minutes: tuple[int, int]  # duration range
    provider: str | None  # every model of a provider, or one model
    model: str | None


INCIDENTS = (
    IncidentTemplate("overloaded", "OverloadedError", 0.25, 2.5, (60, 180), "anthropic", None),
    IncidentTemplate("rate-limited", "RateLimitError", 0.35, 1.0, (30, 120), "openai", None),
    IncidentTemplate("slow-model", "APITimeoutError", 0.08, 4.0, (20, 90), None, "gpt-4.1"),
    IncidentTemplate("outage", "InternalServerError", 0.6, 1.2, (15, 40), "openai", None),
    IncidentTemplate(
        "slow-model", "APITimeoutError", 0.06, 3.0, (30, 120), None, "claude-sonnet-4"
    ),
)


@dataclass(frozen=True)
class Incident:
    name: str
    error_type: str
    excess_rate: float
    latency_factor: float
    start_ms: int
    end_ms: int
    models: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "error_type": self.error_type,
            "from": format_ms(self.start_ms),
            "to": format_ms(self.end_ms),
            "models": list(self.models),
        }


@dataclass(frozen=True)
class FleetAgent:
    id: str
    kind: str
    queue: str
    primary: str  # the model the agent mostly uses
    rate_scale: float  # busy and quiet agents of the same kind


def fleet(n: int, seed: int) -> list[FleetAgent]:
    """The demo fleet's ids, kinds and models (``agent.demo.fleet_configs``), so a
    backfill of N agents is the history of the demo fleet of N agents."""
    from ..agent.demo import fleet_configs

    rng = np.random.default_rng([seed, 17])
    out = []
    for agent_id, kind, cfg in fleet_configs(n, prefix="ez", heartbeat=5.0, visibility=60.0):
        named = cfg.model or kind.models[0]
        model = MODEL_SUBSTITUTES.get(named, named)
        out.append(
            FleetAgent(
                agent_id,
                kind.name,
                kind.queues[0],  # the demo producer puts a kind's tasks on its first queue
                model,
                float(rng.lognormal(0.0, 0.35)),
            )
        )
    return out


def kind_models(kind: str) -> tuple[str, ...]:
    from ..agent.demo import KINDS

    base = next(k.models for k in KINDS if k.name == kind)
    return tuple(MODEL_SUBSTITUTES.get(m, m) for m in base) + EXTRA_MODELS.get(kind, ())


# -- simulation ---------------------------------------------------------------------------


@dataclass
class Calls:
    """One chunk's simulated calls, one array entry per call (for a baseline or a test)."""

    ts_ms: IntArray
    agent: IntArray  # index into Simulation.agents
    model: IntArray  # index into Simulation.models
    input_tokens: IntArray
    output_tokens: IntArray
    cached_tokens: IntArray
    cache_creation_tokens: IntArray
    reasoning_tokens: IntArray
    latency_ms: FloatArray
    error: IntArray  # index into ERROR_TYPES, -1 for a successful call
    cost_pico: IntArray  # exact, 0 when unpriced
    priced: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return int(self.ts_ms.size)


@dataclass
class Chunk:
    """One UTC day (or the range's partial first and last day), simulated."""

    start_ms: int
    end_ms: int
    base_ms: int
    calls: Calls
    call_base: IntArray  # base bucket index (within the chunk) of every call
    tasks_ok: IntArray  # per (agent, base bucket) cell, index agent * buckets + bucket
    tasks_failed: IntArray  # per cell, the same index
    task_duration_cell: IntArray  # one entry per task: its cell
    task_duration_ms: FloatArray  # one entry per task


class Simulation:
    """Deterministic usage for a fleet over ``[start_ms, end_ms)``, a day at a time.

    A day's random numbers are seeded by (seed, day number), so the same day gets the
    same calls whatever range it is part of, and chunks can be made in any order."""

    def __init__(
        self,
        *,
        agents: int,
        start_ms: int,
        end_ms: int,
        prices: PriceTable,
        seed: int = 1,
        base_ms: int = MINUTE_MS,
    ) -> None:
        if agents < 1:
            raise ValueError("need at least one agent")
        if end_ms <= start_ms:
            raise ValueError("empty range")
        if DAY_MS % base_ms or start_ms % base_ms or end_ms % base_ms:
            raise ValueError("the range must be aligned to the base step, which divides a day")
        self.start_ms, self.end_ms, self.base_ms = start_ms, end_ms, base_ms
        self.seed = seed
        self.prices = prices
        self.agents = fleet(agents, seed)
        self.models = list(MODELS)
        self.kinds = list(KIND_PROFILES)
        m_index = {m: i for i, m in enumerate(self.models)}
        n_models = len(self.models)
        self.kind_of = np.array([self.kinds.index(a.kind) for a in self.agents], dtype=np.int64)
        self.primary = np.array([m_index[a.primary] for a in self.agents], dtype=np.int64)
        self.rate_scale = np.array([a.rate_scale for a in self.agents], dtype=np.float64)
        weights = np.zeros((agents, n_models))
        for i, a in enumerate(self.agents):
            mine = kind_models(a.kind)
            for m in mine:
                weights[i, m_index[m]] = 0.3 / max(1, len(mine) - 1) if len(mine) > 1 else 0.0
            weights[i, m_index[a.primary]] = 0.7 if len(mine) > 1 else 1.0
        self.model_cum = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
        self.model_cum[:, -1] = 1.0
        profiles = [MODELS[m] for m in self.models]
        self.ttft = np.array([p.ttft_ms for p in profiles])
        self.tps = np.array([p.tokens_per_s for p in profiles])
        self.out_factor = np.array([p.output_factor for p in profiles])
        self.reasoning = np.array([p.reasoning_share for p in profiles])
        self.cache_writes = np.array([p.cache_writes for p in profiles])
        self.base_errors = np.array([BASE_ERROR_RATES[p.provider] for p in profiles]).T
        kp = [KIND_PROFILES[k] for k in self.kinds]
        self.peak = np.array([k.peak_calls_per_min for k in kp])
        self.per_task = np.array([k.calls_per_task for k in kp])
        self.in_median = np.array([k.input_median for k in kp])
        self.out_median = np.array([k.output_median for k in kp])
        self.cache_share = np.array([k.cache_read_share for k in kp])
        self.task_median_ms = np.array([k.task_median_s * 1000.0 for k in kp])
        self.incidents = self._incidents()

    def _incidents(self) -> list[Incident]:
        """One incident per five days (at least one), cycling through the templates."""
        rng = np.random.default_rng([self.seed, 23])
        span = self.end_ms - self.start_ms
        n = 1 + span // (5 * DAY_MS)
        out = []
        for i in range(n):
            t = INCIDENTS[i % len(INCIDENTS)]
            minutes = int(rng.integers(t.minutes[0], t.minutes[1] + 1))
            length = min(span, minutes * MINUTE_MS)
            start = self.start_ms + int(rng.integers(0, span - length + 1))
            start = start // MINUTE_MS * MINUTE_MS
            models = tuple(
                m
                for m in self.models
                if (t.model is not None and m == t.model)
                or (t.provider is not None and MODELS[m].provider == t.provider)
            )
            out.append(
                Incident(
                    t.name,
                    t.error_type,
                    t.excess_rate,
                    t.latency_factor,
                    start,
                    start + length,
                    models,
                )
            )
        return out

    def chunks(self) -> Iterator[tuple[int, int]]:
        """``[start, end)`` of every chunk: UTC days, clipped to the range."""
        t = self.start_ms
        while t < self.end_ms:
            end = min(self.end_ms, (t // DAY_MS + 1) * DAY_MS)
            yield t, end
            t = end

    def chunk(self, start_ms: int, end_ms: int) -> Chunk:
        """The calls and task outcomes of ``[start_ms, end_ms)`` (within one UTC day)."""
        base = self.base_ms
        n_b = (end_ms - start_ms) // base
        n_a, n_m = len(self.agents), len(self.models)
        rng = np.random.default_rng([self.seed, start_ms // DAY_MS, start_ms % DAY_MS])
        t = start_ms + base * np.arange(n_b, dtype=np.int64)

        # incident effects per (model, bucket)
        excess = np.zeros((len(ERROR_TYPES), n_m, n_b))
        slow = np.ones((n_m, n_b))
        for inc in self.incidents:
            lo = max(0, (inc.start_ms - start_ms) // base)
            hi = min(n_b, -(-(inc.end_ms - start_ms) // base))
            if hi <= lo:
                continue
            for m in inc.models:
                mi = self.models.index(m)
                excess[_ERR[inc.error_type], mi, lo:hi] += inc.excess_rate
                slow[mi, lo:hi] *= inc.latency_factor

        # request rate per (agent, bucket): cycles, growth, noise, retries in incidents
        hour = (t % DAY_MS) / HOUR_MS
        weekday = (t // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday; 5, 6: weekend
        cycle = daily_factor(hour) * np.where(weekday >= 5, WEEKEND_FACTOR, 1.0)
        growth = np.exp(-GROWTH_PER_DAY * (self.end_ms - t) / DAY_MS)
        hour_index = (t - start_ms) // HOUR_MS
        noise = rng.gamma(8.0, 1.0 / 8.0, (n_a, int(hour_index[-1]) + 1))[:, hour_index]
        retries = 1.0 + excess.sum(axis=0)[self.primary]  # (agents, buckets)
        per_bucket = self.peak[self.kind_of] * self.rate_scale * (base / MINUTE_MS)
        rate = per_bucket[:, None] * (cycle * growth)[None, :] * noise * retries
        counts = rng.poisson(rate)

        # one entry per call
        cell = np.repeat(np.arange(n_a * n_b, dtype=np.int64), counts.ravel())
        agent, bucket = np.divmod(cell, n_b)
        n = cell.size
        ts = t[bucket] + rng.integers(0, base, n)
        model = (rng.random(n)[:, None] >= self.model_cum[agent]).sum(axis=1)
        model = np.minimum(model, n_m - 1).astype(np.int64)
        kind = self.kind_of[agent]

        inp = np.clip(np.ceil(rng.lognormal(np.log(self.in_median[kind]), 0.7)), 50, 190_000)
        out_med = self.out_median[kind] * self.out_factor[model]
        out = np.clip(np.ceil(rng.lognormal(np.log(out_med), 0.6)), 1, 32_000)
        reasoning = np.floor(out * self.reasoning[model] * rng.uniform(0.6, 1.0, n))
        hit = rng.random(n) < 0.8
        cached = np.where(
            hit,
            np.floor(inp * np.minimum(0.95, self.cache_share[kind] * rng.uniform(0.5, 1.5, n))),
            0,
        )
        writes = self.cache_writes[model] & (rng.random(n) < 0.25)
        creation = np.where(writes, np.floor((inp - cached) * rng.uniform(0.2, 0.8, n)), 0)

        latency = self.ttft[model] * rng.lognormal(0.0, 0.35, n) + out / self.tps[
            model
        ] * 1000.0 * rng.lognormal(0.0, 0.2, n)
        latency *= slow[model, bucket]

        # errors: baseline by provider plus incidents; failed calls bill nothing
        p_err = self.base_errors[:, model] + excess[:, model, bucket]  # (types, calls)
        cum = np.cumsum(p_err, axis=0)
        u = rng.random(n)
        error = (u[None, :] >= cum).sum(axis=0).astype(np.int64)
        error[error == len(ERROR_TYPES)] = -1
        failed = error >= 0
        for name, (lo_ms, hi_ms) in ERROR_LATENCY_MS.items():
            sel = error == _ERR[name]
            latency[sel] = rng.uniform(lo_ms, hi_ms, int(sel.sum()))
        ints = [np.where(failed, 0, a).astype(np.int64) for a in (inp, out, cached, creation)]
        inp_i, out_i, cached_i, creation_i = ints
        reasoning_i = np.where(failed, 0, reasoning).astype(np.int64)

        # exact cost per call in pico-dollars at the prices of this day
        rates = np.zeros((4, n_m), dtype=np.int64)
        priced_m = np.zeros(n_m, dtype=bool)
        for mi, name in enumerate(self.models):
            price = self.prices.price(MODELS[name].provider, name, start_ms)
            if price is not None:
                priced_m[mi] = True
                rates[:, mi] = (
                    price.input_pico,
                    price.cache_read_pico,
                    price.cache_write_pico,
                    price.output_pico,
                )
        uncached = inp_i - cached_i - creation_i
        pico = (
            uncached * rates[0, model]
            + cached_i * rates[1, model]
            + creation_i * rates[2, model]
            + out_i * rates[3, model]
        )

        # task outcomes per (agent, bucket): failures follow the agent's incidents
        tasks = rng.binomial(counts, 1.0 / self.per_task[self.kind_of][:, None])
        p_fail = np.minimum(0.9, 0.015 + 0.6 * excess.sum(axis=0)[self.primary])
        tasks_failed = rng.binomial(tasks, p_fail)
        flat_tasks = tasks.ravel()
        task_cell = np.repeat(np.arange(n_a * n_b, dtype=np.int64), flat_tasks)
        t_agent, t_bucket = np.divmod(task_cell, n_b)
        median = self.task_median_ms[self.kind_of[t_agent]] * slow[self.primary[t_agent], t_bucket]
        durations = rng.lognormal(np.log(median), 0.55)

        calls = Calls(
            ts_ms=ts.astype(np.int64),
            agent=agent,
            model=model,
            input_tokens=inp_i,
            output_tokens=out_i,
            cached_tokens=cached_i,
            cache_creation_tokens=creation_i,
            reasoning_tokens=reasoning_i,
            latency_ms=latency.astype(np.float64),
            error=error,
            cost_pico=pico.astype(np.int64),
            priced=priced_m[model],
        )
        return Chunk(
            start_ms,
            end_ms,
            base,
            calls,
            bucket,
            (tasks - tasks_failed).ravel().astype(np.int64),
            tasks_failed.ravel().astype(np.int64),
            task_cell,
            durations.astype(np.float64),
        )


# -- aggregation ----------------------------------------------------------------------------

_LOG_MIN = math.log(histogram.MIN_MS)
_INV_LOG_GAMMA = 1.0 / math.log(histogram.GAMMA)
_NB = histogram.MAX_BUCKET + 1
C_IDX = {name: i for i, name in enumerate(COUNTERS)}
METRICS = (*COUNTERS, *(f"err:{t}" for t in ERROR_TYPES))
"""Column names of ``Cells.values``: the counters, then one error count per type."""


def latency_buckets(values_ms: FloatArray) -> IntArray:
    """``histogram.bucket_of`` for an array."""
    safe = np.maximum(values_ms, histogram.MIN_MS)
    b = np.ceil((np.log(safe) - _LOG_MIN) * _INV_LOG_GAMMA)
    out: IntArray = np.where(
        values_ms <= histogram.MIN_MS, 0, np.minimum(b, histogram.MAX_BUCKET)
    ).astype(np.int64)
    return out


def round_half_even(numerator: IntArray, divisor: int) -> IntArray:
    """``pricing._round_half_even`` for an array of non-negative integers."""
    q, r = np.divmod(numerator, divisor)
    up = (2 * r > divisor) | ((2 * r == divisor) & (q % 2 == 1))
    out: IntArray = (q + up).astype(np.int64)
    return out


def _group(keys: IntArray) -> tuple[IntArray, IntArray, IntArray]:
    """Sort order, the start of every run of equal keys in that order, and the keys."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    if sk.size == 0:
        return order, np.zeros(0, dtype=np.int64), sk
    starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
    return order, starts, sk[starts]


def _runs(starts: IntArray, size: int) -> IntArray:
    """Length of every run, from the run starts and the total size."""
    out: IntArray = np.diff(np.r_[starts, size]).astype(np.int64)
    return out


@dataclass
class Cells:
    """Summed cells of one step, sorted by bucket: labels as indexes, ``values`` in
    ``METRICS`` order, and histogram entries (cell, bucket, count) sorted by cell.
    Task cells have ``model == -1`` (tasks are not per model, as in ``add_task``)."""

    bucket: IntArray  # absolute bucket number (ts // step)
    agent: IntArray
    model: IntArray
    values: IntArray  # (cells, len(METRICS))
    hist_cell: IntArray
    hist_bucket: IntArray
    hist_count: IntArray

    def __len__(self) -> int:
        return int(self.bucket.size)

    def take(self, index: IntArray) -> Cells:
        """The cells at ``index`` (ascending, so they stay sorted by bucket)."""
        new = np.full(len(self), -1, dtype=np.int64)
        new[index] = np.arange(index.size)
        h = new[self.hist_cell] >= 0
        return Cells(
            self.bucket[index],
            self.agent[index],
            self.model[index],
            self.values[index],
            new[self.hist_cell[h]],
            self.hist_bucket[h],
            self.hist_count[h],
        )

    def slice(self, lo: int, hi: int) -> Cells:
        """Cells ``[lo, hi)`` (contiguous: cells and entries are sorted)."""
        h0, h1 = np.searchsorted(self.hist_cell, (lo, hi))
        return Cells(
            self.bucket[lo:hi],
            self.agent[lo:hi],
            self.model[lo:hi],
            self.values[lo:hi],
            self.hist_cell[h0:h1] - lo,
            self.hist_bucket[h0:h1],
            self.hist_count[h0:h1],
        )


def _hist_entries(cell: IntArray, hb: IntArray, count: IntArray) -> tuple[IntArray, ...]:
    order, starts, keys = _group(cell * _NB + hb)
    sums = np.add.reduceat(count[order], starts) if starts.size else count[:0]
    c, b = np.divmod(keys, _NB)
    return c, b, sums.astype(np.int64)


def base_cells(ch: Chunk, n_agents: int, n_models: int) -> tuple[Cells, Cells]:
    """Calls summed per (base bucket, agent, model), each cell priced once; task
    outcomes summed per (base bucket, agent)."""
    c = ch.calls
    b0 = ch.start_ms // ch.base_ms
    n_b = (ch.end_ms - ch.start_ms) // ch.base_ms
    key = (ch.call_base * n_agents + c.agent) * n_models + c.model
    order, starts, keys = _group(key)
    values = np.zeros((starts.size, len(METRICS)), dtype=np.int64)
    if starts.size:

        def total(column: npt.NDArray[Any]) -> IntArray:
            return np.add.reduceat(column[order].astype(np.int64), starts)

        values[:, C_IDX["requests"]] = _runs(starts, key.size)
        values[:, C_IDX["errors"]] = total(c.error >= 0)
        values[:, C_IDX["input_tokens"]] = total(c.input_tokens)
        values[:, C_IDX["output_tokens"]] = total(c.output_tokens)
        values[:, C_IDX["cached_tokens"]] = total(c.cached_tokens)
        values[:, C_IDX["cache_creation_tokens"]] = total(c.cache_creation_tokens)
        values[:, C_IDX["reasoning_tokens"]] = total(c.reasoning_tokens)
        values[:, C_IDX["cost_nanos"]] = round_half_even(total(c.cost_pico), 1000)
        values[:, C_IDX["unpriced_requests"]] = total(~c.priced)
        for j in range(len(ERROR_TYPES)):
            values[:, len(COUNTERS) + j] = total(c.error == j)
    rest, model = np.divmod(keys, n_models)
    bucket, agent = np.divmod(rest, n_agents)
    inverse = np.empty(key.size, dtype=np.int64)
    inverse[order] = np.repeat(np.arange(starts.size), _runs(starts, key.size))
    hc, hb, hn = _hist_entries(
        inverse, latency_buckets(c.latency_ms), np.ones(key.size, dtype=np.int64)
    )
    calls = Cells(bucket + b0, agent, model, values, hc, hb, hn)

    # task cells: (agent, bucket) cells with any outcome, re-sorted by bucket
    live = np.flatnonzero(ch.tasks_ok + ch.tasks_failed)
    t_agent, t_bucket = np.divmod(live, n_b)
    by_bucket = np.argsort(t_bucket * n_agents + t_agent, kind="stable")
    live, t_agent, t_bucket = live[by_bucket], t_agent[by_bucket], t_bucket[by_bucket]
    t_values = np.zeros((live.size, len(METRICS)), dtype=np.int64)
    t_values[:, C_IDX["tasks_completed"]] = ch.tasks_ok[live]
    t_values[:, C_IDX["tasks_failed"]] = ch.tasks_failed[live]
    index = np.full(n_agents * n_b, -1, dtype=np.int64)
    index[live] = np.arange(live.size)
    dc, db, dn = _hist_entries(
        index[ch.task_duration_cell],
        latency_buckets(ch.task_duration_ms),
        np.ones(ch.task_duration_ms.size, dtype=np.int64),
    )
    tasks = Cells(
        t_bucket + b0, t_agent, np.full(live.size, -1, dtype=np.int64), t_values, dc, db, dn
    )
    return calls, tasks


def roll_up(cells: Cells, factor: int) -> Cells:
    """The same cells summed to a step ``factor`` times coarser (exact integer sums,
    so every tier adds up to the same totals)."""
    if factor == 1 or not len(cells):
        return cells
    bucket = cells.bucket // factor
    b_min = int(bucket.min())
    n_agents = int(cells.agent.max()) + 1
    n_models = int(cells.model.max()) + 2  # model -1 (task cells) becomes 0
    key = ((bucket - b_min) * n_agents + cells.agent) * n_models + (cells.model + 1)
    order, starts, keys = _group(key)
    values = np.add.reduceat(cells.values[order], starts, axis=0)
    rest, model = np.divmod(keys, n_models)
    b, agent = np.divmod(rest, n_agents)
    inverse = np.empty(key.size, dtype=np.int64)
    inverse[order] = np.repeat(np.arange(starts.size), _runs(starts, key.size))
    hc, hb, hn = _hist_entries(inverse[cells.hist_cell], cells.hist_bucket, cells.hist_count)
    return Cells(b + b_min, agent, model - 1, values, hc, hb, hn)


def keep_retained(cells: Cells, tier: Tier, now_ms: int) -> Cells:
    """Only buckets that still overlap the tier's retention window.  Needed because
    ``Aggregator.ops`` drops only whole expired chunks: a 1m chunk is a day, so it
    would keep minutes up to 72 h old in a tier that promises 48 h."""
    keep = (cells.bucket + 1) * tier.step_ms > now_ms - tier.retention_ms
    if keep.all():
        return cells
    first = int(np.argmax(keep)) if keep.any() else len(cells)
    if keep[first:].all():  # sorted by bucket: the old ones are a prefix
        return cells.slice(first, len(cells))
    raise AssertionError("cells are not sorted by bucket")


@dataclass(frozen=True)
class LabelTable:
    """Index -> label names, shared by every cell of a backfill.  A cell holds an
    agent and a model index; every other dimension is a function of one of them."""

    agents: tuple[str, ...]
    kinds: tuple[str, ...]  # per agent
    queues: tuple[str, ...]  # per agent
    models: tuple[str, ...]
    providers: tuple[str, ...]  # per model

    @classmethod
    def of(cls, sim: Simulation) -> LabelTable:
        return cls(
            tuple(a.id for a in sim.agents),
            tuple(a.kind for a in sim.agents),
            tuple(a.queue for a in sim.agents),
            tuple(sim.models),
            tuple(MODELS[m].provider for m in sim.models),
        )

    def labels(self, agent: int, model: int) -> Labels:
        return labels(
            agent=self.agents[agent],
            model=self.models[model] if model >= 0 else "",
            provider=self.providers[model] if model >= 0 else "",
            kind=self.kinds[agent],
            queue=self.queues[agent],
        )

    def values(self, dim: str) -> tuple[tuple[str, ...], IntArray, str]:
        """A dimension's value names, each agent's or model's index into them, and
        which of the two (``agent`` or ``model``) it is a function of."""
        per_agent = {"agent": self.agents, "kind": self.kinds, "queue": self.queues}
        per_model = {"model": self.models, "provider": self.providers}
        of, owner = (per_agent[dim], "agent") if dim in per_agent else (per_model[dim], "model")
        names = tuple(sorted(set(of)))
        index = {name: i for i, name in enumerate(names)}
        return names, np.array([index[v] for v in of], dtype=np.int64), owner

    def dims(
        self, cells: Cells, tasks: bool
    ) -> Iterator[tuple[str, IntArray, Callable[[int], str]]]:
        """Per stored dimension: each cell's group as an integer, and its name.  The
        same dimensions ``catalog.groups`` yields for these labels (task outcomes
        carry no model, so no calls-only dimension)."""
        for stored in STORED:
            if not (tasks and stored.calls_only):
                yield stored.key, *self._gid(stored, cells)

    def _gid(self, stored: Stored, cells: Cells) -> tuple[IntArray, Callable[[int], str]]:
        """Mixed-radix group ids over the stored dimension's parts."""
        if not stored.parts:
            return np.zeros_like(cells.agent), lambda g: ALL
        gid = np.zeros_like(cells.agent)
        tables = []
        for part in stored.parts:
            names, index, owner = self.values(part)
            gid = gid * len(names) + index[cells.agent if owner == "agent" else cells.model]
            tables.append(names)

        def name(g: int) -> str:
            out = []
            for names in reversed(tables):
                g, i = divmod(g, len(names))
                out.append(names[i])
            return SEP.join(reversed(out))

        return gid, name

    def cardinality(self, stored: Stored) -> int:
        """At most how many groups the stored dimension has (for batch sizing)."""
        return math.prod(len(self.values(p)[0]) for p in stored.parts)


def _interleave(left: npt.NDArray[Any], right: npt.NDArray[Any]) -> list[Any]:
    """``[l0, r0, l1, r1, ...]`` as Python ints: the (offset, value) and (field,
    count) pairs of a record, built in one numpy pass instead of per element."""
    return np.column_stack((left, right)).ravel().tolist()


class CellAggregator(Aggregator):
    """An ``Aggregator`` whose cells are numpy arrays, for ``write_batch``.

    ``ops`` returns the records ``Aggregator.ops`` would for the same cells (the
    test suite checks it against an ``Aggregator`` filled through ``add_bulk``),
    built with array operations: the dictionary loops of ``Aggregator.ops`` cost
    about a microsecond per cell, dimension and metric, which made a month of a
    hundred agents take minutes; here the Python work is per written key."""

    def __init__(
        self,
        tier: Tier,
        names: LabelTable,
        parts: list[tuple[Cells, bool]],
        *,
        dims: tuple[str, ...] = STORED_KEYS,
        newest: int,
        events: int,
    ) -> None:
        super().__init__((tier,))
        self.names = names
        self.parts = parts
        self.dims = dims
        self.newest = newest
        self.count = events

    def ops(self, keys: MetricKeys, now_ms: int) -> list[str | int]:
        tier = self.tiers[0]
        b_out: list[str | int] = []
        h_out: list[str | int] = []
        members: dict[str, set[str]] = {}
        ttls: dict[str, int] = {}
        ttl_cache: dict[int, int] = {}

        def ttl_of(chunk: int) -> int:
            if chunk not in ttl_cache:
                ttl_cache[chunk] = tier.ttl_s(chunk, now_ms)
            return ttl_cache[chunk]

        def member(key: str, name: str, ttl: int) -> None:
            members.setdefault(key, set()).add(name)
            ttls[key] = ttl

        for cells, tasks in self.parts:
            if not len(cells):
                continue
            chunk, offset = np.divmod(cells.bucket, tier.chunk)
            expired = (chunk + 1) * tier.chunk_ms + tier.retention_ms < now_ms
            if expired.any():  # as Aggregator.ops: skip chunks past retention
                keep = np.flatnonzero(~expired)
                cells = cells.slice(int(keep[0]), len(cells)) if keep.size else cells.slice(0, 0)
                if not len(cells):
                    continue
                chunk, offset = np.divmod(cells.bucket, tier.chunk)
            c_min = int(chunk.min())
            span = int(chunk.max()) - c_min + 1
            c_rel = chunk - c_min
            for j, etype in enumerate(ERROR_TYPES):
                column = cells.values[:, len(COUNTERS) + j]
                for c in np.unique(chunk[column > 0]).tolist():
                    member(keys.error_types(tier.name, c), etype, ttl_of(c))
            hist_name = "duration" if tasks else "latency"
            for dim, gid, name in self.names.dims(cells, tasks):
                if dim not in self.dims:
                    continue
                series_of_cell = gid * span + c_rel
                # counters: one BITFIELD record per (group, metric, chunk)
                order, starts, uk = _group(series_of_cell * tier.chunk + offset)
                sums = np.add.reduceat(cells.values[order], starts, axis=0)
                series, offs = np.divmod(uk, tier.chunk)
                for s in np.unique(series).tolist():
                    g, c = divmod(s, span)
                    member(keys.groups(tier.name, dim, c + c_min), name(g), ttl_of(c + c_min))
                for j in np.flatnonzero(sums.any(axis=0)).tolist():
                    nz = np.flatnonzero(sums[:, j])
                    ser = series[nz]
                    pairs = _interleave(offs[nz], sums[nz, j])
                    bounds = np.flatnonzero(np.r_[True, ser[1:] != ser[:-1]]).tolist()
                    for lo, hi in zip(bounds, [*bounds[1:], nz.size], strict=True):
                        g, c = divmod(int(ser[lo]), span)
                        k = keys.counter(tier.name, dim, name(g), METRICS[j], c + c_min)
                        ttl = ttl_of(c + c_min)
                        for p in range(lo, hi, 500):  # as ops: BITFIELD in parts of 500
                            q = min(hi, p + 500)
                            b_out += ["B", k, ttl, q - p]
                            b_out += pairs[2 * p : 2 * q]
                # histograms: one hash per (group, chunk), fields "<offset>:<bucket>"
                if cells.hist_cell.size:
                    hc = cells.hist_cell
                    hkey = (series_of_cell[hc] * tier.chunk + offset[hc]) * _NB + cells.hist_bucket
                    h_order, h_starts, h_uk = _group(hkey)
                    counts = np.add.reduceat(cells.hist_count[h_order], h_starts)
                    rest, hb = np.divmod(h_uk, _NB)
                    h_series, h_off = np.divmod(rest, tier.chunk)
                    fields = [f"{o}:{b}" for o, b in zip(h_off.tolist(), hb.tolist(), strict=True)]
                    flat = [x for fv in zip(fields, counts.tolist(), strict=True) for x in fv]
                    bounds = np.flatnonzero(np.r_[True, h_series[1:] != h_series[:-1]]).tolist()
                    for lo, hi in zip(bounds, [*bounds[1:], h_series.size], strict=True):
                        g, c = divmod(int(h_series[lo]), span)
                        k = keys.histogram(tier.name, dim, name(g), hist_name, c + c_min)
                        h_out += ["H", k, ttl_of(c + c_min), hi - lo]
                        h_out += flat[2 * lo : 2 * hi]
        out = b_out + h_out
        for k, names in members.items():
            out += ["S", k, ttls[k], len(names), *sorted(names)]
        return out


def reference_aggregator(
    tier: Tier, names: LabelTable, parts: list[tuple[Cells, bool]]
) -> Aggregator:
    """The same cells in a plain ``Aggregator`` through ``add_bulk``: the slow path,
    kept so tests can prove ``CellAggregator.ops`` writes exactly what it would."""
    agg = Aggregator((tier,))
    for cells, tasks in parts:
        counters = cells.values[:, : len(COUNTERS)].tolist()
        errors = cells.values[:, len(COUNTERS) :].tolist()
        h_starts = np.searchsorted(cells.hist_cell, np.arange(len(cells) + 1)).tolist()
        hb, hn = cells.hist_bucket.tolist(), cells.hist_count.tolist()
        for i, (b, a, m) in enumerate(
            zip(cells.bucket.tolist(), cells.agent.tolist(), cells.model.tolist(), strict=True)
        ):
            lo, hi = h_starts[i], h_starts[i + 1]
            hist = dict(zip(hb[lo:hi], hn[lo:hi], strict=True))
            agg.add_bulk(
                b * tier.step_ms,
                names.labels(a, m),
                counters[i],
                errors={ERROR_TYPES[j]: v for j, v in enumerate(errors[i]) if v},
                latency=None if tasks else hist,
                duration=hist if tasks else None,
            )
    return agg


TARGET_ARGS = 40_000
"""Script arguments per ``write_batch`` call.  Measured here (30 days of 100 agents):
40-60k arguments per call took 68 s, 150k took 100 s (Redis digests many mid-sized
scripts better than a few huge ones), and a batch holds the event loop for well
under 0.1 s to encode, so a server backfilling its own store keeps answering."""

AGENT_DIMS = tuple(s.key for s in STORED if "agent" in s.parts)
SHARED_DIMS = tuple(s.key for s in STORED if s.key not in AGENT_DIMS)
"""Batches split the dimensions: the per-agent ones by groups of agents over the
whole chunk, so each of their keys gets one record per chunk (a BITFIELD and an
EXPIRE cost Redis as much as a few dozen increments); the few shared groups by
slices of time, since every agent adds to them."""


def _cut(costs: list[float], target: float) -> list[tuple[int, int]]:
    """Consecutive ``[lo, hi)`` runs whose costs add up to about ``target``."""
    runs, lo, acc = [], 0, 0.0
    for i, c in enumerate(costs):
        if acc and acc + c > target:
            runs.append((lo, i))
            lo, acc = i, 0.0
        acc += c
    if lo < len(costs):
        runs.append((lo, len(costs)))
    return runs


def batches(
    tier: Tier,
    names: LabelTable,
    calls: Cells,
    tasks: Cells,
    *,
    newest: int,
    target_args: int = TARGET_ARGS,
) -> list[CellAggregator]:
    """One tier's cells of a chunk as batches of about ``target_args`` arguments
    (estimated from the cells; the estimate only sizes batches)."""
    parts = [(calls, False), (tasks, True)]
    out: list[CellAggregator] = []
    n_agents = len(names.agents)

    # shared dimensions: slices of whole buckets
    n_shared = sum(names.cardinality(s) for s in STORED if s.key in SHARED_DIMS)
    buckets = np.unique(np.concatenate([c.bucket for c, _ in parts]))
    if not buckets.size:
        return out
    hist_per_bucket = np.zeros(buckets.size)
    for cells, _ in parts:
        where = np.searchsorted(buckets, cells.bucket[cells.hist_cell])
        hist_per_bucket += np.bincount(where, minlength=buckets.size)
    shared = 2 * (14 * n_shared + np.minimum(hist_per_bucket, 120 * len(SHARED_DIMS)))
    for lo, hi in _cut(shared.tolist(), target_args):
        b0, b1 = int(buckets[lo]), int(buckets[hi - 1]) + 1
        sliced = []
        for cells, tasks_ in parts:
            i0, i1 = np.searchsorted(cells.bucket, (b0, b1))
            sliced.append((cells.slice(int(i0), int(i1)), tasks_))
        out.append(
            CellAggregator(
                tier,
                names,
                sliced,
                dims=SHARED_DIMS,
                newest=min(newest, b1 * tier.step_ms - 1),
                events=0,
            )
        )

    # per-agent dimensions: groups of agents, all buckets of the chunk
    per_agent = np.zeros(n_agents)
    per_agent_dims = {
        t: sum(1 for s in STORED if s.key in AGENT_DIMS and not (t and s.calls_only))
        for t in (False, True)
    }
    for cells, tasks_ in parts:
        entries = np.count_nonzero(cells.values, axis=1)
        entries += np.bincount(cells.hist_cell, minlength=len(cells))
        per_agent += np.bincount(
            cells.agent, weights=2 * per_agent_dims[tasks_] * entries, minlength=n_agents
        )
    for lo, hi in _cut(per_agent.tolist(), target_args):
        chosen = []
        events = 0
        for cells, tasks_ in parts:
            part = cells.take(np.flatnonzero((cells.agent >= lo) & (cells.agent < hi)))
            chosen.append((part, tasks_))
            v = part.values
            events += int(
                v[:, C_IDX["requests"]].sum()
                + v[:, C_IDX["tasks_completed"]].sum()
                + v[:, C_IDX["tasks_failed"]].sum()
            )
        if events:
            out.append(
                CellAggregator(tier, names, chosen, dims=AGENT_DIMS, newest=newest, events=events)
            )
    return out


# -- progress ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """Where a backfill is.  ``fraction`` is of the estimated work, not of the days:
    the last two days also fill the 1m tier and cost several times an older day."""

    fraction: float
    done_ms: int  # simulated time written
    total_ms: int
    calls: int  # simulated calls written
    elapsed_s: float

    @property
    def days_done(self) -> float:
        return self.done_ms / DAY_MS

    @property
    def days_total(self) -> float:
        return self.total_ms / DAY_MS

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        f = self.fraction
        return self.elapsed_s * (1 - f) / f if f > 0 else None


def chunk_work(tiers: tuple[Tier, ...], start_ms: int, end_ms: int, now_ms: int) -> float:
    """Relative cost of writing a chunk: per tier, its retained buckets times the square
    root of the step (measured here: a day costs about 15 : 2.2 : 0.6 s in the 1m, 1h
    and 1d tiers for 100 agents; coarser buckets hold more distinct histogram fields)."""
    work = 0.0
    for t in tiers:
        first = max(start_ms // t.step_ms, (now_ms - t.retention_ms) // t.step_ms)
        buckets = max(0, (end_ms - 1) // t.step_ms - first + 1)
        work += buckets * math.sqrt(t.step_ms / MINUTE_MS)
    return work


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = round(seconds)
    return f"{s // 60}:{s % 60:02d}"


class ProgressBar:
    """A dependency-free progress bar: redrawn in place with ``\\r`` on a terminal,
    one line per 10 % otherwise (logs and CI output should not fill with redraws)."""

    def __init__(self, stream: IO[str] | None = None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_draw = 0.0
        self._last_decile = -1

    def line(self, p: Progress) -> str:
        filled = round(self.width * p.fraction)
        bar = "#" * filled + "." * (self.width - filled)
        return (
            f"backfill [{bar}] {100 * p.fraction:5.1f} %  "
            f"{p.days_done:5.1f}/{p.days_total:g} days  {p.calls:,} calls  "
            f"{p.calls_per_s:,.0f} events/s  ETA {_clock(p.eta_s)}"
        )

    def __call__(self, p: Progress) -> None:
        done = p.fraction >= 1.0
        if self.tty:
            now = time.monotonic()
            if done or now - self._last_draw >= 0.1:
                self._last_draw = now
                self.stream.write("\r" + self.line(p) + ("\n" if done else ""))
                self.stream.flush()
            return
        decile = math.floor(p.fraction * 10 + 1e-9)
        if decile > self._last_decile:
            self._last_decile = decile
            self.stream.write(self.line(p) + "\n")
            self.stream.flush()


class CPackedConnection(Connection):
    """Packs commands with hiredis (C) rather than redis-py's pure-Python packer.

    A month of a hundred agents is tens of millions of script arguments; packing
    them in Python took as long as Redis took to run them, on the event loop."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " in args[0]:
            args = (*args[0].split(), *args[1:])
        return [hiredis.pack_command(args)]


def connect(url: str) -> Redis:
    """A client for ``url`` packing with hiredis (plain ``redis://`` URLs; redis-py
    picks its own connection class for TLS and Unix sockets)."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "redis":
        return Redis.from_url(url, decode_responses=True, connection_class=CPackedConnection)
    return Redis.from_url(url, decode_responses=True)


# -- the entry point ------------------------------------------------------------------------


@dataclass
class _Totals:
    calls: int = 0
    errors: int = 0
    tasks_completed: int = 0
    tasks_failed: int = 0
    cost_nanos: int = 0
    unpriced: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    batches: int = 0
    by_error: dict[str, int] = field(default_factory=dict)

    def add(self, calls: Cells, tasks: Cells) -> None:
        c = calls.values.sum(axis=0).tolist()
        t = tasks.values.sum(axis=0).tolist()
        self.calls += c[C_IDX["requests"]]
        self.errors += c[C_IDX["errors"]]
        self.cost_nanos += c[C_IDX["cost_nanos"]]
        self.unpriced += c[C_IDX["unpriced_requests"]]
        self.input_tokens += c[C_IDX["input_tokens"]]
        self.output_tokens += c[C_IDX["output_tokens"]]
        self.tasks_completed += t[C_IDX["tasks_completed"]]
        self.tasks_failed += t[C_IDX["tasks_failed"]]
        for j, etype in enumerate(ERROR_TYPES):
            if v := c[len(COUNTERS) + j]:
                self.by_error[etype] = self.by_error.get(etype, 0) + v


@dataclass
class _Prepared:
    chunk: Chunk
    calls: Cells
    tasks: Cells
    batches: list[CellAggregator]


def prepare_chunk(
    sim: Simulation, names: LabelTable, tiers: tuple[Tier, ...], start: int, end: int, now_ms: int
) -> _Prepared:
    """Simulate one chunk, sum it per tier and cut it into batches: all the numpy
    work of a day, run in a worker thread while the previous day is written."""
    ch = sim.chunk(start, end)
    calls, tasks = base_cells(ch, len(sim.agents), len(sim.models))
    out: list[CellAggregator] = []
    for tier in tiers:
        factor = tier.step_ms // sim.base_ms
        tc = keep_retained(roll_up(calls, factor), tier, now_ms)
        tt = keep_retained(roll_up(tasks, factor), tier, now_ms)
        out += batches(tier, names, tc, tt, newest=min(end, now_ms) - 1)
    return _Prepared(ch, calls, tasks, out)


async def backfill(
    redis: Redis | str,
    *,
    days: float,
    agents: int,
    prefix: str = "ez",
    tiers: str | tuple[Tier, ...] = DEFAULT_TIERS,
    prices: PriceTable | None = None,
    seed: int = 1,
    progress: bool | Callable[[Progress], None] = False,
    now_ms: int | None = None,
    on_calls: Callable[[Calls, Simulation], None] | None = None,
    in_flight: int = 3,
) -> dict[str, Any]:
    """Write ``days`` of simulated usage of ``agents`` agents, ending now, into the
    rollups of the deployment ``prefix`` (a URL or a client); returns a summary.

    ``tiers`` and ``prices`` should be the server's (``EZ_ROLLUP_TIERS``,
    ``EZ_PRICES_FILE``).  ``progress`` True draws a bar on stderr; a callable gets
    :class:`Progress` after every batch.  ``on_calls`` sees every day's simulated
    calls, so a baseline can rebuild the same answers from raw events.

    Simulation runs in a worker thread a day ahead of the writes and ``in_flight``
    script calls overlap, so Redis works while Python encodes the next batch; the
    event loop is held for one batch's encoding at a time, never for a day's work."""
    started = time.perf_counter()
    client = connect(redis) if isinstance(redis, str) else redis
    pending: set[asyncio.Future[bool]] = set()
    upcoming: asyncio.Future[_Prepared] | None = None

    async def settle(limit: int) -> None:
        while len(pending) > limit:
            finished, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for f in finished:
                pending.discard(f)
                f.result()  # a failed write fails the backfill

    try:
        keys = Keys(prefix)
        scripts = Scripts(client)
        tier_t = parse_tiers(tiers) if isinstance(tiers, str) else tiers
        table = prices or load_price_table()
        if now_ms is None:
            sec, usec = await client.time()
            now_ms = int(sec) * 1000 + int(usec) // 1000
        now: int = now_ms
        base = math.gcd(MINUTE_MS, tier_t[0].step_ms)
        end = now // base * base
        start = end - round(days * DAY_MS) // base * base
        sim = Simulation(
            agents=agents, start_ms=start, end_ms=end, prices=table, seed=seed, base_ms=base
        )
        names = LabelTable.of(sim)
        report = ProgressBar() if progress is True else (progress or None)
        chunks = list(sim.chunks())
        work = [chunk_work(tier_t, s, e, now) for s, e in chunks]
        total_work = sum(work) or 1.0
        totals = _Totals()
        done_ms = written = 0
        done_work = 0.0

        def prepare(i: int) -> asyncio.Future[_Prepared]:
            s, e = chunks[i]
            return asyncio.ensure_future(
                asyncio.to_thread(prepare_chunk, sim, names, tier_t, s, e, now)
            )

        upcoming = prepare(0)
        for i in range(len(chunks)):
            assert upcoming is not None
            p = await upcoming
            upcoming = prepare(i + 1) if i + 1 < len(chunks) else None
            if on_calls is not None:
                on_calls(p.chunk.calls, sim)
            totals.add(p.calls, p.tasks)
            span = p.chunk.end_ms - p.chunk.start_ms
            for j, agg in enumerate(p.batches):
                await settle(in_flight - 1)
                batch = Batch(agg.tiers, table)
                batch.agg = agg  # no raw events: history goes to the rollups only
                pending.add(
                    asyncio.ensure_future(write_batch(client, scripts, keys, batch, now_ms=now))
                )
                totals.batches += 1
                if report is not None:
                    frac = (j + 1) / len(p.batches)
                    report(
                        Progress(
                            min(
                                0.999, (done_work + work[i] * frac) / total_work
                            ),  # 1: acknowledged
                            done_ms + round(span * frac),
                            end - start,
                            written + round(len(p.chunk.calls) * frac),
                            time.perf_counter() - started,
                        )
                    )
            done_ms += span
            done_work += work[i]
            written += len(p.chunk.calls)
        await settle(0)
        elapsed = time.perf_counter() - started
        if report is not None:
            report(Progress(1.0, end - start, end - start, written, elapsed))
    finally:
        # after an error or a cancellation: stop what still runs, then let it finish
        leftovers: list[asyncio.Future[Any]] = [*pending, *([upcoming] if upcoming else [])]
        for f in leftovers:
            f.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        if isinstance(redis, str):
            await client.aclose()
    return {
        "agents": agents,
        "days": days,
        "from": format_ms(start),
        "to": format_ms(end),
        "calls": totals.calls,
        "errors": totals.errors,
        "errors_by_type": totals.by_error,
        "tasks_completed": totals.tasks_completed,
        "tasks_failed": totals.tasks_failed,
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "cost_nanos": totals.cost_nanos,
        "cost_usd": totals.cost_nanos / NANOS_PER_USD,
        "unpriced_calls": totals.unpriced,
        "price_table": table.version,
        "incidents": [inc.as_dict() for inc in sim.incidents],
        "batches": totals.batches,
        "seconds": round(elapsed, 3),
        "calls_per_s": round(totals.calls / elapsed) if elapsed > 0 else None,
    }
