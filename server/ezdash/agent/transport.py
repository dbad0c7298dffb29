"""The seam between the agent runtime and what it reports to.

The runtime (``agent.runtime``) decides *what* an agent does: its loops, when to
heartbeat, what a command means, how a task's outcome is judged.  A ``Transport``
is *how* each of those few operations reaches the fleet: straight to Redis
(``agent.redis_transport``, for agents inside the trusted network) or through the
server's agent gateway over HTTP (``agent.http_transport``, for agents anywhere,
holding only an agent key).  Keeping the runtime on this small protocol is what
lets both paths share every loop, and so behave the same.

Errors follow one convention so the runtime's retry loops need not know the
transport: trouble worth retrying (Redis away, a network error, a 5xx, a 429 that
outlived its retries) is a ``RedisError`` or an ``OSError``; anything else is a bug
or a refusal and propagates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..store.tasks import Delivery

if TYPE_CHECKING:
    from ..metrics.events import UsageEvent
    from ..metrics.pricing import PriceTable
    from .control import CommandInbox
    from .logs import LogRecorder


class Refused(Exception):
    """The service refused a call for good (a revoked key, a binding that does not
    allow it): unlike an ``OSError``, retrying cannot help.  The runtime still stops
    when asked, and says why in its log."""


class UsageSink(Protocol):
    """Where usage goes: ``metrics.recorder.UsageRecorder`` on Redis (rollups written by
    the agent), ``agent.http_transport.HttpUsageRecorder`` over HTTP (raw events
    posted, the server prices and rolls them up)."""

    def record(self, event: UsageEvent, *, kind: str = "", queue: str = "") -> None: ...

    def record_task(
        self, ts_ms: int, *, agent: str, kind: str, queue: str, ok: bool, duration_ms: float
    ) -> None: ...

    async def close(self) -> None:
        """Write what is left (raises if it cannot)."""

    async def abandon(self) -> None:
        """Stop without writing, as a crashed process would."""


class Transport(Protocol):
    """The agent's operations on the fleet's state, one call each."""

    name: str
    """``redis`` or ``http``: shown in logs."""

    can_requeue: bool
    """Whether ``abandon`` gives a task back at once (Redis); over HTTP it cannot,
    and a task left by a forced stop is reclaimed after the visibility timeout."""

    async def now_ms(self) -> int:
        """The fleet's clock (Redis's; over HTTP this host's)."""

    async def register(self, doc: dict[str, Any]) -> None:
        """Publish (create or replace) the agent's document."""

    async def heartbeat(self, doc: dict[str, Any], held: list[Delivery]) -> list[str]:
        """Say the agent is alive and renew the leases of ``held``: the ids of those
        whose lease was lost.  Registers again when the registry forgot the agent;
        over HTTP the answer also carries the agent's commands, for ``feed_commands``."""

    async def maintain(self, queues: list[str], visibility_timeout: float) -> None:
        """Reclaim deliveries of dead agents and promote due retries (done by the
        server's maintenance over HTTP)."""

    async def take(self, slot: int, queues: list[str]) -> Delivery | None:
        """The next task of these queues, if there is one (over HTTP: a long poll, so
        this waits up to ``block_s`` for one)."""

    async def wait(self, slot: int, block_s: float) -> None:
        """After a ``take`` that found nothing: wait up to ``block_s`` for something
        new to take (on Redis, outside the runtime's count of busy slots, so a stop
        never waits for an idle read)."""

    async def finish(
        self,
        d: Delivery,
        *,
        result: Any,
        error: tuple[str, str] | None,
        retryable: bool,
        backoff_s: float,
    ) -> tuple[str, str]:
        """Report a task's outcome: (``ok`` or ``stale``, the task's status)."""

    async def abandon(self, d: Delivery) -> str:
        """Give a running task back to its queue (forced stop); see ``can_requeue``."""

    async def update_command(self, cid: str, status: str, error: str = "") -> str:
        """Move a command on (acknowledged, completed, failed): the status it now
        has, or ``refused:<status>`` when it was not in a state allowing it."""

    async def feed_commands(self, inbox: CommandInbox) -> None:
        """Deliver this agent's commands to ``inbox`` for its whole life."""

    def usage_recorder(self, prices: PriceTable) -> UsageSink:
        """What batches the agent's usage and task outcomes, written in the background."""

    def log_recorder(self) -> LogRecorder:
        """What batches the agent's log entries, written in the background."""

    async def close(self) -> None:
        """Release connections."""
