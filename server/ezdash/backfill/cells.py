"""Vectorised cells: a chunk's calls summed per (bucket, agent, model) and its task
outcomes per (bucket, agent), as numpy arrays (:class:`Cells`), rolled up to every
tier's step and trimmed to its retention, plus the :class:`LabelTable` that turns a
cell's agent and model indexes into the catalog's label names.

Apart from :mod:`.writer` because this is the arithmetic (exact integer sums, one
price rounding per cell) that the totals and every tier must agree on, whereas the
writer only encodes cells as Redis records."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..metrics import histogram
from ..metrics.catalog import ALL, COUNTERS, SEP, STORED, Labels, Stored, labels
from ..metrics.rollup import Tier
from .fleet import ERROR_TYPES, MODELS, FloatArray, IntArray
from .simulation import Chunk, Simulation

_LOG_MIN = math.log(histogram.MIN_MS)
_INV_LOG_GAMMA = 1.0 / math.log(histogram.GAMMA)
HIST_BUCKETS = histogram.MAX_BUCKET + 1
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


def group_keys(keys: IntArray) -> tuple[IntArray, IntArray, IntArray]:
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
    order, starts, keys = group_keys(cell * HIST_BUCKETS + hb)
    sums = np.add.reduceat(count[order], starts) if starts.size else count[:0]
    c, b = np.divmod(keys, HIST_BUCKETS)
    return c, b, sums.astype(np.int64)


def base_cells(ch: Chunk, n_agents: int, n_models: int) -> tuple[Cells, Cells]:
    """Calls summed per (base bucket, agent, model), each cell priced once; task
    outcomes summed per (base bucket, agent)."""
    c = ch.calls
    b0 = ch.start_ms // ch.base_ms
    n_b = (ch.end_ms - ch.start_ms) // ch.base_ms
    key = (ch.call_base * n_agents + c.agent) * n_models + c.model
    order, starts, keys = group_keys(key)
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
    order, starts, keys = group_keys(key)
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
