"""The agent gateway over one WebSocket: ``GET /api/agent/v1/agents/{id}/ws``.

The same protocol as the gateway's HTTP endpoints, on one connection: the agent
sends ``heartbeat``, ``take``, ``lease``, ``finish`` and ``command`` messages (each
the HTTP body plus ``op``, a correlation ``id`` and the task or command id), and is
answered ``{"type": "reply", "id", "status", "data"}`` with the status and document
the HTTP call would have answered (204 with ``data`` null for a take that found
nothing; a problem document for 4xx and 5xx).  Its commands are pushed as they are
created (``{"type": "command", "data"}``), woken by the same one reader per instance
that wakes long polls, so an idle agent costs no Redis connection.

Why a socket beside HTTP: a request costs this server its parsing, routing,
credential check and answer headers once more for every operation.  On the 2-core
machines of docs/benchmarks.md a task (a take and a finish) costs the server about
1.1 ms as two requests and 0.7 ms as two messages: 0.39x and 0.56x of what agents
on Redis do in the same run.

Every operation goes through ``Gate`` (the binding checks and the task and command
scripts the HTTP endpoints use), and every message is charged to the key's
``agent`` budget by the same authorize script as a request, which also re-checks
the key: a revoked key's socket is closed (1008) at its next message.  Bad
messages are answered (400/422 naming the field); the connection stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from ..aio import reraise_if_cancelling
from ..store.leases import Lease
from .asyncapi import Closed
from .base import require_upgrade, validated
from .errors import Problem, invalid, problem_for
from .gateway import PREFIX, Gate, GatewayHandler, settings_doc
from .models import (
    AgentHeartbeat,
    Command,
    CommandEnvelope,
    CommandReport,
    HeartbeatAnswer,
    LeaseAnswer,
    LeaseRenew,
    TakeRequest,
    TaskEnvelope,
    TaskFinish,
    TaskTaken,
)
from .models import (
    Problem as ProblemDoc,
)
from .opdocs import Op, problem
from .params import AGENT_PATH

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 64
"""Operations one socket may have running at once (takes wait): past it, 429."""


class Correlated(BaseModel):
    id: int | str | None = Field(
        None, description="Echoed in the reply, so replies can be matched to requests"
    )


class WsHeartbeat(AgentHeartbeat, Correlated):
    op: Literal["heartbeat"]


class WsTake(TakeRequest, Correlated):
    op: Literal["take"]


class WsLease(LeaseRenew, Correlated):
    op: Literal["lease"]
    task_id: str = Field(min_length=1, max_length=200)


class WsFinish(TaskFinish, Correlated):
    op: Literal["finish"]
    task_id: str = Field(min_length=1, max_length=200)


class WsCommandReport(CommandReport, Correlated):
    op: Literal["command"]
    command_id: str = Field(min_length=1, max_length=200)


OPS: dict[str, tuple[type[BaseModel], str]] = {
    "heartbeat": (WsHeartbeat, "Heartbeat (as POST .../heartbeat)"),
    "take": (WsTake, "Take the next task, waiting up to wait_s (as POST .../take)"),
    "lease": (WsLease, "Renew a lease (as POST /api/agent/v1/tasks/{task_id}/lease)"),
    "finish": (WsFinish, "Finish a task (as POST /api/agent/v1/tasks/{task_id}/finish)"),
    "command": (WsCommandReport, "Report on a command (as POST .../commands/{command_id})"),
}


class GatewaySettings(Closed):
    heartbeat_interval_s: float
    visibility_timeout_s: float


class GatewayHelloData(Closed):
    agent_id: str
    settings: GatewaySettings


class GatewayHello(Closed):
    type: Literal["hello"]
    data: GatewayHelloData


class GatewayReply(Closed):
    type: Literal["reply"]
    id: int | str | None
    status: int = Field(description="What the HTTP call would have answered")
    data: (
        HeartbeatAnswer
        | TaskTaken
        | LeaseAnswer
        | TaskEnvelope
        | CommandEnvelope
        | ProblemDoc
        | None
    ) = Field(description="Its answer: null for 204, a problem document for 4xx and 5xx")


class GatewayCommand(Closed):
    type: Literal["command"]
    data: Command


SENT: dict[str, tuple[type[BaseModel], str]] = {
    "hello": (GatewayHello, "First message: the agent and the gateway's settings"),
    "reply": (GatewayReply, "The answer to one operation"),
    "command": (GatewayCommand, "A command for this agent, pushed as it is created"),
}


def _text(message: dict[str, Any]) -> str:
    return orjson.dumps(message).decode()


class AgentSocketHandler(GatewayHandler, WebSocketHandler):
    """One agent's gateway connection (see the module docstring)."""

    scopes = {"GET": "agent"}
    path = (AGENT_PATH,)
    tag = "gateway"
    docs = {
        "GET": Op(
            "WebSocket (upgrade) for this agent: send heartbeat, take, lease, finish or "
            "command messages, receive a reply to each and this agent's commands as they "
            "are created (AsyncAPI: /api/asyncapi.json, channel agentGateway)",
            {
                "101": {"description": "Switching Protocols"},
                "403": problem("Not an id of this key"),
                "426": problem("Not a WebSocket upgrade request"),
            },
        )
    }

    def initialize(self) -> None:
        super().initialize()
        self._gone = asyncio.Event()
        self._ops: set[asyncio.Task[None]] = set()
        self._pusher: asyncio.Task[None] | None = None
        self.agent_id = ""

    async def get(self, *args: str, **kwargs: str) -> None:
        require_upgrade(self)
        await WebSocketHandler.get(self, *args, **kwargs)

    def check_origin(self, origin: str) -> bool:
        """Agents are not browsers: a page on another origin may not use a key here."""
        allowed = self.services.settings.cors_origins
        return "*" in allowed or origin in allowed or super().check_origin(origin)

    def get_compression_options(self) -> None:
        return None

    async def open(self, *args: str, **kwargs: str) -> None:
        self.agent_id = args[0]
        self.services.agent_sockets.add(self)
        hello = {
            "type": "hello",
            "data": {"agent_id": self.agent_id, "settings": settings_doc(self.services)},
        }
        await self._send(hello)
        self._pusher = asyncio.ensure_future(self._push_commands())

    def on_close(self) -> None:
        self._gone.set()
        self.services.agent_sockets.discard(self)
        if self._pusher is not None:
            self._pusher.cancel()

    def on_message(self, message: str | bytes) -> None:
        busy = len(self._ops) >= MAX_IN_FLIGHT
        task = asyncio.ensure_future(self._busy(message) if busy else self._handle(message))
        self._ops.add(task)
        task.add_done_callback(self._ops.discard)

    # -- one message ------------------------------------------------------------------
    async def _busy(self, message: str | bytes) -> None:
        ident = None
        with contextlib.suppress(Problem):
            ident = self._parse(message).get("id")
        busy = Problem(429, f"at most {MAX_IN_FLIGHT} operations at once", type="busy")
        await self._reply(ident, busy)

    async def _handle(self, message: str | bytes) -> None:
        ident: Any = None
        try:
            msg = self._parse(message)
            ident = msg.get("id")
            await self._charge()
            op = msg.get("op")
            if op not in OPS:
                raise invalid("op", f"one of {', '.join(OPS)}", 422)
            model = OPS[str(op)][0]
            body = validated(model, msg)
            answer = await self._run(op, body)
        except _Revoked:
            self.close(1008, "credentials refused")
            return
        except Exception as e:
            await self._reply(ident, e)
            return
        if answer is not _SENT:
            await self._reply(ident, answer)

    @staticmethod
    def _parse(message: str | bytes) -> dict[str, Any]:
        try:
            msg = orjson.loads(message)
        except orjson.JSONDecodeError as e:
            raise Problem(400, f"message is not valid JSON: {e}", type="malformed-json") from e
        if not isinstance(msg, dict):
            raise invalid("message", "must be a JSON object", 400)
        return msg

    async def _charge(self) -> None:
        """The key's ``agent`` budget, and the key still valid: the same one Redis call
        a request makes.  Over budget is a 429 reply; a refused key closes the socket."""
        try:
            principal = await self.authenticate("agent", budget="agent")
        except Problem as p:
            if p.status_code == 401:
                raise _Revoked() from p
            raise
        if principal.id != self.principal.id:
            raise _Revoked()

    async def _run(self, op: str, body: Any) -> Any:
        gate: Gate = self.gate
        me = self.agent_id
        if op == "heartbeat":
            return await gate.heartbeat(me, body)
        if op == "take":
            return await self._take(body)
        if op == "lease":
            return await gate.renew(body.task_id, body)
        if op == "finish":
            return await gate.finish(body.task_id, body)
        return await gate.report(body.command_id, body)

    async def _take(self, body: WsTake) -> Any:
        d = await self.gate.take(self.agent_id, body, self._gone)
        if d is None:
            return None if not self._gone.is_set() else _SENT
        lease, answer = self.gate.delivered(self.agent_id, d)
        if not await self._reply(body.id, answer):
            await self._give_back(lease)
        return _SENT

    async def _give_back(self, lease: Lease) -> None:
        """A task taken for a socket that closed: back to its queue at once."""
        with contextlib.suppress(Exception):
            await self.services.tasks.abandon(lease, self.agent_id)

    async def _reply(self, ident: Any, answer: Any) -> bool:
        """Send the reply; False when the socket is gone."""
        if isinstance(answer, BaseException):
            p = answer if isinstance(answer, Problem) else problem_for(answer, 500)
            if not isinstance(answer, Problem) and p.status_code == 500:
                log.error("gateway socket %s: %r", self.agent_id, answer, exc_info=answer)
            message = {"type": "reply", "id": ident, "status": p.status_code, "data": p.body()}
        elif answer is None:
            message = {"type": "reply", "id": ident, "status": 204, "data": None}
        else:
            message = {"type": "reply", "id": ident, "status": 200, "data": answer}
        return await self._send(message)

    async def _send(self, message: dict[str, Any]) -> bool:
        try:
            await self.write_message(_text(message))
        except (WebSocketClosedError, StreamClosedError):
            return False
        return True

    # -- commands, pushed ---------------------------------------------------------------
    async def _push_commands(self) -> None:
        """Each command not yet completed, once per connection, as it is created: a
        wake-up on the agent's command stream (no connection held while idle)."""
        svc = self.services
        stream = svc.keys.agent_commands(self.agent_id)
        sent: set[str] = set()
        while not self._gone.is_set():
            try:
                newest = await svc.redis.xrevrange(stream, "+", "-", count=1)
                position = newest[0][0] if newest else "0-0"
                pending = await svc.commands.pending_for(self.agent_id)
                sent &= {cmd["id"] for cmd in pending}  # only what may still be pushed
                for cmd in pending:
                    if cmd["id"] not in sent:
                        sent.add(cmd["id"])
                        if not await self._send({"type": "command", "data": cmd}):
                            return
                await svc.waker.wait([(stream, str(position))], 30.0)
            except Exception as e:  # Redis trouble: heartbeat answers still carry them
                reraise_if_cancelling(e)
                log.warning("gateway socket %s: commands: %r; retrying", self.agent_id, e)
                await asyncio.sleep(1.0)


class _Revoked(Exception):
    """The socket's credentials no longer verify."""


_SENT: Any = object()
"""An operation that sent its own reply (a take that delivered, or a closed socket)."""

default_handlers = [(rf"{PREFIX}/agents/([^/]+)/ws", AgentSocketHandler)]
