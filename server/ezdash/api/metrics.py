"""Metrics: tokens, costs, performance, errors, prices, and usage ingest."""

from __future__ import annotations

import time

import orjson

from ..metrics import catalog
from ..metrics.catalog import TOKEN_COUNTERS, QueryError, supported
from ..metrics.events import UsageEvent, validate_batch
from ..metrics.histogram import merge
from ..metrics.pricing import nanos_to_usd
from ..metrics.query import Plan, envelope, percentiles, plan, ratio
from ..metrics.recorder import Batch, write_batch
from ..store.tasks import fingerprint
from .base import APIHandler
from .errors import invalid
from .models import QUEUE_PATTERN
from .opdocs import Op, batch, ok, problem
from .params import (
    AGENT,
    FROM,
    IDEMPOTENCY_KEY,
    TO,
    WHOLE_SECONDS,
    Choice,
    Duration,
    Group,
    Param,
    Text,
)

NO_PIPE = r"^[^|]{1,200}$"
"""Filter values name a rollup cell; '|' joins the parts of combined dimensions."""


def _filter(dim: catalog.Dimension) -> Param:
    """The query parameter filtering on a dimension, validated as its values are."""
    if dim.values == "agent_id":
        return AGENT
    if dim.values == "queue":
        hint = "queue names are 1-64 characters of A-Z a-z 0-9 . _ -"
        return Text(dim.name, f"Only this {dim.name}", max_len=64, pattern=QUEUE_PATTERN, hint=hint)
    hint = "1 to 200 characters without '|'"
    return Text(dim.name, f"Only this {dim.name}", max_len=200, pattern=NO_PIPE, hint=hint)


FILTER_PARAMS: tuple[Param, ...] = tuple(_filter(d) for d in catalog.DIMENSIONS)
FILTERS = tuple(p.name for p in FILTER_PARAMS)
GROUP_BY = Choice("group_by", "Dimension to split by", values=("none", *catalog.NAMES))
STEP = Duration(
    "step",
    "Bucket size in whole seconds (1m, 5m, 1h, 1d...); default chosen from the window",
    pattern=WHOLE_SECONDS,
    hint="must be a whole number of seconds, e.g. 60s, 5m, 1h",
)


def _slice_ok(args: dict[str, str]) -> bool:
    return supported(args.get("group_by", "none"), {f: args[f] for f in FILTERS if f in args})


_NAMES = ", ".join(catalog.NAMES)
_PAIRS = catalog.pairs_text()
SLICE = Group(
    "slice",
    f"How to split and narrow the fleet: group_by and the filters {_NAMES}, in the "
    f"combinations the rollups keep (one filter, or the two of a pair kept together: "
    f"{_PAIRS}; with group_by, a filter on the same dimension, or group by one of such "
    "a pair and filter by the other)",
    (GROUP_BY, *FILTER_PARAMS),
    _slice_ok,
)
FILTER_ONLY = Group(
    "filters",
    f"Narrow the fleet: {_NAMES}, one at a time or the two of a pair kept together ({_PAIRS})",
    FILTER_PARAMS,
    _slice_ok,
)
METRICS_QUERY: tuple[Param | Group, ...] = (FROM, TO, STEP, SLICE)


def metrics_op(summary: str) -> dict[str, Op]:
    """The ``docs`` of a metrics endpoint: GET, answered with a MetricsAnswer."""
    return {"GET": Op(summary, {"200": ok("MetricsAnswer")})}


class MetricsHandler(APIHandler):
    """Shared parsing: from, to, step, group_by and the filters."""

    scopes = {"GET": "read"}
    query = {"GET": METRICS_QUERY}

    async def plan(self) -> tuple[Plan, str]:
        svc = self.services
        now = await svc.redis_now_ms()
        end = self.q_time("to", now)
        end = now if end is None else end
        start = self.q_time("from", now)
        start = end - 86_400_000 if start is None else start
        step = self.q_duration("step", None)
        group_by = self.q_str("group_by") or "none"
        filters = self.filters()
        try:
            p = plan(
                svc.tiers,
                start_ms=start,
                end_ms=end,
                step_ms=int(step * 1000) if step is not None else None,
                now_ms=now,
                group_by=group_by,
                filters=filters,
            )
        except QueryError as e:
            raise invalid(e.field, str(e)) from None
        return p, group_by

    def filters(self) -> dict[str, str]:
        return {f: v for f in FILTERS if (v := self.q_str(f)) is not None}

    def group_doc(self, p: Plan, label: str) -> dict[str, str]:
        return {} if p.label is None else {p.label: label}


class TokensHandler(MetricsHandler):
    docs = metrics_op("Tokens by kind per bucket")

    async def get(self) -> None:
        started = time.perf_counter()
        p, group_by = await self.plan()
        reader = self.services.metrics
        groups = await reader.groups(p)
        data = await reader.counters(p, [g for g, _ in groups], list(TOKEN_COUNTERS))
        series, totals = [], dict.fromkeys((*TOKEN_COUNTERS, "total_tokens"), 0)
        for g, label in groups:
            values = {m: data[(g, m)] for m in TOKEN_COUNTERS}
            values["total_tokens"] = values["input_tokens"] + values["output_tokens"]
            for m, arr in values.items():
                totals[m] += int(arr.sum())
            series.append(
                {
                    "group": self.group_doc(p, label),
                    "values": {m: arr.tolist() for m, arr in values.items()},
                }
            )
        self.write_json(envelope(p, group_by, series, totals, await reader.as_of(), started))


class CostsHandler(MetricsHandler):
    docs = metrics_op("Cost in USD per bucket (price_table names the table)")

    async def get(self) -> None:
        started = time.perf_counter()
        p, group_by = await self.plan()
        svc = self.services
        groups = await svc.metrics.groups(p)
        data = await svc.metrics.counters(
            p, [g for g, _ in groups], ["cost_nanos", "unpriced_requests"]
        )
        series = []
        total_nanos = 0
        unpriced = 0
        for g, label in groups:
            nanos = data[(g, "cost_nanos")]
            total_nanos += int(nanos.sum())
            unpriced += int(data[(g, "unpriced_requests")].sum())
            series.append(
                {
                    "group": self.group_doc(p, label),
                    "values": {"cost_usd": (nanos / 1e9).round(9).tolist()},
                }
            )
        totals = {"cost_usd": nanos_to_usd(total_nanos), "unpriced_requests": unpriced}
        table = {"version": svc.prices.version, "source_date": svc.prices.file.source_date}
        self.write_json(
            envelope(
                p, group_by, series, totals, await svc.metrics.as_of(), started, price_table=table
            )
        )


class PerformanceHandler(MetricsHandler):
    docs = metrics_op("Requests, tasks, latency percentiles, task duration p95, success rate")

    async def get(self) -> None:
        started = time.perf_counter()
        p, group_by = await self.plan()
        reader = self.services.metrics
        groups = await reader.groups(p)
        names = [g for g, _ in groups]
        data = await reader.counters(p, names, ["requests", "errors", "tasks_completed"])
        latency = await reader.histograms(p, names, "latency")
        duration = await reader.histograms(p, names, "duration")
        series = []
        req_total = err_total = done_total = 0
        for g, label in groups:
            req, err = data[(g, "requests")], data[(g, "errors")]
            p50, p95, p99 = percentiles(latency[g], (0.5, 0.95, 0.99))
            (d95,) = percentiles(duration[g], (0.95,))
            series.append(
                {
                    "group": self.group_doc(p, label),
                    "values": {
                        "requests": req.tolist(),
                        "tasks_completed": data[(g, "tasks_completed")].tolist(),
                        "latency_p50_ms": p50,
                        "latency_p95_ms": p95,
                        "latency_p99_ms": p99,
                        "task_duration_p95_s": [
                            None if v is None else round(v / 1000, 3) for v in d95
                        ],
                        "success_rate": ratio(req - err, req),
                    },
                }
            )
            req_total += int(req.sum())
            err_total += int(err.sum())
            done_total += int(data[(g, "tasks_completed")].sum())
        all_lat = merge(*(h for g in names for h in latency[g]))
        all_dur = merge(*(h for g in names for h in duration[g]))
        (tp50,), (tp95,), (tp99,) = percentiles([all_lat], (0.5, 0.95, 0.99))
        (td95,) = percentiles([all_dur], (0.95,))[0]
        totals = {
            "requests": req_total,
            "tasks_completed": done_total,
            "latency_p50_ms": tp50,
            "latency_p95_ms": tp95,
            "latency_p99_ms": tp99,
            "task_duration_p95_s": None if td95 is None else round(td95 / 1000, 3),
            "success_rate": None if not req_total else round(1 - err_total / req_total, 6),
        }
        self.write_json(envelope(p, group_by, series, totals, await reader.as_of(), started))


class ErrorsHandler(MetricsHandler):
    docs = metrics_op("Errors and error rate per bucket; top error types")

    async def get(self) -> None:
        started = time.perf_counter()
        p, group_by = await self.plan()
        reader = self.services.metrics
        groups = await reader.groups(p)
        names = [g for g, _ in groups]
        types = await reader.error_types(p)
        data = await reader.counters(p, names, ["requests", "errors", *(f"err:{t}" for t in types)])
        series = []
        by_type = dict.fromkeys(types, 0)
        req_total = err_total = 0
        for g, label in groups:
            req, err = data[(g, "requests")], data[(g, "errors")]
            req_total += int(req.sum())
            err_total += int(err.sum())
            for t in types:
                by_type[t] += int(data[(g, f"err:{t}")].sum())
            series.append(
                {
                    "group": self.group_doc(p, label),
                    "values": {"errors": err.tolist(), "error_rate": ratio(err, req)},
                }
            )
        top = sorted(((c, t) for t, c in by_type.items() if c), reverse=True)[:10]
        totals = {
            "errors": err_total,
            "requests": req_total,
            "error_rate": None if not req_total else round(err_total / req_total, 6),
        }
        self.write_json(
            envelope(
                p,
                group_by,
                series,
                totals,
                await reader.as_of(),
                started,
                by_type=[{"type": t, "count": c} for c, t in top],
            )
        )


class PricesHandler(APIHandler):
    scopes = {"GET": "read"}
    docs = {"GET": Op("The active model price table", {"200": ok("PriceTableDoc")})}

    def get(self) -> None:
        self.write_json(self.services.prices.as_api())


class IngestUsageHandler(APIHandler):
    """A batch of usage events from agents that do not write to Redis themselves.

    All or nothing: if any event is invalid the whole batch is refused (422, each
    bad event named by index) and nothing is written, so a client fixes and resends
    the batch as it was.  With an Idempotency-Key a resent batch is counted once."""

    scopes = {"POST": "write"}
    docs = {
        "POST": Op(
            'Usage events (a JSON array or {"events": [...]}); all or nothing',
            {"202": ok("Accepted", "Accepted"), "413": problem("Too many events")},
            body=batch(UsageEvent, "events"),
        )
    }
    actions = {"POST": "ingest.usage"}
    headers_in = {"POST": (IDEMPOTENCY_KEY,)}

    async def post(self) -> None:
        svc = self.services
        items = self.batch_items("events")
        now = await svc.redis_now_ms()
        oldest = now - svc.tiers[-1].retention_ms
        events, bad = validate_batch(items, now_ms=now, oldest_ms=oldest)
        if bad:
            raise self.refuse_batch("events", len(items), bad)
        labels = await self._labels(
            {ev.agent_id for ev in events}, {ev.task_id for ev in events if ev.task_id}
        )
        batch = Batch(svc.tiers, svc.prices)
        for ev in events:
            kind = labels[0].get(ev.agent_id, "")
            queue = labels[1].get(ev.task_id, "") if ev.task_id else ""
            batch.add_event(ev, kind=kind, queue=queue)
        applied = await write_batch(
            svc.redis,
            svc.scripts,
            svc.keys,
            batch,
            now_ms=now,
            batch_id=self.batch_id(),
            dedupe_ttl_ms=int(svc.settings.idempotency_ttl * 1000),
            fingerprint=fingerprint(items),
        )
        if not applied:
            self.set_header("Idempotent-Replayed", "true")
        self.audit_detail = f"events={len(events)}"
        self.write_json({"accepted": len(events)}, 202)

    async def _labels(
        self, agents: set[str], tasks: set[str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The agent's kind and the task's queue, which events do not carry."""
        svc = self.services
        agent_list, task_list = sorted(agents), sorted(tasks)
        async with svc.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(svc.keys.agents, agent_list)
            for t in task_list:
                pipe.hget(svc.keys.task(t), "queue")
            res = await pipe.execute()
        kinds = {}
        for a, raw in zip(agent_list, res[0], strict=True):
            if raw:
                kinds[a] = str(orjson.loads(raw).get("kind") or "")
        queues = {t: q for t, q in zip(task_list, res[1:], strict=True) if q}
        return kinds, queues


default_handlers = [
    (r"/api/metrics/tokens", TokensHandler),
    (r"/api/metrics/costs", CostsHandler),
    (r"/api/metrics/performance", PerformanceHandler),
    (r"/api/metrics/errors", ErrorsHandler),
    (r"/api/metrics/prices", PricesHandler),
    (r"/api/ingest/usage", IngestUsageHandler),
]
