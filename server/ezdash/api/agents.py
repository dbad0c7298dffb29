"""Agents: list, inspect, restart and stop."""

from __future__ import annotations

from typing import Any

from ..keys import AGENT_STATUSES
from ..metrics.histogram import merge
from ..metrics.pricing import nanos_to_usd
from ..metrics.query import percentiles, plan
from .base import APIHandler
from .errors import conflict, invalid, not_found
from .listing import list_page, text
from .opdocs import Op, ok, problem
from .params import AGENT_PATH, DRY_RUN, IDEMPOTENCY_KEY, PAGE, Boolean, Choice, Text
from .services import Services

COMMAND_ANSWERS = {
    "202": ok("CommandEnvelope", "Command queued"),
    "200": ok("DryRun", "Dry run"),
    "404": problem("Unknown agent"),
}
"""What a command to an agent answers, but for its 409."""


class AgentsHandler(APIHandler):
    scopes = {"GET": "read"}
    docs = {"GET": Op("List agents (id order)", {"200": ok("AgentPage")})}
    query = {
        "GET": (
            Choice("status", "Derived status", values=AGENT_STATUSES),
            Text("kind", "Agent kind", max_len=128),
            Text("q", "Substring of id or name", max_len=128),
            *PAGE,
        )
    }

    async def get(self) -> None:
        status = self.q_str("status")
        kind = self.q_str("kind")
        q = self.q_str("q")
        page = await list_page(self, text)
        items, last = await self.services.agents.page(
            status=status, kind=kind, q=q, limit=page.limit, after=page.after
        )
        self.write_json({"items": items, "next_cursor": page.next_cursor(last)})


class AgentHandler(APIHandler):
    scopes = {"GET": "read", "DELETE": "control"}
    docs = {
        "GET": Op(
            "One agent with stats, recent errors and pending commands",
            {"200": ok("AgentDetail"), "404": problem("Unknown agent")},
        ),
        "DELETE": Op(
            "Stop an agent (graceful; force=true requeues its task)",
            {**COMMAND_ANSWERS, "409": problem("Agent already stopped")},
        ),
    }
    actions = {"DELETE": "agents.stop"}
    path = (AGENT_PATH,)
    query = {"DELETE": (Boolean("force", "Abandon the current task"), DRY_RUN)}
    headers_in = {"DELETE": (IDEMPOTENCY_KEY,)}

    async def get(self, agent_id: str) -> None:
        svc = self.services
        agent = await svc.agents.get(agent_id)
        if agent is None:
            raise not_found("agent", agent_id)
        now = await svc.redis_now_ms()
        agent.update(await svc.agents.detail_extras(agent_id, now))
        agent["stats"].update(await usage_stats(svc, agent_id, now))
        agent["pending_commands"] = await svc.commands.pending_for(agent_id)
        self.write_json(agent)

    async def delete(self, agent_id: str) -> None:
        """Stop: graceful by default (finish the current task), ``force=true`` requeues it."""
        await command(self, agent_id, "stop", force=self.q_bool("force"))


class AgentRestartHandler(APIHandler):
    scopes = {"POST": "control"}
    docs = {"POST": Op("Restart an agent", {**COMMAND_ANSWERS, "409": problem("Agent stopped")})}
    actions = {"POST": "agents.restart"}
    path = (AGENT_PATH,)
    query = {"POST": (DRY_RUN,)}
    headers_in = {"POST": (IDEMPOTENCY_KEY,)}

    async def post(self, agent_id: str) -> None:
        if self.request.body.strip() not in (b"", b"{}"):
            raise invalid("body", "restart takes no body", 400)
        await command(self, agent_id, "restart", force=False)


async def usage_stats(svc: Services, agent_id: str, now: int) -> dict[str, Any]:
    """Tokens and cost of the last 24 h and p95 latency of the last hour, from rollups."""
    day = plan(
        svc.tiers,
        start_ms=now - 86_400_000,
        end_ms=now,
        step_ms=3_600_000,
        now_ms=now,
        group_by="none",
        filters={"agent": agent_id},
    )
    hour = plan(
        svc.tiers,
        start_ms=now - 3_600_000,
        end_ms=now,
        step_ms=60_000,
        now_ms=now,
        group_by="none",
        filters={"agent": agent_id},
    )
    data = await svc.metrics.counters(
        day, [agent_id], ["input_tokens", "output_tokens", "cost_nanos"]
    )
    hist = await svc.metrics.histograms(hour, [agent_id], "latency")
    (p95,) = percentiles([merge(*hist[agent_id])], (0.95,))[0]
    return {
        "tokens_24h": int(
            data[(agent_id, "input_tokens")].sum() + data[(agent_id, "output_tokens")].sum()
        ),
        "cost_usd_24h": nanos_to_usd(int(data[(agent_id, "cost_nanos")].sum())),
        "latency_p95_ms_1h": p95,
    }


async def command(h: APIHandler, agent_id: str, action: str, *, force: bool) -> None:
    svc = h.services
    dry = h.q_bool("dry_run")
    idem = h.idempotency_key()
    agent = await svc.agents.get(agent_id)
    if agent is None:
        raise not_found("agent", agent_id)
    if agent["status"] == "stopped":
        raise conflict(f"agent {agent_id!r} is stopped; it cannot {action}")
    h.audit_detail = "dry_run" if dry else ("force" if force else "")
    if dry:
        task = agent.get("current_task")
        if action == "restart":
            would = f"queue a restart of agent {agent_id!r} (now {agent['status']})"
        elif force:
            would = f"queue a forced stop of agent {agent_id!r}" + (
                f"; task {task!r} would go back to its queue" if task else ""
            )
        else:
            would = f"queue a graceful stop of agent {agent_id!r}" + (
                f" after it finishes task {task!r}" if task else ""
            )
        h.write_json({"dry_run": True, "would": would, "target": agent})
        return
    idempotency = None
    if idem:
        idempotency = (
            svc.keys.idempotency(h.principal.id, f"{action}:{agent_id}", idem),
            svc.settings.idempotency_ttl,
        )
    doc, created = await svc.commands.create(
        agent_id, action, force=force, requested_by=h.principal.id, idempotency=idempotency
    )
    if not created:
        h.set_header("Idempotent-Replayed", "true")
    h.audit_detail = f"command={doc['id']}" + (" force" if force else "")
    h.set_header("Location", f"/api/control/commands/{doc['id']}")
    h.write_json({"command": doc}, 202)


default_handlers = [
    (r"/api/agents", AgentsHandler),
    (r"/api/agents/([^/]+)", AgentHandler),
    (r"/api/agents/([^/]+)/restart", AgentRestartHandler),
]
