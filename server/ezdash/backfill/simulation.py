"""The simulated calls: :class:`Simulation` draws one UTC day of the fleet's LLM
calls and task outcomes at a time with numpy (rates with cycles, growth and noise,
log-normal tokens and latency per model, baseline errors and incidents, the exact
cost of every call at that day's prices).

Its own module because it is the one place randomness lives: everything downstream
(:mod:`.cells`, :mod:`.writer`) is a deterministic function of a :class:`Chunk`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..metrics.pricing import PriceTable
from .fleet import (
    BASE_ERROR_RATES,
    DAY_MS,
    ERROR_LATENCY_MS,
    ERROR_TYPES,
    GROWTH_PER_DAY,
    HOUR_MS,
    INCIDENTS,
    KIND_PROFILES,
    MINUTE_MS,
    MODELS,
    WEEKEND_FACTOR,
    FloatArray,
    Incident,
    IntArray,
    daily_factor,
    fleet,
    kind_models,
)

_ERR = {name: i for i, name in enumerate(ERROR_TYPES)}


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
        http_agents: int = 0,
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
        self.agents = fleet(agents, seed, http_agents)
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
