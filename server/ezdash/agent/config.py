"""What an agent is configured with: :class:`AgentConfig` (queues, timings, what
it records) and :class:`PermanentError`, the one exception a handler raises on
purpose.  Apart from the runtime because these are what a real agent's code
imports and reads, while the runtime is how the agent behaves."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..invariants import AGENT_RULES, problems
from ..metrics.rollup import DEFAULT_TIERS


class PermanentError(Exception):
    """Raise from a handler when retrying cannot help (bad input): the task ends
    ``failed`` at once instead of using up its attempts."""


@dataclass
class AgentConfig:
    """How the agent behaves; the defaults suit a real fleet, tests shorten them."""

    queues: list[str] = field(default_factory=lambda: ["default"])
    kind: str = "generic"
    name: str | None = None
    model: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    concurrency: int = 1
    heartbeat_interval: float = 5.0
    visibility_timeout: float = 60.0
    block_s: float = 5.0
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 60.0
    prefix: str = "ez"
    gateway_socket: bool = False
    """Over the agent gateway (``url=``): heartbeats, takes, finishes and command
    reports on one WebSocket instead of a request each (commands pushed as they are
    created; about 1.5x the task throughput of requests, docs/benchmarks.md)."""
    events_maxlen: int = 100_000
    record_usage: bool = True
    rollup_tiers: str = DEFAULT_TIERS  # must match the server's EZ_ROLLUP_TIERS
    usage_flush_s: float = 1.0
    # -- logs (docs/agent-protocol.md §11) --
    record_logs: bool = True
    log_maxlen: int = 1_000_000  # every writer trims the stream: use the server's EZ_LOG_MAXLEN
    log_retention: float = 7 * 86400.0  # seconds; the server's EZ_LOG_RETENTION
    log_flush_s: float = 0.5
    log_batch: int = 200
    log_buffer: int = 10_000  # entries kept while Redis is away; the oldest go first
    capture_logging: bool = True
    """Forward Python ``logging`` records made by the agent's code (in a handler or
    its hooks) to the log stream; see ``LogHandler`` for what is and is not taken."""
    capture_loggers: list[str] = field(default_factory=lambda: [""])  # "" is the root logger
    capture_level: int | str = logging.INFO

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse values that break a rule between them (``ezdash.invariants``, the
        rules the server's settings obey too)."""
        found = problems(self, AGENT_RULES)
        if found:
            raise ValueError("; ".join(found))
