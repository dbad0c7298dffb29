"""What a handler sees of its task: :class:`TaskContext` (the task, logging with the
task id, usage reporting) and the task's closing log line (:func:`log_outcome`).
Apart from the runtime because this is the handler's side of the agent: everything
here forwards to the :class:`~ezdash.agent.runtime.Agent` running the task."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runtime import Agent


@dataclass
class TaskContext:
    """What a handler gets: the task and a way to tell whether to give up early."""

    id: str
    type: str
    queue: str
    payload: Any
    attempt: int
    max_attempts: int
    agent: Agent

    def log(self, level: str | int, message: str, /, **fields: Any) -> None:
        """Write a log entry about this task (agent and task id are added); returns at
        once, the entry is written with others within ``log_flush_s``. ``level`` is a
        name (``debug`` … ``critical``) or a ``logging`` number; a bad one raises."""
        self.agent._log(level, message, self.id, fields)

    def debug(self, message: str, /, **fields: Any) -> None:
        self.agent._log("debug", message, self.id, fields)

    def info(self, message: str, /, **fields: Any) -> None:
        self.agent._log("info", message, self.id, fields)

    def warning(self, message: str, /, **fields: Any) -> None:
        self.agent._log("warning", message, self.id, fields)

    def error(self, message: str, /, **fields: Any) -> None:
        self.agent._log("error", message, self.id, fields)

    def record_usage(
        self,
        *,
        model: str,
        provider: str,
        input_tokens: int,
        output_tokens: int,
        latency_ms: float,
        cached_tokens: int = 0,
        cache_creation_tokens: int = 0,
        reasoning_tokens: int = 0,
        status: str = "ok",
        error_type: str | None = None,
        cost_usd: float | None = None,
    ) -> None:
        """Report one LLM call made for this task (tokens per the OpenTelemetry GenAI
        conventions: input includes cached and cache-creation tokens, output includes
        reasoning).  Leave cost_usd out to have the server's price table price it."""
        self.agent.record_usage(
            model=model,
            provider=provider,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ms=latency_ms,
            cached_tokens=cached_tokens,
            cache_creation_tokens=cache_creation_tokens,
            reasoning_tokens=reasoning_tokens,
            status=status,
            error_type=error_type,
            cost_usd=cost_usd,
            task_id=self.id,
            queue=self.queue,
        )


Handler = Callable[[TaskContext], Coroutine[Any, Any, Any]]
Hook = Callable[["Agent"], Awaitable[None]]


def log_outcome(
    ctx: TaskContext,
    outcome: str,
    status: str,
    error: tuple[str, str] | None,
    backoff_s: float,
    took_s: float,
) -> None:
    """The task's last log line: how it ended, at the level that ending deserves."""
    fields: dict[str, Any] = {
        "status": status,
        "attempt": ctx.attempt,
        "max_attempts": ctx.max_attempts,
        "duration_ms": round(took_s * 1000, 1),
    }
    if error is not None:
        fields["error_type"], fields["error"] = error
    what = f"{error[0]}: {error[1]}" if error is not None else ""
    if outcome == "stale":
        ctx.warning(f"outcome discarded: the task is now {status}", **fields)
    elif status == "succeeded":
        ctx.info(f"task succeeded in {took_s:.2f}s", **fields)
    elif status == "queued":
        ctx.warning(
            f"attempt {ctx.attempt}/{ctx.max_attempts} failed ({what}); retry in {backoff_s:.1f}s",
            backoff_s=round(backoff_s, 3),
            **fields,
        )
    elif status == "dead":
        ctx.error(f"task dead after {ctx.attempt} attempts ({what})", **fields)
    else:
        ctx.error(f"task {status} ({what})" if what else f"task {status}", **fields)
