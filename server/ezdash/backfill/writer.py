"""The fast writer: cells become ``metrics_apply`` records through
:class:`CellAggregator`, an ``Aggregator`` whose ``ops`` is built with array
operations, cut into :func:`batches` of about ``TARGET_ARGS`` script arguments, and
sent by a client that packs commands with hiredis (:func:`connect`).

``reference_aggregator`` is the slow path (a plain ``Aggregator`` filled through
``add_bulk``), kept next to the fast one so the tests can prove both write the same
records: the writer is the part of the backfill that must match ingest exactly."""

from __future__ import annotations

from typing import Any

import hiredis
import numpy as np
import numpy.typing as npt
from redis.asyncio import Connection, Redis

from ..keys import MetricKeys
from ..metrics.catalog import COUNTERS, STORED, STORED_KEYS
from ..metrics.rollup import Aggregator, Tier
from .cells import C_IDX, HIST_BUCKETS, METRICS, Cells, LabelTable, group_keys
from .fleet import ERROR_TYPES


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
                order, starts, uk = group_keys(series_of_cell * tier.chunk + offset)
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
                    hkey = (
                        series_of_cell[hc] * tier.chunk + offset[hc]
                    ) * HIST_BUCKETS + cells.hist_bucket
                    h_order, h_starts, h_uk = group_keys(hkey)
                    counts = np.add.reduceat(cells.hist_count[h_order], h_starts)
                    rest, hb = np.divmod(h_uk, HIST_BUCKETS)
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
