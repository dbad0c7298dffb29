"""Log entries from an agent: ``ctx.info(...)`` in a handler, ``Agent.log``, the
runtime's own lifecycle lines, and Python ``logging`` calls made while a task runs.

A handler must never wait on Redis to write a line, and an agent must keep working
while Redis is away, so entries go into a bounded buffer in memory and a background
flusher writes them with ``LogStore.append``: one atomic script call per batch of at
most ``max_batch`` entries, at most every ``flush_every_s`` unless a full batch is
waiting. A batch that failed is retried as it was, under the same batch id, so one
that landed but whose reply was lost is not written twice. When Redis stays away long
enough to fill the buffer, the oldest entries are dropped and counted, and the count is
reported once (a warning here and an entry in the stream) when writing works again.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import RedisError

from ..aio import reraise_if_cancelling
from ..store.logs import LEVELS, MAX_FIELDS_BYTES, MAX_MESSAGE_CHARS, Doc, LogStore, level_name
from ..store.logs import validate as validate_entry
from ..timeutil import now_ms

if TYPE_CHECKING:
    from .runtime import Agent

log = logging.getLogger("ezdash.agent.logs")

LogWriter = Callable[[list[Doc], str], Awaitable[None]]
"""Writes one batch under its batch id (written once however often it is sent):
how a recorder reaches somewhere other than Redis (``HttpTransport.write_logs``)."""

DEDUPE_TTL_MS = 600_000
"""How long Redis remembers a batch id. Only a retry of an unanswered batch needs it,
and retries happen within the outage that caused them; a day (the HTTP ingest's
window) would keep one key per batch per agent, twice a second, for a day."""

MAX_BACKOFF_S = 5.0
"""Longest pause between attempts while Redis refuses, so a long outage costs a
failed call every few seconds, not a tight loop, and recovery is noticed quickly."""


@dataclass(frozen=True, slots=True)
class Scope:
    """Who is logging in the current asyncio context: the runtime sets it around its
    loops (agent-level) and around each handler (with the task id), and
    ``LogHandler`` reads it, so ``logging`` calls need no extra arguments."""

    recorder: LogRecorder
    agent_id: str
    task_id: str | None = None


current_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "ezdash_log_scope", default=None
)


def level_of(level: str | int) -> str:
    """Callers speak both vocabularies (``"warning"`` in ``ctx.log``, ``record.levelno``
    from ``logging``), the stream only knows ``store.logs.LEVELS``; a custom logging
    level rounds down, so it is never reported as more severe than it is."""
    if isinstance(level, int) and not isinstance(level, bool):
        for threshold, name in (
            (logging.CRITICAL, "critical"),
            (logging.ERROR, "error"),
            (logging.WARNING, "warning"),
            (logging.INFO, "info"),
        ):
            if level >= threshold:
                return name
        return "debug"
    named = level_name(level)
    if named is None:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    return named


def _jsonable(fields: dict[str, Any]) -> dict[str, Any]:
    """Fields as JSON, never an exception: a log call must not fail a task because a
    value is not serialisable (it becomes its ``str``) or the fields are too big (they
    are replaced by a note saying so, so the line is kept and the loss is visible)."""
    try:
        data = orjson.dumps(fields, default=str, option=orjson.OPT_NON_STR_KEYS)
    except (orjson.JSONEncodeError, TypeError) as e:
        return {"fields_error": f"not serialisable: {e}"[:500]}
    if len(data) > MAX_FIELDS_BYTES:
        return {"fields_truncated": True, "fields_bytes": len(data)}
    value = orjson.loads(data)
    return value if isinstance(value, dict) else {}


def make_entry(
    agent_id: str,
    level: str | int,
    message: str,
    *,
    task_id: str | None = None,
    fields: dict[str, Any] | None = None,
    ts_ms: int | None = None,
) -> Doc:
    """The stored document, built by the same ``validate`` as the HTTP ingest so both
    paths write identical entries. A bad level or an empty message raises at once, in
    the caller (a programming error); an over-long message is cut rather than refused,
    because tracebacks and model output are long and still worth keeping."""
    name = level_of(level)
    text = str(message)
    if not text:
        raise ValueError("a log message cannot be empty")
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1] + "…"
    now = now_ms()
    raw: dict[str, Any] = {
        "ts": now if ts_ms is None else min(ts_ms, now),
        "agent_id": agent_id,
        "level": name,
        "message": text,
    }
    if task_id is not None:
        raw["task_id"] = task_id
    if fields:
        raw["fields"] = _jsonable(fields)
    doc, errors = validate_entry(raw, now)
    if doc is None:
        raise ValueError(
            "invalid log entry: " + "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        )
    return doc


async def _write_to_redis(store: LogStore, docs: list[Doc], batch_id: str) -> None:
    sec, usec = await store.redis.time()
    await store.append(
        docs,
        now_ms=int(sec) * 1000 + int(usec) // 1000,
        batch_id=batch_id,
        fingerprint=str(len(docs)),
        dedupe_ttl_ms=DEDUPE_TTL_MS,
    )


class LogRecorder:
    """One per agent: a log call costs an append to a deque, and Redis sees a couple of
    script calls a second whatever the rate of lines (see the module docstring)."""

    def __init__(
        self,
        store: LogStore | LogWriter,
        agent_id: str,
        *,
        flush_every_s: float = 0.5,
        max_batch: int = 200,
        max_buffer: int = 10_000,
    ) -> None:
        if max_batch < 1 or max_buffer < max_batch:
            raise ValueError("need 1 <= max_batch <= max_buffer")
        self._write: LogWriter = (
            functools.partial(_write_to_redis, store) if isinstance(store, LogStore) else store
        )
        self.agent_id = agent_id
        self.flush_every = flush_every_s
        self.max_batch = max_batch
        self.max_buffer = max_buffer
        self._buffer: deque[Doc] = deque()
        self._inflight: tuple[str, list[Doc]] | None = None
        self._wake = asyncio.Event()  # something is waiting to be written
        self._full = asyncio.Event()  # a whole batch is waiting: do not wait for the tick
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False  # the flusher is being stopped: do not start another
        self._closed = False  # no more entries are taken
        self._unreported = 0
        self.dropped = 0
        """Entries lost because the buffer was full (Redis away for long)."""
        self.written = 0
        self.batches = 0
        """Batches written: one ``logs_append`` call each."""
        self.failures = 0
        """Failed write attempts since the last success."""

    @property
    def pending(self) -> int:
        """Entries not yet written."""
        return len(self._buffer) + (len(self._inflight[1]) if self._inflight else 0)

    def log(
        self,
        level: str | int,
        message: str,
        *,
        task_id: str | None = None,
        fields: dict[str, Any] | None = None,
        ts_ms: int | None = None,
    ) -> None:
        self.add(
            make_entry(self.agent_id, level, message, task_id=task_id, fields=fields, ts_ms=ts_ms)
        )

    def add(self, doc: Doc) -> None:
        """Queue a validated entry; never blocks. Safe from any thread: a call from
        outside the recorder's event loop is handed to it (``asyncio.to_thread`` in a
        handler, or a library's own threads, log too)."""
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self._loop is None and running is not None:
            self._loop = running
        if running is not None and running is self._loop:
            self._add(doc)
        elif self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._add, doc)
            except RuntimeError:  # the loop is closed: the agent is gone
                self.dropped += 1
        else:
            self._add(doc)  # no loop yet (set-up code): the first flush takes it

    def _add(self, doc: Doc) -> None:
        if self._closed:
            self.dropped += 1
            return
        if len(self._buffer) >= self.max_buffer:
            self._buffer.popleft()  # the newest lines say most about what is going on now
            self.dropped += 1
            self._unreported += 1
        self._buffer.append(doc)
        self._wake.set()
        if len(self._buffer) >= self.max_batch:
            self._full.set()
        if (
            self._loop is not None
            and not self._stopping
            and (self._task is None or self._task.done())
        ):
            # An empty context: the flusher's own warnings must never be captured
            # as entries (that would feed a Redis outage with more writes).
            self._task = self._loop.create_task(
                self._run(), name=f"{self.agent_id}:logs", context=contextvars.Context()
            )

    async def _run(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            if len(self._buffer) < self.max_batch and self._inflight is None:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                # cancellation that arrives as the event fires, and the flusher would
                # then outlive close().
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_every):
                        await self._full.wait()
            if self._stopping:
                return
            try:
                await self.flush(everything=False)
            except (RedisError, OSError) as e:
                reraise_if_cancelling(e)
                self.failures += 1
                if self.failures == 1:
                    log.warning(
                        "%s: log entries not written yet (%s); %d waiting, will retry",
                        self.agent_id,
                        e,
                        self.pending,
                    )
                await asyncio.sleep(min(self.flush_every * 2**self.failures, MAX_BACKOFF_S))
            except Exception:
                # Not Redis being away (that is retried) but a batch it will never take:
                # retrying it would block every later entry, so it is dropped.
                lost = len(self._inflight[1]) if self._inflight else 0
                self._inflight = None
                self.dropped += lost
                log.exception("%s: %d log entries could not be written", self.agent_id, lost)
                await asyncio.sleep(self.flush_every)

    async def flush(self, *, everything: bool = True) -> None:
        """Write what is buffered, in batches, oldest first; raises if Redis does.

        The background flusher writes what was waiting when it began (``everything``
        False), so lines logged meanwhile wait for the next tick and fill a batch
        instead of trickling out one call each; a final flush writes it all."""
        async with self._lock:
            budget = len(self._buffer)
            while self._inflight is not None or (self._buffer and (everything or budget > 0)):
                if self._inflight is None:
                    n = min(len(self._buffer), self.max_batch)
                    budget -= n
                    self._inflight = (uuid.uuid4().hex, [self._buffer.popleft() for _ in range(n)])
                batch_id, docs = self._inflight
                await self._write(docs, batch_id)
                self._inflight = None
                self.written += len(docs)
                self.batches += 1
                self.failures = 0
            if len(self._buffer) < self.max_batch:
                self._full.clear()
            if not self._buffer:
                self._wake.clear()
            if self._unreported:
                lost, self._unreported = self._unreported, 0
                log.warning(
                    "%s: %d log entries dropped while Redis was unreachable", self.agent_id, lost
                )
                if not self._closed:
                    self.log(
                        "warning",
                        f"{lost} log entries dropped: Redis was unreachable and the buffer "
                        f"({self.max_buffer} entries) was full",
                        fields={"dropped": lost},
                    )

    async def _stop_flusher(self) -> None:
        """Cancel the flusher and make sure it is gone: a cancellation can still be
        lost inside a Redis call on 3.11 (``aio.reraise_if_cancelling``), so the
        flusher is also told by flag and woken, and cancelled again until it ends."""
        self._stopping = True
        task, self._task = self._task, None
        if task is None:
            return
        self._wake.set()
        self._full.set()
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=1.0)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: log flusher failed", self.agent_id, exc_info=task.exception())

    async def close(self) -> None:
        """Graceful stop: write everything still buffered (raises if Redis will not
        take it; the entries are then lost with the process)."""
        await self._stop_flusher()
        self._closed = True
        await self.flush()

    async def abandon(self) -> None:
        """Stop without writing, as a crashed process would."""
        self._closed = True
        await self._stop_flusher()
        self._buffer.clear()
        self._inflight = None


_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class LogHandler(logging.Handler):
    """Forwards ``logging`` records to an agent's log stream, with the task id when
    the record was made inside a task handler (``asyncio.to_thread`` included).

    Only records made in the agent's own context are taken: several agents in one
    process each attach a handler to the same logger and each gets its own lines, and
    code that is no agent's (a web server next to it) is left alone. Loggers under
    ``exclude`` are skipped: the runtime's own ``ezdash.*`` messages ("redis trouble")
    and the Redis client's are about Redis being away, so writing them to Redis would
    only add to the backlog; the runtime writes its lifecycle entries itself.

    The handler's level filters, but a record must first pass its logger's level:
    Python's root logger defaults to WARNING, so configure INFO on the loggers you want
    captured at INFO (``logging.basicConfig(level=logging.INFO)`` does it for all).
    """

    def __init__(
        self,
        agent: Agent,
        level: int | str = logging.INFO,
        *,
        exclude: Iterable[str] = ("ezdash", "redis"),
    ) -> None:
        super().__init__(level)
        if agent.log_recorder is None:
            raise ValueError("this agent does not record logs (AgentConfig.record_logs)")
        self.recorder = agent.log_recorder
        self.exclude = tuple(exclude)
        self._last: logging.LogRecord | None = None

    def _excluded(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in self.exclude)

    def emit(self, record: logging.LogRecord) -> None:
        scope = current_scope.get()
        if scope is None or scope.recorder is not self.recorder or self._excluded(record.name):
            return
        if record is self._last:
            return  # attached to a logger and to its ancestor: one entry, not two
        self._last = record
        try:
            fields: dict[str, Any] = {"logger": record.name}
            fields.update(
                (k, v)
                for k, v in record.__dict__.items()
                if k not in _STANDARD_ATTRS and not k.startswith("_")
            )
            if record.exc_info and record.exc_info[0] is not None:
                fields["exc_type"] = record.exc_info[0].__name__
            doc = make_entry(
                scope.agent_id,
                record.levelno,
                self.format(record) or "(empty message)",
                task_id=scope.task_id,
                fields=fields,
                ts_ms=int(record.created * 1000),
            )
        except Exception:
            self.handleError(record)
            return
        self.recorder.add(doc)
