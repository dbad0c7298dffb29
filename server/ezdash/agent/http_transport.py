"""The agent's operations over HTTP, through the server's agent gateway
(``/api/agent/v1``, docs in API.md): for agents anywhere, holding only an agent key.

Everything the Redis transport does has its HTTP counterpart: the heartbeat carries
the leases the agent holds (``tasks``) and answers which were lost and which of its
commands are not yet completed, so commands arrive with heartbeats (acknowledged,
then completed or failed, each once); a take is the gateway's long poll; usage and
log batches go to the agent's own ingest endpoints under an ``Idempotency-Key`` per
batch, so a batch resent after a lost answer counts once.

Two differences are the protocol's:

- a forced stop cannot give running tasks back (there is no abandon endpoint): the
  agent stops renewing their leases and exits, and the server's maintenance
  reclaims them after the visibility timeout;
- task outcomes are counted in the rollups by the server, when the finish lands
  (``record_task`` writes nothing here, so nothing is counted twice).

Retrying: network errors, 5xx and 429 (honouring ``Retry-After``) are retried with
exponential back-off and full jitter, a bounded number of times; then the call
raises ``GatewayUnavailable`` (an ``OSError``, the transport convention for "try
again later") and the runtime's own loops carry on as through a Redis outage.  A
409 is an answer (the lease was lost, the command moved on); 404 on a heartbeat
means the server forgot the agent (its Redis was wiped): it registers again.  Any
other 4xx is a bug or a refusal: logged and raised as ``GatewayRefused``, never
retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import orjson

from .. import __version__
from ..aio import reraise_if_cancelling
from ..metrics.events import UsageEvent
from ..metrics.pricing import PriceTable
from ..store.logs import Doc
from ..store.tasks import Delivery
from .config import AgentConfig
from .logs import LogRecorder
from .transport import Refused

if TYPE_CHECKING:
    from .control import CommandInbox

log = logging.getLogger("ezdash.agent")

V1 = "/api/agent/v1"
BEAT_STATUSES = {"idle", "busy", "error", "restarting", "stopping", "stopped"}
MAX_WAIT_S = 30.0  # the gateway's longest long poll


class GatewayRefused(Refused):
    """A 4xx other than 409 (or 404 where it means something): a wrong key, a binding
    that does not allow this agent or queue, a malformed body.  Retrying cannot help."""

    def __init__(self, status: int, method: str, path: str, detail: str) -> None:
        super().__init__(f"{method} {path}: {status} {detail}")
        self.status = status
        self.detail = detail


class GatewayUnavailable(ConnectionError):
    """The gateway did not answer usefully (network, 5xx, 429) after the retries."""


@dataclass(frozen=True)
class Retry:
    """Exponential back-off with full jitter (sleep uniform in [0, min(cap, base·2ⁿ)]),
    at most ``attempts`` tries per call; ``Retry-After`` is honoured up to ``cap``."""

    attempts: int = 5
    base_s: float = 0.2
    cap_s: float = 5.0

    def pause(self, n: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cap_s)
        return random.uniform(0, min(self.cap_s, self.base_s * 2**n))


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None  # an HTTP date: fall back to the back-off


def _decoded(body: bytes) -> Any:
    """A JSON answer, or (an error page of a proxy) its text as a problem's detail."""
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return {"detail": body[:200].decode(errors="replace")}


def _detail(doc: Any) -> str:
    return str(doc.get("detail") or doc.get("title") or "") if isinstance(doc, dict) else ""


Attempt = tuple[int, Any, float | None, str]
"""One try of a call: status (599: no answer), decoded body, Retry-After, why not."""


class HttpTransport:
    name = "http"
    can_requeue = False

    def __init__(
        self, agent_id: str, config: AgentConfig, *, url: str, key: str, retry: Retry | None = None
    ) -> None:
        self.agent_id = agent_id
        self.config = config
        self.base = url.rstrip("/")
        self.retry = retry or Retry()
        self._auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self._session: aiohttp.ClientSession | None = None  # made in the loop, on first call
        self._me = f"{V1}/agents/{quote(agent_id, safe='')}"
        self._tokens: dict[str, str] = {}  # task id -> lease token, while it runs
        self._registered: tuple[Any, ...] | None = None  # what the last PUT said
        self._commands: list[dict[str, Any]] = []
        self._commands_seen = asyncio.Event()
        self._socket = GatewaySocket(self) if config.gateway_socket else None

    # -- calls ----------------------------------------------------------------------
    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        answers: tuple[int, ...] = (),
        headers: dict[str, str] | None = None,
        timeout_s: float = 30.0,
        op: str = "",
        fields: dict[str, Any] | None = None,
    ) -> tuple[int, Any]:
        """One gateway call, retried through network trouble, 5xx and 429: the status
        and the decoded body of a 2xx or of a status in ``answers``.  With the socket
        on, an operation it carries (``op``, the body plus ``fields``) goes over it,
        with the same answers and the same retrying."""
        if op and self._socket is not None:
            sock = self._socket
            message = {**(body or {}), **(fields or {})}

            async def attempt() -> Attempt:
                return await sock.attempt(op, message, timeout_s)

            return await self._retrying(method, path, answers, attempt)
        session = self._client()
        payload = orjson.dumps(body) if body is not None else b"{}"
        hdrs = {**self._auth, **(headers or {})}
        timeout = aiohttp.ClientTimeout(total=timeout_s)

        async def request() -> Attempt:
            try:
                async with session.request(
                    method, self.base + path, data=payload, headers=hdrs, timeout=timeout
                ) as resp:
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
                    return resp.status, _decoded(await resp.read()), retry_after, ""
            except (OSError, aiohttp.ClientError, TimeoutError) as e:  # no answer at all
                reraise_if_cancelling(e)
                return 599, None, None, f"{type(e).__name__}: {e}"

        return await self._retrying(method, path, answers, request)

    async def _retrying(
        self,
        method: str,
        path: str,
        answers: tuple[int, ...],
        attempt: Callable[[], Awaitable[Attempt]],
    ) -> tuple[int, Any]:
        why = ""
        for n in range(self.retry.attempts):
            code, doc, retry_after, why = await attempt()
            if 200 <= code < 300 or code in answers:
                return code, doc
            trouble = code == 599 or code >= 500 or code == 429
            if not trouble:
                detail = _detail(doc)
                log.error("%s: %s %s refused: %d %s", self.agent_id, method, path, code, detail)
                raise GatewayRefused(code, method, path, detail)
            if code != 599:
                why = f"{code} {_detail(doc)}"
            if n + 1 < self.retry.attempts:
                pause = self.retry.pause(n, retry_after)
                log.debug("%s: %s %s: %s; retry in %.2fs", self.agent_id, method, path, why, pause)
                await asyncio.sleep(pause)
        raise GatewayUnavailable(f"{method} {path}: {why}")

    def pushed(self, command: dict[str, Any]) -> None:
        """A command the socket pushed: obeyed as one a heartbeat answered with."""
        if all(c.get("id") != command.get("id") for c in self._commands):
            self._commands = [*self._commands, command]
        self._commands_seen.set()

    # -- the agent ------------------------------------------------------------------
    async def now_ms(self) -> int:
        return int(time.time() * 1000)  # the gateway stamps what it stores itself

    async def register(self, doc: dict[str, Any]) -> None:
        """PUT the document when what it registers changed (or the server forgot it),
        then a heartbeat carries its status and current task."""
        body = {
            "name": doc["name"],
            "kind": doc["kind"],
            "model": doc["model"],
            "host": socket.gethostname()[:255],
            "version": __version__,
            "queues": doc["queues"],
            "tags": doc["tags"],
            "concurrency": doc["concurrency"],
        }  # restarts: the server counts them, as each completed restart command
        if self._registered != tuple(orjson.dumps(body)):
            await self.call("PUT", self._me, body)
            self._registered = tuple(orjson.dumps(body))
        await self._beat(doc, [])

    async def heartbeat(self, doc: dict[str, Any], held: list[Delivery]) -> list[str]:
        return await self._beat(doc, held)

    async def _beat(self, doc: dict[str, Any], held: list[Delivery]) -> list[str]:
        body = {
            "status": doc["status"] if doc["status"] in BEAT_STATUSES else None,
            "current_task": doc["current_task"],
            "tasks": [
                {"task_id": d.id, "token": self._tokens[d.id]} for d in held if d.id in self._tokens
            ],
        }
        beat = f"{self._me}/heartbeat"
        code, answer = await self.call("POST", beat, body, answers=(404,), op="heartbeat")
        if code == 404:  # the server forgot us (a wiped Redis): register again
            log.info("%s: not registered at the gateway; registering again", self.agent_id)
            self._registered = None
            await self.register(doc)
            code, answer = await self.call("POST", beat, body, op="heartbeat")
        self._commands = list(answer.get("commands") or [])
        self._commands_seen.set()
        return [str(t) for t in answer.get("lost") or []]

    async def maintain(self, queues: list[str], visibility_timeout: float) -> None:
        return None  # reclaiming and promoting are the server's maintenance

    # -- tasks ----------------------------------------------------------------------
    async def take(self, slot: int, queues: list[str]) -> Delivery | None:
        wait = min(self.config.block_s, MAX_WAIT_S)
        code, answer = await self.call(
            "POST",
            f"{self._me}/take",
            {"queues": queues, "wait_s": wait},
            timeout_s=wait + 30.0,
            op="take",
        )
        if code == 204 or not answer:
            return None
        t = answer["task"]
        self._tokens[t["id"]] = t["lease"]["token"]
        return Delivery(
            id=t["id"],
            type=t["type"],
            queue=t["queue"],
            priority=int(t.get("priority") or 0),
            payload=t.get("payload"),
            attempt=int(t["attempt"]),
            max_attempts=int(t["max_attempts"]),
            entry="",
        )

    async def wait(self, slot: int, block_s: float) -> None:
        return None  # the long poll of ``take`` did the waiting

    async def finish(
        self,
        d: Delivery,
        *,
        result: Any,
        error: tuple[str, str] | None,
        retryable: bool,
        backoff_s: float,
    ) -> tuple[str, str]:
        """Finish with the lease token; 409 means another holds the task now.  The
        gateway applies its own retry back-off (``backoff_s`` is the Redis path's)."""
        body: dict[str, Any] = {"token": self._tokens.get(d.id, "-"), "status": "succeeded"}
        if error is None:
            body["result"] = result
        else:
            body["status"] = "failed"
            body["error"] = {
                "type": error[0][:200] or "Error",
                "message": error[1][:2000],
                "permanent": not retryable,
            }
        code, answer = await self.call(
            "POST",
            f"{V1}/tasks/{d.id}/finish",
            body,
            answers=(409,),
            op="finish",
            fields={"task_id": d.id},
        )
        self._tokens.pop(d.id, None)
        if code == 409:  # LeaseLost
            return "stale", str((answer or {}).get("task_status") or "reclaimed")
        return "ok", str(answer["task"]["status"])

    async def abandon(self, d: Delivery) -> str:
        """Nothing to call: the lease is no longer renewed, and the server reclaims the
        task after the visibility timeout."""
        self._tokens.pop(d.id, None)
        return "left"

    # -- commands -------------------------------------------------------------------
    async def update_command(self, cid: str, status: str, error: str = "") -> str:
        body: dict[str, Any] = {"status": status, "error": error[:2000] or None}
        code, answer = await self.call(
            "POST",
            f"{V1}/commands/{quote(cid, safe='')}",
            body,
            answers=(404, 409),
            op="command",
            fields={"command_id": cid},
        )
        if code == 404:
            return "refused:unknown"
        if code == 409:  # CommandConflict
            return "refused:" + str((answer or {}).get("command_status", ""))
        return str(answer["command"]["status"])

    async def feed_commands(self, inbox: CommandInbox) -> None:
        """Obey the commands each heartbeat answered with (the newest answer only: an
        older one can only repeat it)."""
        while True:
            await self._commands_seen.wait()
            self._commands_seen.clear()
            try:
                await inbox.take_up(self._commands)
            except OSError as e:
                reraise_if_cancelling(e)
                log.warning("%s: commands: gateway trouble (%s); retrying", self.agent_id, e)
                await asyncio.sleep(1.0)
                self._commands_seen.set()

    # -- usage and logs -------------------------------------------------------------
    def usage_recorder(self, prices: PriceTable) -> HttpUsageRecorder:
        return HttpUsageRecorder(self, flush_every_s=self.config.usage_flush_s)

    def log_recorder(self) -> LogRecorder:
        cfg = self.config
        return LogRecorder(
            self.write_logs,
            self.agent_id,
            flush_every_s=cfg.log_flush_s,
            max_batch=cfg.log_batch,
            max_buffer=cfg.log_buffer,
        )

    async def write_logs(self, docs: list[Doc], batch_id: str) -> None:
        entries = [{k: v for k, v in d.items() if k != "agent_id"} for d in docs]
        await self._batch("logs", entries, batch_id)

    async def write_usage(self, events: list[UsageEvent], batch_id: str) -> None:
        items = [
            {**e.model_dump(mode="json", exclude={"agent_id"}), "ts": e.ts / 1000} for e in events
        ]  # ts in unix seconds, as the ingest takes it
        await self._batch("usage", items, batch_id)

    async def _batch(self, what: str, items: list[Any], batch_id: str) -> None:
        name = "entries" if what == "logs" else "events"
        await self.call(
            "POST", f"{self._me}/{what}", {name: items}, headers={"Idempotency-Key": batch_id}
        )

    def _client(self) -> aiohttp.ClientSession:
        """One session per agent: its connections are kept alive between calls (a
        connection per call would cost the server an accept and a handshake each,
        and the client a socket in TIME_WAIT).  Idle connections are closed before
        the server's own idle timeout, so a reused one is rarely found closed."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.config.concurrency + 8, keepalive_timeout=10.0
                ),
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        if self._socket is not None:
            await self._socket.close()
        if self._session is not None:
            await self._session.close()
            self._session = None


class GatewaySocket:
    """The gateway's WebSocket (``GET .../agents/{id}/ws``) for an agent that keeps
    one open (``AgentConfig.gateway_socket``): heartbeats, takes, finishes and
    command reports as messages, matched to their replies by id, and the commands
    the server pushes.  Connected on first use and again after it closed (a server
    restart): a call that met a closed socket is retried as a network error."""

    def __init__(self, transport: HttpTransport) -> None:
        self.transport = transport
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._waiting: dict[int, asyncio.Future[tuple[int, Any]]] = {}
        self._next = 0

    async def attempt(self, op: str, message: dict[str, Any], timeout_s: float) -> Attempt:
        try:
            status, data = await self.op(op, message, timeout_s)
        except aiohttp.WSServerHandshakeError as e:  # the upgrade was answered: its status
            return e.status, {"detail": e.message}, None, ""
        except (OSError, aiohttp.ClientError, TimeoutError) as e:
            reraise_if_cancelling(e)
            return 599, None, None, f"{type(e).__name__}: {e}"
        return status, data, None, ""

    async def op(self, op: str, message: dict[str, Any], timeout_s: float) -> tuple[int, Any]:
        ws = await self._connected()
        self._next += 1
        ident = self._next
        reply: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = reply
        try:
            await ws.send_str(orjson.dumps({**message, "op": op, "id": ident}).decode())
            return await asyncio.wait_for(reply, timeout_s)
        finally:
            self._waiting.pop(ident, None)

    async def _connected(self) -> aiohttp.ClientWebSocketResponse:
        async with self._lock:
            if self._ws is None or self._ws.closed:
                t = self.transport
                ws = await t._client().ws_connect(f"{t.base}{t._me}/ws", headers=t._auth)
                hello = await ws.receive_json(timeout=10.0)
                if hello.get("type") != "hello":
                    await ws.close()
                    raise ConnectionError(f"the gateway socket said {hello!r} first")
                self._ws = ws
                self._reader = asyncio.ensure_future(self._read(ws))
            return self._ws

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                doc = orjson.loads(msg.data)
                if doc.get("type") == "reply":
                    reply = self._waiting.get(doc.get("id"))
                    if reply is not None and not reply.done():
                        reply.set_result((int(doc["status"]), doc.get("data")))
                elif doc.get("type") == "command":
                    self.transport.pushed(doc["data"])
        finally:
            for reply in self._waiting.values():
                if not reply.done():
                    reply.set_exception(ConnectionError("the gateway socket closed"))
            if self._ws is ws:
                self._ws = None

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


class HttpUsageRecorder:
    """Usage events batched and posted to the gateway every ``flush_every_s``: the
    server prices and rolls them up.  A batch that failed is resent as it was, under
    the same id; at most ``max_pending`` batches wait through an outage."""

    def __init__(
        self,
        transport: HttpTransport,
        *,
        flush_every_s: float = 1.0,
        max_batch: int = 500,
        max_pending: int = 600,
    ) -> None:
        self.transport = transport
        self.flush_every = flush_every_s
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._events: list[UsageEvent] = []
        self._pending: list[tuple[str, list[UsageEvent]]] = []
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def record(self, event: UsageEvent, *, kind: str = "", queue: str = "") -> None:
        self._events.append(event)  # kind and queue: the server looks them up
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._ticker())

    def record_task(
        self, ts_ms: int, *, agent: str, kind: str, queue: str, ok: bool, duration_ms: float
    ) -> None:
        return None  # the server counts it when the finish lands (module docstring)

    async def _ticker(self) -> None:
        while self._events or self._pending:
            await asyncio.sleep(self.flush_every)
            try:
                await self.flush()
            except OSError as e:
                reraise_if_cancelling(e)
                log.warning("usage flush failed (%s); will retry", e)
            except GatewayRefused:
                self.dropped += sum(len(b) for _, b in self._pending[:1])
                self._pending = self._pending[1:]  # never accepted: resending cannot help

    async def flush(self) -> None:
        async with self._lock:
            while self._events:
                chunk, self._events = self._events[: self.max_batch], self._events[self.max_batch :]
                self._pending.append((uuid.uuid4().hex, chunk))
            if len(self._pending) > self.max_pending:
                lost = self._pending[: -self.max_pending]
                self._pending = self._pending[-self.max_pending :]
                self.dropped += sum(len(b) for _, b in lost)
            while self._pending:
                batch_id, events = self._pending[0]
                await self.transport.write_usage(events, batch_id)
                self._pending.pop(0)

    async def abandon(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await self._task

    async def close(self) -> None:
        await self.abandon()
        await self.flush()
