"""What the backfilled fleet looks like: the models and agent kinds it simulates,
the error mix and incident templates, the daily and weekly cycle, and the agents
themselves, taken from the demo fleet (``agent.demo``) so a backfill of N agents is
the history of the demo fleet of N agents.

Kept apart from :mod:`.simulation` because these are the knobs one tunes to change
what the history shows, while the simulation is how calls are drawn from them.  The
time units and array types every module of the package shares live here too: this
module depends on nothing else in the package."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..agent.demo import KINDS, fleet_configs
from ..timeutil import format_ms

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000


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


def fleet(n: int, seed: int, http: int = 0) -> list[FleetAgent]:
    """The demo fleet's ids, kinds and models (``agent.demo.fleet_configs``), so a
    backfill of N agents is the history of the demo fleet of N agents, the last
    ``http`` of them under their gateway ids as ``ezdash serve`` runs them."""
    rng = np.random.default_rng([seed, 17])
    out = []
    configs = fleet_configs(n, prefix="ez", heartbeat=5.0, visibility=60.0, http=http)
    for agent_id, kind, cfg in configs:
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
    base = next(k.models for k in KINDS if k.name == kind)
    return tuple(MODEL_SUBSTITUTES.get(m, m) for m in base) + EXTRA_MODELS.get(kind, ())
