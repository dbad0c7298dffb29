"""The demo fleet: simulated LLM agents on the real runtime, plus a steady task stream.

Everything goes through the same client a real agent uses; only the "LLM call"
is simulated, with log-normal latency and the failure mix seen in practice
(rate limits and timeouts that retry, a few bad requests that do not). Handlers log
the way a real one would (the model called, token counts, provider trouble), a few
lines per task, so the log view has something true to show.

Part of the fleet (or all of it) may run over the server's agent gateway instead of
Redis (``http`` in :func:`run_fleet`): the same agents, kinds and numbering, with ids
``demo-http-<kind>-<nnn>`` so that one agent key (bound to :data:`HTTP_IDS` and
:data:`QUEUES`) covers them and nothing else.  ``ezdash serve`` runs a share of its
demo fleet that way (``EZ_DEMO_HTTP_SHARE``), so the HTTP path is used every day.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from ..keys import Keys
from ..store.scripts import Scripts
from ..store.tasks import TaskStore
from .config import AgentConfig, PermanentError
from .context import TaskContext
from .runtime import Agent

log = logging.getLogger("ezdash.demo")


@dataclass(frozen=True)
class Kind:
    name: str
    queues: tuple[str, ...]
    models: tuple[str, ...]
    median_latency_s: float
    task_types: tuple[str, ...]
    weight: float


KINDS = (
    Kind(
        "researcher",
        ("research",),
        ("gpt-4o", "claude-sonnet-4"),
        2.5,
        ("web_research", "compare_sources"),
        2.0,
    ),
    Kind(
        "coder", ("code",), ("claude-sonnet-4", "gpt-4.1"), 3.0, ("write_patch", "review_diff"), 2.0
    ),
    Kind(
        "summarizer",
        ("summarize", "default"),
        ("gpt-4o-mini", "claude-haiku-4-5"),
        0.8,
        ("summarize", "extract_facts"),
        3.0,
    ),
    Kind(
        "support",
        ("support", "default"),
        ("gpt-4o-mini",),
        1.2,
        ("answer_ticket", "classify_ticket"),
        2.0,
    ),
)


QUEUES = tuple(sorted({q for k in KINDS for q in k.queues}))
"""Every queue of the demo fleet: what an agent key for its HTTP agents is granted."""

HTTP_PREFIX = "demo-http-"
HTTP_IDS = HTTP_PREFIX + "*"
"""The agent-id glob of the demo fleet's HTTP agents (their key's binding): it matches
none of the fleet's Redis agents, so that key cannot act as one of them."""


def http_count(n: int, share: float) -> int:
    """How many of a fleet of ``n`` run over HTTP when ``share`` of it should: rounded,
    but at least one once the fleet has two agents, so that a small ``make run`` uses
    the HTTP path too (a fleet of one keeps its agent on Redis unless the share says
    all of it)."""
    if n <= 0 or share <= 0:
        return 0
    k = round(n * share)
    return min(n, max(k, 1) if n >= 2 else k)


class RateLimited(Exception):
    """Simulated provider 429."""


class UpstreamTimeout(Exception):
    """Simulated provider timeout."""


def make_handler(kind: Kind, rng: random.Random, speed: float) -> Any:
    async def handle(ctx: TaskContext) -> dict[str, Any]:
        model = rng.choice(kind.models)
        provider = "anthropic" if model.startswith("claude") else "openai"
        latency = rng.lognormvariate(math.log(kind.median_latency_s), 0.5) / speed
        ctx.debug(f"calling {model}", model=model, provider=provider, task_type=ctx.type)
        await asyncio.sleep(min(latency, 30.0))
        seconds = latency * speed  # as the simulated call would have taken
        prompt = rng.randint(300, 12_000)
        cached = rng.randint(0, prompt // 2) if rng.random() < 0.6 else 0
        creation = rng.randint(0, (prompt - cached) // 4) if provider == "anthropic" else 0
        output = rng.randint(50, 1500)
        usage: dict[str, Any] = {
            "model": model,
            "provider": provider,
            "input_tokens": prompt,
            "cached_tokens": cached,
            "cache_creation_tokens": creation,
            "output_tokens": output,
            "latency_ms": latency * 1000 * speed,
            "reasoning_tokens": rng.randint(0, output // 3) if "4.1" in model else 0,
        }
        roll = rng.random()
        if roll < 0.03:
            ctx.record_usage(**usage, status="error", error_type="RateLimited")
            ctx.warning(
                f"{provider} rate limit hit (429) on {model}",
                model=model,
                retry_after_s=round(rng.uniform(1.0, 20.0), 1),
            )
            raise RateLimited("429 from provider: rate limit exceeded, retry later")
        if roll < 0.05:
            ctx.record_usage(**usage, status="error", error_type="UpstreamTimeout")
            ctx.warning(
                f"{provider} did not answer within {seconds:.1f}s",
                model=model,
                timeout_s=round(seconds, 1),
            )
            raise UpstreamTimeout(f"provider did not answer within {latency:.1f}s")
        ctx.record_usage(**usage)
        if roll < 0.06:
            ctx.error(
                f"{model} rejected the request: prompt (with history) exceeds the context window",
                model=model,
                input_tokens=prompt,
            )
            raise PermanentError("request rejected: prompt exceeds the context window")
        if seconds > 2.5 * kind.median_latency_s:
            ctx.warning(
                f"slow response from {model}: {seconds:.1f}s",
                model=model,
                median_s=kind.median_latency_s,
            )
        ctx.info(
            f"{model} answered: {prompt} in ({cached} cached) / {output} out tokens "
            f"in {seconds:.2f}s",
            model=model,
            provider=provider,
            input_tokens=prompt,
            cached_tokens=cached,
            output_tokens=output,
            latency_ms=round(seconds * 1000, 1),
        )
        return {"model": model, "output_tokens": output}

    return handle


def fleet_configs(
    n: int,
    *,
    prefix: str,
    heartbeat: float,
    visibility: float,
    seed: int = 7,
    log_maxlen: int = 1_000_000,
    log_retention: float = 7 * 86400.0,
    http: int = 0,
) -> list[tuple[str, Kind, AgentConfig]]:
    """The fleet of ``n``: ids, kinds and configurations.  The last ``http`` of them are
    the HTTP agents (ids :data:`HTTP_PREFIX` ...); which ones and everything else about
    them depend on ``n`` and ``http`` alone, so a restarted fleet is the same fleet."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = (
            KINDS[i % len(KINDS)]
            if i < len(KINDS)
            else rng.choices(KINDS, [k.weight for k in KINDS])[0]
        )
        cfg = AgentConfig(
            queues=list(kind.queues),
            kind=kind.name,
            name=f"{kind.name} #{i + 1}",
            model=rng.choice(kind.models),
            tags={"env": "demo", "region": rng.choice(["us-east", "eu-west"])},
            prefix=prefix,
            heartbeat_interval=heartbeat,
            visibility_timeout=visibility,
            log_maxlen=log_maxlen,
            log_retention=log_retention,
        )
        head = HTTP_PREFIX if i >= n - http else "demo-"
        out.append((f"{head}{kind.name}-{i + 1:03d}", kind, cfg))
    return out


async def produce(tasks: TaskStore, rate_per_s: float, stop: asyncio.Event, seed: int = 11) -> None:
    """Create tasks as a Poisson stream, spread over the fleet's kinds."""
    rng = random.Random(seed)
    while not stop.is_set():
        kind = rng.choices(KINDS, [k.weight for k in KINDS])[0]
        await tasks.create(
            type=rng.choice(kind.task_types),
            queue=kind.queues[0],
            payload={"prompt": f"demo request {rng.randint(1, 10**6)}", "source": "demo"},
            priority=9 if rng.random() < 0.05 else 0,
            max_attempts=3,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.expovariate(rate_per_s))


async def run_fleet(
    redis_url: str | None,
    n: int,
    *,
    prefix: str = "ez",
    heartbeat: float = 5.0,
    visibility: float = 60.0,
    speed: float = 1.0,
    stop: asyncio.Event | None = None,
    produce_tasks: bool = True,
    log_maxlen: int = 1_000_000,
    log_retention: float = 7 * 86400.0,
    http: int = 0,
    url: str | None = None,
    key: str | None = None,
    stop_within: float | None = None,
) -> None:
    """Run n agents and a producer until ``stop`` is set, then stop them gracefully.

    The last ``http`` agents use the agent gateway at ``url`` with the agent ``key``,
    the others Redis at ``redis_url`` (needed unless all are on HTTP; without it no
    tasks are produced: create them through the API).  A graceful stop that has not
    ended after ``stop_within`` seconds ends as a crash would (the agents that are
    left vanish; the server reclaims their tasks after the visibility timeout): an
    agent cannot report anything while its server is gone, and would otherwise retry
    for a whole visibility timeout before giving up."""
    if not 0 <= http <= n:
        raise ValueError(f"http: 0 to {n} agents, not {http}")
    if http and not (url and key):
        raise ValueError("agents over HTTP need the gateway's url and an agent key")
    if http < n and not redis_url:
        raise ValueError("agents on Redis need redis_url")
    stop = stop or asyncio.Event()
    rng = random.Random(3)
    agents = []
    for aid, kind, cfg in fleet_configs(
        n,
        prefix=prefix,
        heartbeat=heartbeat,
        visibility=visibility,
        log_maxlen=log_maxlen,
        log_retention=log_retention,
        http=http,
    ):
        handler = make_handler(kind, random.Random(rng.random()), speed)
        if aid.startswith(HTTP_PREFIX):
            agents.append(Agent(aid, handler, url=url, key=key, config=cfg))
        else:
            agents.append(Agent(aid, handler, redis_url=redis_url, config=cfg))
    runs = [asyncio.create_task(a.run(), name=a.id) for a in agents]
    for run in runs:
        run.add_done_callback(_report_crash)
    producer = None
    redis = Redis.from_url(redis_url, decode_responses=True) if redis_url else None
    if produce_tasks and n and redis is not None:
        keys = Keys(prefix)
        store = TaskStore(redis, keys, Scripts(redis), events_maxlen=100_000)
        mean_latency = sum(k.median_latency_s for k in KINDS) / len(KINDS) / speed
        rate = 0.6 * n / mean_latency  # keep the fleet about 60 % busy
        producer = asyncio.create_task(produce(store, rate, stop), name="producer")
    elif produce_tasks and n:
        log.info("no Redis to create tasks in: the demo fleet takes the tasks created for it")
    log.info("demo fleet of %d agents running (%d over HTTP at %s)", n, http, url or "-")
    try:
        await stop.wait()
    finally:
        if producer:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
        stops = {  # an agent that could not start has nothing to stop
            asyncio.create_task(a.stop(), name=f"{a.id}:stop"): a
            for a, run in zip(agents, runs, strict=True)
            if not run.done()
        }
        if stops:
            _, late = await asyncio.wait(stops, timeout=stop_within)
            if late:
                log.warning(
                    "%d demo agents had not stopped after %.1fs: ending them",
                    len(late),
                    stop_within,
                )
                for t in late:
                    t.cancel()
                await asyncio.gather(*late, return_exceptions=True)
                await asyncio.gather(*(stops[t].kill() for t in late), return_exceptions=True)
            await asyncio.gather(*stops, return_exceptions=True)
        await asyncio.gather(*runs, return_exceptions=True)
        if redis is not None:
            await redis.aclose()


def _report_crash(run: asyncio.Task[None]) -> None:
    """An agent that could not start (over HTTP: a key that does not cover it) or that
    failed ends alone; say so at once, not when the fleet stops."""
    if not run.cancelled() and run.exception() is not None:
        log.error("demo agent %s ended: %r", run.get_name(), run.exception())
