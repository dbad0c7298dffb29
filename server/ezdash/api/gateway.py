"""The agent gateway (``/api/agent/v1``): agents on any host, in any language.

An agent holding an agent key (scope ``agent``, bound to an id glob and to queues)
registers, heartbeats, long-polls for tasks, renews and finishes its leases,
acknowledges its commands and reports usage and logs, all over HTTP, with no Redis
credentials.  Every state change runs the same Lua script as for an agent on Redis,
so delivery is the same: at least once, reclaimed after the visibility timeout,
fenced by attempt.

The binding is enforced in one place, ``GatewayHandler.prepare``, before any
handler runs: the agent id in the path must match the key's glob, and every queue
taken from, lease presented or command answered is checked against it there or in
the one helper each kind of id goes through (``held``, ``own_command``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from tornado.iostream import StreamClosedError

from ..security.apikeys import AgentBinding
from ..store.leases import Lease, lease_token, read_token
from ..store.tasks import Delivery
from ..timeutil import format_ms
from .base import APIHandler
from .errors import Problem, invalid, not_found
from .logs import IngestLogsHandler
from .metrics import IngestUsageHandler
from .models import (
    AgentHeartbeat,
    AgentRegister,
    CommandReport,
    GatewayLogEntry,
    GatewayUsageEvent,
    LeaseRenew,
    TakeRequest,
    TaskFinish,
)
from .opdocs import Body, Op, batch, ok, problem
from .params import AGENT_PATH, COMMAND_PATH, IDEMPOTENCY_KEY, TASK_PATH

PREFIX = "/api/agent/v1"
NOT_BOUND = "forbidden"


class Gate:
    """What an agent may do, for one principal: the binding checks and each operation
    of the protocol, shared by the HTTP endpoints and the WebSocket (one
    implementation of each state change, through the task and command scripts).

    ``binding`` None is an admin: any agent, any queue."""

    def __init__(self, services: Any, binding: AgentBinding | None) -> None:
        self.services = services
        self.binding = binding

    def check_agent(self, agent_id: str) -> None:
        if self.binding is not None and not self.binding.allows_id(agent_id):
            raise Problem(
                403,
                f"this key acts only as agents matching {self.binding.ids!r}, not {agent_id!r}",
                type=NOT_BOUND,
            )

    def check_queues(self, queues: list[str], field: str) -> None:
        for i, q in enumerate(queues):
            if self.binding is not None and not self.binding.allows_queue(q):
                raise Problem(
                    403,
                    f"this key may not take from queue {q!r}",
                    type=NOT_BOUND,
                    errors=[{"field": f"{field}.{i}", "message": "queue not granted"}],
                )

    def held(self, task_id: str, token: str) -> Lease:
        """The lease a token stands for, checked: signed here, for this task, by an agent
        this key may act as.  Whether it is still current the task scripts decide."""
        lease = read_token(self.services.secrets.key_secret, token)
        if lease is None or lease.id != task_id:
            raise invalid("token", "not a lease token of this task")
        self.check_agent(lease.agent_id)
        return lease

    # -- the operations (the agent id, where there is one, is checked by the caller) --
    async def heartbeat(self, agent_id: str, body: AgentHeartbeat) -> dict[str, Any]:
        svc = self.services
        if not await svc.scripts.run(
            "agent_heartbeat", [svc.keys.heartbeats], [svc.keys.base, agent_id]
        ):
            raise Problem(
                404, f"agent {agent_id!r} is not registered: register it again", type="not-found"
            )
        doc = await svc.agents.document(agent_id)
        if doc is not None and (
            (body.status is not None and doc.get("status") != body.status)
            or doc.get("current_task") != body.current_task
        ):
            doc["status"] = body.status or doc.get("status")
            doc["current_task"] = body.current_task
            await svc.agents.put(svc.scripts, doc, svc.settings.events_maxlen)
        lost: list[str] = []
        for tid in body.tasks:
            lease = self.held(tid.task_id, tid.token)
            if lease.agent_id != agent_id or not await svc.tasks.lease(lease, agent_id):
                lost.append(tid.task_id)
        return {"commands": await svc.commands.pending_for(agent_id), "lost": lost}

    async def take(self, agent_id: str, body: TakeRequest, gone: asyncio.Event) -> Delivery | None:
        """The next task, waiting up to ``wait_s`` for one without holding a Redis
        connection (one reader per instance wakes the waiters, ``store.wakeups``).
        Nothing is taken once ``gone`` is set (the client left)."""
        self.check_queues(body.queues, "queues")
        svc = self.services
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(body.wait_s, svc.settings.agent_max_wait)
        while not gone.is_set():
            got = await svc.tasks.take(agent_id, body.queues, snapshot=True)
            if isinstance(got, Delivery):
                return got
            if got and not await self._woken(got, deadline - loop.time(), gone):
                break
        return None

    async def _woken(
        self, positions: list[tuple[str, str]], timeout_s: float, gone: asyncio.Event
    ) -> bool:
        """A wake-up for these streams, unless the client goes first (then nothing is
        taken for it) or the time runs out."""
        wake = asyncio.ensure_future(self.services.waker.wait(positions, timeout_s))
        left = asyncio.ensure_future(gone.wait())
        try:
            await asyncio.wait((wake, left), return_when=asyncio.FIRST_COMPLETED)
        finally:
            left.cancel()
            if not wake.done():
                wake.cancel()
        return wake.done() and not wake.cancelled() and wake.result()

    def delivered(self, agent_id: str, d: Delivery) -> tuple[Lease, dict[str, Any]]:
        """The lease and the answer for a task taken: the task as the take script left
        it (no second read), its attempt and its signed lease token."""
        svc = self.services
        lease = Lease(agent_id, d.id, d.attempt, d.entry)
        snap = d.snapshot
        if snap is None:  # the take script always returns it
            raise RuntimeError("task_take returned no snapshot of the task")
        expires = snap.now_ms + int(svc.settings.visibility_timeout * 1000)
        lease_doc = {
            "token": lease_token(svc.secrets.key_secret, lease),
            "expires_at": format_ms(expires),
        }
        return lease, {"task": {**snap.doc, "attempt": d.attempt, "lease": lease_doc}}

    async def renew(self, task_id: str, body: LeaseRenew) -> dict[str, Any]:
        lease = self.held(task_id, body.token)
        svc = self.services
        held, status = await svc.tasks.renew(lease, lease.agent_id)
        if not held:
            raise lease_lost(task_id, status)
        now = await svc.redis_now_ms()
        return {"expires_at": format_ms(now + int(svc.settings.visibility_timeout * 1000))}

    async def finish(self, task_id: str, body: TaskFinish) -> dict[str, Any]:
        """Finish the attempt the token stands for; a final outcome is counted in the
        agent's task rollups (as an agent on Redis counts its own)."""
        lease = self.held(task_id, body.token)
        svc = self.services
        error = None
        if body.status == "failed":
            err = body.error
            error = (err.type, err.message) if err is not None else ("Error", "")
        outcome, status, snap = await svc.tasks.finish_answer(
            lease,
            lease.agent_id,
            result=body.result,
            error=error,
            retryable=not (body.error is not None and body.error.permanent),
            snapshot=True,
        )
        if outcome != "ok" or snap is None:
            raise lease_lost(task_id, status or "gone")
        if status in FINAL_OUTCOMES:
            started = snap.started_ms if snap.started_ms is not None else snap.now_ms
            svc.task_outcomes.record_task(
                snap.now_ms,
                agent=lease.agent_id,
                kind=await svc.agent_kinds.of(svc.agents, lease.agent_id),
                queue=str(snap.doc["queue"]),
                ok=status == "succeeded",
                duration_ms=float(max(0, snap.now_ms - started)),
            )
        return {"task": snap.doc}

    async def report(self, command_id: str, body: CommandReport) -> dict[str, Any]:
        """Acknowledge a command of an agent this key may act as, or say how it ended;
        a completed restart is counted in the agent's document."""
        svc = self.services
        cmd = await svc.commands.get(command_id)
        if cmd is None:
            raise not_found("command", command_id)
        self.check_agent(cmd["agent_id"])
        status = await svc.commands.update(
            command_id, body.status, agent_id=cmd["agent_id"], error=body.error or ""
        )
        if status != body.status:
            now = status.removeprefix("refused:")
            raise Problem(
                409,
                f"command {command_id} is {now}",
                type="conflict",
                members={"command_status": now},
            )
        if cmd.get("action") == "restart" and status == "completed":
            await self._count_restart(cmd["agent_id"])
        return {"command": await svc.commands.get(command_id)}

    async def _count_restart(self, agent_id: str) -> None:
        """The server writes an HTTP agent's document, so it counts its restarts (as the
        Redis runtime counts its own): a completed restart, started again now."""
        svc = self.services
        doc = await svc.agents.document(agent_id)
        if doc is not None:
            doc["restarts"] = int(doc.get("restarts") or 0) + 1
            doc["started_at"] = await svc.redis_now_ms()
            await svc.agents.put(svc.scripts, doc, svc.settings.events_maxlen)


FINAL_OUTCOMES = ("succeeded", "failed", "dead")
"""Statuses a finish can end a task in (not ``queued``: a retry is not an outcome)."""


class GatewayHandler(APIHandler):
    """Base of every gateway endpoint: scope ``agent`` and the key's binding.

    The binding is loaded once per key and process (it never changes) before any
    handler runs, and the path's agent id is checked against it there; ``gate`` then
    does the rest (queues, lease tokens, commands)."""

    gate: Gate
    audit_success = False  # register and command reports say otherwise

    async def prepare(self) -> None:
        await super().prepare()
        if self._finished or (self.request.method or "") == "OPTIONS":
            return
        await self.settle()  # a GET may still be checking its credential
        p = self.principal
        binding = None
        if "admin" not in p.scopes:
            if p.kind == "key":
                binding = await self.services.api_keys.binding(p.id.removeprefix("key:"))
            if binding is None:
                raise Problem(403, "the agent gateway needs an agent key", type=NOT_BOUND)
        self.gate = Gate(self.services, binding)
        names = [spec.name for spec in self.path]
        for name, value in zip(names, self.path_args, strict=False):
            if name == "agent_id":
                self.gate.check_agent(value)


def lease_lost(task_id: str, status: str) -> Problem:
    """409: the attempt is no longer the caller's; ``task_status`` says what became of
    the task (``running`` again under another attempt, ``queued``, ``cancelled``...)."""
    return Problem(
        409,
        f"the lease of {task_id} was lost (it is {status})",
        type="lease-lost",
        members={"task_status": status},
    )


def settings_doc(svc: Any) -> dict[str, float]:
    s = svc.settings
    return {
        "heartbeat_interval_s": s.heartbeat_interval,
        "visibility_timeout_s": s.visibility_timeout,
    }


class RegisterHandler(GatewayHandler):
    """Register or update an agent's document (the agent is its only writer)."""

    audit_success = True
    scopes = {"PUT": "agent"}
    path = (AGENT_PATH,)
    actions = {"PUT": "agent.register"}
    docs = {
        "PUT": Op(
            "Register or update this agent",
            {"200": ok("AgentRegistered"), "403": problem("Not an id or queue of this key")},
            body=Body(AgentRegister),
        )
    }

    async def put(self, agent_id: str) -> None:
        body = self.json_body(AgentRegister)
        self.gate.check_queues(body.queues, "queues")
        svc = self.services
        old = await svc.agents.document(agent_id)
        now = await svc.redis_now_ms()
        doc = {
            "id": agent_id,
            "name": body.name or agent_id,
            "kind": body.kind,
            "status": (old or {}).get("status", "idle") if old else "idle",
            "model": body.model,
            "host": body.host or self.client_ip,
            "pid": None,
            "version": body.version,
            "current_task": (old or {}).get("current_task"),
            "started_at": (old or {}).get("started_at") or now,
            "restarts": (old or {}).get("restarts", 0),  # counted by Gate._count_restart
            "tags": body.tags,
            "queues": body.queues,
            "concurrency": body.concurrency,
            "transport": "http",
        }
        if doc["status"] in ("stopped", "unresponsive"):
            doc["status"] = "idle"  # a registering agent is running again
        await svc.agents.put(svc.scripts, doc, svc.settings.events_maxlen)
        svc.agent_kinds.forget(agent_id)
        self.audit_target = agent_id
        self.write_json({"agent": await svc.agents.get(agent_id), "settings": settings_doc(svc)})


class HeartbeatHandler(GatewayHandler):
    scopes = {"POST": "agent"}
    path = (AGENT_PATH,)
    docs = {
        "POST": Op(
            "Heartbeat: renews the lease of the task it names; answers its pending commands",
            {"200": ok("HeartbeatAnswer"), "404": problem("Not registered: PUT it again")},
            body=Body(AgentHeartbeat),
        )
    }

    async def post(self, agent_id: str) -> None:
        self.write_json(await self.gate.heartbeat(agent_id, self.json_body(AgentHeartbeat)))


class TakeHandler(GatewayHandler):
    """Long poll for the next task; a task taken for a client that has gone is given
    back at once, not left to the visibility timeout."""

    scopes = {"POST": "agent"}
    path = (AGENT_PATH,)
    docs = {
        "POST": Op(
            "Take the next task of these queues, waiting up to wait_s for one",
            {
                "200": ok("TaskTaken"),
                "204": {"description": "Nothing arrived within wait_s"},
                "403": problem("A queue this key was not granted"),
            },
            body=Body(TakeRequest),
        )
    }

    def initialize(self) -> None:
        super().initialize()
        self._gone = asyncio.Event()

    def on_connection_close(self) -> None:
        self._gone.set()

    async def post(self, agent_id: str) -> None:
        d = await self.gate.take(agent_id, self.json_body(TakeRequest), self._gone)
        if d is not None:
            lease, answer = self.gate.delivered(agent_id, d)
            if self._gone.is_set():
                await self.services.tasks.abandon(lease, agent_id)
                return
            try:
                await self.finish(orjson.dumps(answer))
            except StreamClosedError:
                await self.services.tasks.abandon(lease, agent_id)
        elif not self._gone.is_set():
            self.set_status(204)
            self.finish()


class LeaseHandler(GatewayHandler):
    scopes = {"POST": "agent"}
    path = (TASK_PATH,)
    docs = {
        "POST": Op(
            "Renew the lease of a task this agent holds",
            {
                "200": ok("LeaseAnswer"),
                "409": problem("The lease was lost (reclaimed)", "LeaseLost"),
            },
            body=Body(LeaseRenew),
        )
    }

    async def post(self, task_id: str) -> None:
        self.write_json(await self.gate.renew(task_id, self.json_body(LeaseRenew)))


class FinishHandler(GatewayHandler):
    scopes = {"POST": "agent"}
    path = (TASK_PATH,)
    docs = {
        "POST": Op(
            "Finish a task this agent holds: succeeded with a result, or failed",
            {
                "200": ok("TaskEnvelope"),
                "409": problem("The lease was lost: another holds it", "LeaseLost"),
            },
            body=Body(TaskFinish),
        )
    }

    async def post(self, task_id: str) -> None:
        answer = await self.gate.finish(task_id, self.json_body(TaskFinish))
        self.audit_target = task_id
        self.write_json(answer)


class CommandReportHandler(GatewayHandler):
    audit_success = True
    scopes = {"POST": "agent"}
    path = (COMMAND_PATH,)
    actions = {"POST": "agent.command"}
    docs = {
        "POST": Op(
            "Acknowledge a command, or report how it ended",
            {
                "200": ok("CommandEnvelope"),
                "404": problem("Unknown command"),
                "409": problem("Not in a state that allows it", "CommandConflict"),
            },
            body=Body(CommandReport),
        )
    }

    async def post(self, command_id: str) -> None:
        answer = await self.gate.report(command_id, self.json_body(CommandReport))
        self.audit_target = command_id
        self.write_json(answer)


def _stamped(handler: GatewayHandler, items: list[Any], name: str, agent_id: str) -> list[Any]:
    """Items of an agent's batch carry its id: stamped where absent; naming another
    agent refuses the batch (all or nothing, like the ingest endpoints)."""
    bad = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            given = item.get("agent_id", agent_id)
            if given != agent_id:
                bad.append(
                    {
                        "index": i,
                        "errors": [{"field": "agent_id", "message": f"must be {agent_id!r}"}],
                    }
                )
            item["agent_id"] = agent_id
    if bad:
        raise handler.refuse_batch(name, len(items), bad)
    return items


class AgentBatchHandler(GatewayHandler):
    """An agent's own usage or log batch: the ingest endpoint's handling (all or
    nothing, Idempotency-Key), each item stamped with the agent id of the path."""

    scopes = {"POST": "agent"}
    path = (AGENT_PATH,)
    headers_in = {"POST": (IDEMPOTENCY_KEY,)}

    def batch_items(self, name: str) -> list[Any]:
        return _stamped(self, super().batch_items(name), name, self.path_args[0])


class AgentUsageHandler(AgentBatchHandler, IngestUsageHandler):
    actions = {"POST": "agent.usage"}
    docs = {
        "POST": Op(
            "This agent's usage events (agent_id stamped from the path); all or nothing",
            {"202": ok("Accepted", "Accepted"), "413": problem("Too many events")},
            body=batch(GatewayUsageEvent, "events"),
        )
    }

    async def post(self, agent_id: str) -> None:  # type: ignore[override]
        await IngestUsageHandler.post(self)


class AgentLogsHandler(AgentBatchHandler, IngestLogsHandler):
    actions = {"POST": "agent.logs"}
    docs = {
        "POST": Op(
            "This agent's log entries (agent_id stamped from the path); all or nothing",
            {"202": ok("Accepted", "Accepted"), "413": problem("Too many entries")},
            body=batch(GatewayLogEntry, "entries"),
        )
    }

    async def post(self, agent_id: str) -> None:  # type: ignore[override]
        await IngestLogsHandler.post(self)


_AGENT = r"([^/]+)"
_ID = r"([^/]+)"
default_handlers = [
    (rf"{PREFIX}/agents/{_AGENT}", RegisterHandler),
    (rf"{PREFIX}/agents/{_AGENT}/heartbeat", HeartbeatHandler),
    (rf"{PREFIX}/agents/{_AGENT}/take", TakeHandler),
    (rf"{PREFIX}/agents/{_AGENT}/usage", AgentUsageHandler),
    (rf"{PREFIX}/agents/{_AGENT}/logs", AgentLogsHandler),
    (rf"{PREFIX}/tasks/{_ID}/lease", LeaseHandler),
    (rf"{PREFIX}/tasks/{_ID}/finish", FinishHandler),
    (rf"{PREFIX}/commands/{_ID}", CommandReportHandler),
]
