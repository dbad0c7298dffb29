"""Rollups: time buckets at several tiers, per dimension, as packed counter arrays.

Every counter of one (tier, dimension, group, metric) lives in one Redis string of
64-bit integers, one per time bucket, over a fixed span of buckets (a *chunk*),
incremented in place with BITFIELD.  A query then reads a few large values instead
of thousands of small ones, so its cost depends on buckets and groups, never on the
number of events; chunks expire as a whole, so retention needs no scan.  Latency
histograms are sparse (most buckets are empty), one hash per chunk with fields
``<bucket offset>:<histogram bucket>``.

Events are aggregated in memory first (one entry per minute and label set) and
expanded into tiers and dimensions only when a batch is written, which keeps the
hot path to a dict update per event.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field

from ..keys import MetricKeys
from ..timeutil import parse_duration
from . import catalog, histogram
from .catalog import COUNTERS, C, Labels

ALL = catalog.ALL
"""Dimensions, counters and histograms are the catalog's (``catalog.STORED``)."""
_REQ, _ERR, _UNPRICED = C["requests"], C["errors"], C["unpriced_requests"]
_IN, _OUT, _COST = C["input_tokens"], C["output_tokens"], C["cost_nanos"]
_CACHED, _CREATE, _REASON = C["cached_tokens"], C["cache_creation_tokens"], C["reasoning_tokens"]
_DONE, _FAILED = C["tasks_completed"], C["tasks_failed"]


@dataclass(frozen=True)
class Tier:
    name: str
    step_ms: int
    retention_ms: int
    chunk: int  # buckets per stored array

    @property
    def chunk_ms(self) -> int:
        return self.step_ms * self.chunk

    def ttl_s(self, chunk_index: int, now_ms: int) -> int:
        """Seconds until every bucket of the chunk has left the retention window."""
        end = (chunk_index + 1) * self.chunk_ms
        return max(60, math.ceil((end + self.retention_ms - now_ms) / 1000))


DEFAULT_TIERS = "1m:48h,1h:90d,1d:730d"


def parse_tiers(spec: str) -> tuple[Tier, ...]:
    """``1m:48h,1h:90d,1d:730d`` -> tiers, finest first; each step must divide the next."""
    tiers = []
    for part in spec.split(","):
        step_s, _, keep_s = part.strip().partition(":")
        step = int(parse_duration(step_s) * 1000)
        keep = int(parse_duration(keep_s) * 1000)
        if step <= 0 or keep < step:
            raise ValueError(f"bad rollup tier {part!r}")
        chunk = max(1, min(1440, keep // step // 2 or 1))
        tiers.append(Tier(step_s.strip(), step, keep, chunk))
    tiers.sort(key=lambda t: t.step_ms)
    for fine, coarse in itertools.pairwise(tiers):
        if coarse.step_ms % fine.step_ms:
            raise ValueError(f"tier {coarse.name} is not a multiple of {fine.name}")
    if 86_400_000 % tiers[0].step_ms and tiers[0].step_ms % 86_400_000:
        raise ValueError("the finest tier must divide a day")
    return tuple(tiers)


@dataclass
class Cell:
    """All that one minute of one label set adds up to."""

    counters: list[int] = field(default_factory=lambda: [0] * len(COUNTERS))
    errors: dict[str, int] = field(default_factory=dict)
    latency: dict[int, int] = field(default_factory=dict)
    duration: dict[int, int] = field(default_factory=dict)


class Aggregator:
    """Collects usage and task outcomes; ``ops()`` turns them into rollup writes."""

    def __init__(self, tiers: tuple[Tier, ...]) -> None:
        self.tiers = tiers
        self.base_ms = tiers[0].step_ms
        self.cells: dict[tuple[int, Labels], Cell] = {}
        self.newest = 0
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def _cell(self, ts_ms: int, labels: Labels) -> Cell:
        key = (ts_ms // self.base_ms, labels)
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = Cell()
        if ts_ms > self.newest:
            self.newest = ts_ms
        self.count += 1
        return cell

    def add_call(
        self,
        ts_ms: int,
        labels: Labels,
        *,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int,
        cache_creation_tokens: int,
        reasoning_tokens: int,
        cost_nanos: int,
        priced: bool,
        latency_ms: float,
        error_type: str | None,
    ) -> None:
        cell = self._cell(ts_ms, labels)
        c = cell.counters
        c[_REQ] += 1
        c[_IN] += input_tokens
        c[_OUT] += output_tokens
        c[_CACHED] += cached_tokens
        c[_CREATE] += cache_creation_tokens
        c[_REASON] += reasoning_tokens
        c[_COST] += cost_nanos
        if not priced:
            c[_UNPRICED] += 1
        if error_type is not None:
            c[_ERR] += 1
            cell.errors[error_type] = cell.errors.get(error_type, 0) + 1
        b = histogram.bucket_of(latency_ms)
        cell.latency[b] = cell.latency.get(b, 0) + 1

    def add_task(self, ts_ms: int, labels: Labels, *, ok: bool, duration_ms: float) -> None:
        cell = self._cell(ts_ms, labels)
        cell.counters[_DONE if ok else _FAILED] += 1
        b = histogram.bucket_of(duration_ms)
        cell.duration[b] = cell.duration.get(b, 0) + 1

    def ops(self, keys: MetricKeys, now_ms: int) -> list[str | int]:
        """The flat record list ``metrics_apply.lua`` takes (without the raw events)."""
        counters: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        hists: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        members: dict[str, set[str]] = defaultdict(set)
        ttls: dict[str, int] = {}
        for (minute, labels), cell in self.cells.items():
            ts = minute * self.base_ms
            for tier in self.tiers:
                bucket = ts // tier.step_ms
                chunk, offset = divmod(bucket, tier.chunk)
                ttl = tier.ttl_s(chunk, now_ms)
                if ttl <= 60 and (chunk + 1) * tier.chunk_ms + tier.retention_ms < now_ms:
                    continue  # already outside this tier's retention
                for dim, group in catalog.groups(labels):
                    gkey = keys.groups(tier.name, dim, chunk)
                    members[gkey].add(group)
                    ttls[gkey] = ttl
                    for i, value in enumerate(cell.counters):
                        if value:
                            k = keys.counter(tier.name, dim, group, COUNTERS[i], chunk)
                            counters[k][offset] += value
                            ttls[k] = ttl
                    for etype, value in cell.errors.items():
                        k = keys.counter(tier.name, dim, group, "err:" + etype, chunk)
                        counters[k][offset] += value
                        ttls[k] = ttl
                        ekey = keys.error_types(tier.name, chunk)
                        members[ekey].add(etype)
                        ttls[ekey] = ttl
                    for name, hist in (("latency", cell.latency), ("duration", cell.duration)):
                        if hist:
                            k = keys.histogram(tier.name, dim, group, name, chunk)
                            h = hists[k]
                            for hb, value in hist.items():
                                h[f"{offset}:{hb}"] += value
                            ttls[k] = ttl
        out: list[str | int] = []
        for k, incs in counters.items():
            items = list(incs.items())
            for start in range(0, len(items), 500):
                part = items[start : start + 500]
                out += ["B", k, ttls[k], len(part)]
                for offset, value in part:
                    out += [offset, value]
        for k, fields in hists.items():
            out += ["H", k, ttls[k], len(fields)]
            for f, value in fields.items():
                out += [f, value]
        for k, names in members.items():
            out += ["S", k, ttls[k], len(names), *sorted(names)]
        return out

    def add_bulk(
        self,
        ts_ms: int,
        labels: Labels,
        counters: list[int] | tuple[int, ...],
        *,
        errors: dict[str, int] | None = None,
        latency: dict[int, int] | None = None,
        duration: dict[int, int] | None = None,
        events: int = 1,
    ) -> None:
        """Many calls and task outcomes of one base bucket, already summed by the caller.

        For a backfill or an import that aggregates millions of calls with numpy: one
        ``add_call`` per call would cost more than everything else together.
        ``counters`` follows ``COUNTERS``; its ``errors`` entry must equal the sum of
        ``errors`` (the per-type counts), so the two views of errors cannot disagree.
        ``latency`` and ``duration`` map histogram buckets (``histogram.bucket_of``) to
        counts.  ``len()`` grows by ``events``, since flush policies count events."""
        if len(counters) != len(COUNTERS):
            raise ValueError(f"expected {len(COUNTERS)} counters in COUNTERS order")
        errs = errors or {}
        if counters[_ERR] != sum(errs.values()):
            raise ValueError("the errors counter must equal the sum of the per-type errors")
        cell = self._cell(ts_ms, labels)
        self.count += events - 1  # _cell counted one
        c = cell.counters
        for i, value in enumerate(counters):
            if value:
                c[i] += value
        for etype, value in errs.items():
            if value:
                cell.errors[etype] = cell.errors.get(etype, 0) + value
        for target, hist in ((cell.latency, latency), (cell.duration, duration)):
            for hb, value in (hist or {}).items():
                if not 0 <= hb <= histogram.MAX_BUCKET:
                    raise ValueError(f"not a histogram bucket: {hb}")
                if value:
                    target[hb] = target.get(hb, 0) + value
