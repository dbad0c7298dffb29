"""The metric catalog: every dimension, stored combination, counter and metric, once.

Rollups (what a batch writes), queries (which stored dimension answers a grouping
and filters), the backfill's vectorised writer, the API's filter parameters and
their OpenAPI enums, the analytics loader and the analyst page's widgets all derive
from these tables, so a new dimension is one line here.  What derives from them:

- ``DIMENSIONS`` are the labels a usage event or a task outcome carries; each is
  stored on its own, so it can be grouped by and filtered on;
- ``COMBINED`` are the pairs also stored together (the value ``"a|b"``), which is
  what lets one dimension be grouped while another is filtered (one agent's spend by
  model) or two be filtered at once; any other pairing is refused, naming the
  parameter, because answering it would mean reading every event;
- ``COUNTERS`` and ``HISTOGRAMS`` are what each stored cell keeps; ``METRICS`` are
  the series the analytics read from them, each with its unit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

ALL = "*"
"""The one group of the ``all`` stored dimension."""
SEP = "|"
"""Joins the values of a combined dimension, so it may not occur in a label."""


@dataclass(frozen=True)
class Dimension:
    """A label of usage events and task outcomes.

    ``calls_only``: task outcomes do not carry it (a task is not of one model), so its
    stored dimensions hold calls only.  ``values`` says what its values look like, so
    the HTTP layer validates a filter on it: an agent id, a queue name, or any label
    of up to 200 characters without ``|``."""

    name: str
    doc: str
    values: Literal["agent_id", "queue", "label"] = "label"
    calls_only: bool = False


DIMENSIONS: tuple[Dimension, ...] = (
    Dimension("agent", "the agent that made the call or ran the task", values="agent_id"),
    Dimension("model", "the model called", calls_only=True),
    Dimension("provider", "the provider of the model (openai, anthropic, ...)", calls_only=True),
    Dimension("kind", "the kind of the agent"),
    Dimension("queue", "the queue of the task a call or outcome belongs to", values="queue"),
)
NAMES: tuple[str, ...] = tuple(d.name for d in DIMENSIONS)
BY_NAME = {d.name: d for d in DIMENSIONS}
POSITION = {name: i for i, name in enumerate(NAMES)}

Labels = tuple[str, ...]
"""One value per dimension, in ``NAMES`` order; ``''`` where unknown."""


def labels(**values: str) -> Labels:
    """The label tuple of a call or outcome; unnamed dimensions are unknown."""
    out = tuple(values.get(name, "") for name in NAMES)
    if len(values) > len(NAMES) or not set(values) <= POSITION.keys():
        raise ValueError(f"not a dimension: {', '.join(sorted(set(values) - set(NAMES)))}")
    return out


@dataclass(frozen=True)
class Stored:
    """A dimension as written to the rollups: its key segment and its parts."""

    key: str
    parts: tuple[str, ...]

    @property
    def calls_only(self) -> bool:
        return any(BY_NAME[p].calls_only for p in self.parts)

    def group(self, values: Labels) -> str | None:
        """The group of a label tuple, or None when a part is unknown."""
        if not self.parts:
            return ALL
        got = [values[POSITION[p]] for p in self.parts]
        return SEP.join(got) if all(got) else None


COMBINED: tuple[Stored, ...] = (
    Stored("am", ("agent", "model")),
    Stored("ka", ("kind", "agent")),
)
"""Pairs kept together: one agent's spend by model, one model's by agent, one kind's
by agent (and one agent's by kind), and those filters together."""
STORED: tuple[Stored, ...] = (
    Stored("all", ()),
    *(Stored(name, (name,)) for name in NAMES),
    *COMBINED,
)
STORED_KEYS: tuple[str, ...] = tuple(s.key for s in STORED)


def groups(values: Labels) -> Iterator[tuple[str, str]]:
    """(stored dimension, group) pairs a call or outcome with these labels adds to."""
    for s in STORED:
        g = s.group(values)
        if g is not None:
            yield s.key, g


@dataclass(frozen=True)
class Slice:
    """Which stored dimension answers a grouping with filters.

    ``groups`` is the one stored group to read, or None for every group seen;
    ``label_part`` (for a combined dimension) which part of ``a|b`` labels a
    series, and ``prefix`` the value the other part must have."""

    dim: str
    groups: tuple[str, ...] | None
    label: str | None
    label_part: int | None = None
    prefix: str | None = None


class QueryError(ValueError):
    """A grouping and filters the rollups do not keep; ``field`` names the parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _stored_with(parts: set[str]) -> Stored | None:
    return next((s for s in STORED if set(s.parts) == parts), None)


def pairs_text() -> str:
    """The combined pairs in words: ``agent with model, kind with agent``."""
    return ", ".join(" with ".join(s.parts) for s in COMBINED)


def slice_for(group_by: str, filters: dict[str, str]) -> Slice:
    """The stored dimension for ``group_by`` (a dimension or ``none``) and filters."""
    if group_by == "none":
        stored = _stored_with(set(filters))
        if stored is None:
            raise QueryError(
                sorted(filters)[1],
                "this combination of filters is not supported; use one filter, "
                f"or two of a pair kept together ({pairs_text()})",
            )
        values = tuple(filters[p] for p in stored.parts)
        return Slice(stored.key, (SEP.join(values) if values else ALL,), None)
    if not filters:
        return Slice(group_by, None, group_by)
    if set(filters) == {group_by}:
        return Slice(group_by, (filters[group_by],), group_by)
    others = set(filters) - {group_by}
    stored = _stored_with({group_by, *others}) if group_by not in filters else None
    if stored is not None and len(stored.parts) == 2:
        (other,) = others
        return Slice(stored.key, None, group_by, stored.parts.index(group_by), filters[other])
    other = sorted(others)[0]
    raise QueryError(
        other,
        f"filtering by {other} while grouping by {group_by} is not supported; "
        f"group by one and filter by the other of a pair kept together ({pairs_text()}), "
        "or filter by the dimension you group by",
    )


def supported(group_by: str, filters: dict[str, str]) -> bool:
    try:
        slice_for(group_by, filters)
    except QueryError:
        return False
    return True


# -- what each stored cell keeps --------------------------------------------------------

COUNTERS = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
    "cost_nanos",
    "unpriced_requests",
    "tasks_completed",
    "tasks_failed",
)
C = {name: i for i, name in enumerate(COUNTERS)}
TOKEN_COUNTERS = (
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
)
HISTOGRAMS = ("latency", "duration")
"""Call latency in ms and task duration in ms, as log-bucket histograms."""


# -- the series analytics read ----------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """A series over the rollups: a sum of counters, a ratio, or a percentile.

    ``divisor`` turns the stored unit into ``unit`` (nanodollars to dollars,
    milliseconds to seconds)."""

    name: str
    unit: str
    counters: tuple[str, ...] = ()
    ratio: tuple[str, str] | None = None  # numerator ("errors" or "ok"), denominator
    histogram: tuple[str, float] | None = None  # histogram name, quantile
    divisor: float = 1.0

    @property
    def tasks(self) -> bool:
        """Built from task outcomes, which carry no calls-only dimension."""
        return any(c.startswith("tasks_") for c in self.counters) or (
            self.histogram is not None and self.histogram[0] == "duration"
        )


METRICS: tuple[Metric, ...] = (
    *(Metric(c, "tokens", (c,)) for c in TOKEN_COUNTERS),
    Metric("total_tokens", "tokens", ("input_tokens", "output_tokens")),
    Metric("cost_usd", "USD", ("cost_nanos",), divisor=1e9),
    Metric("requests", "calls", ("requests",)),
    Metric("errors", "calls", ("errors",)),
    Metric("tasks_completed", "tasks", ("tasks_completed",)),
    Metric("tasks_failed", "tasks", ("tasks_failed",)),
    Metric("error_rate", "ratio", ratio=("errors", "requests")),
    Metric("success_rate", "ratio", ratio=("ok", "requests")),
    Metric("latency_p50_ms", "ms", histogram=("latency", 0.5)),
    Metric("latency_p95_ms", "ms", histogram=("latency", 0.95)),
    Metric("latency_p99_ms", "ms", histogram=("latency", 0.99)),
    Metric("task_duration_p95_s", "s", histogram=("duration", 0.95), divisor=1e3),
)
METRIC = {m.name: m for m in METRICS}
METRIC_NAMES: tuple[str, ...] = tuple(METRIC)
COUNTER_METRICS = frozenset(m.name for m in METRICS if m.counters)
"""Sums of counters: zero, not missing, where nothing was recorded."""
