"""The entry point, :func:`backfill`: a pipeline of a worker thread preparing the
next day (:func:`prepare_chunk`: simulate, sum, roll up, batch) while the event loop
writes the current one through ``write_batch``, with a few script calls in flight,
progress after every batch and a summary at the end.

Apart from the stages it drives so that the concurrency (futures, cancellation,
closing a client it opened) reads in one place."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from ..keys import Keys
from ..metrics.catalog import COUNTERS
from ..metrics.pricing import NANOS_PER_USD, PriceTable, load_price_table
from ..metrics.recorder import Batch, write_batch
from ..metrics.rollup import DEFAULT_TIERS, Tier, parse_tiers
from ..store.scripts import Scripts
from ..timeutil import format_ms
from .cells import C_IDX, Cells, LabelTable, base_cells, keep_retained, roll_up
from .fleet import DAY_MS, ERROR_TYPES, MINUTE_MS
from .progress import Progress, ProgressBar, chunk_work
from .simulation import Calls, Chunk, Simulation
from .writer import CellAggregator, batches, connect


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
    http_agents: int = 0,
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
            agents=agents,
            start_ms=start,
            end_ms=end,
            prices=table,
            seed=seed,
            base_ms=base,
            http_agents=http_agents,
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
