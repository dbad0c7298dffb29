"""The AsyncAPI 3.1 document of ``GET /api/ws``, from models of every message.

Served at ``/api/asyncapi.json`` beside the OpenAPI document. The models say what
the server sends (``hello``, one message type per event, ``queue.status``, ``log``,
``error``, ``pong``, ``resync``, ``problem``) and what it accepts (``subscribe``,
``unsubscribe``, ``ping``); the tests validate the document with the AsyncAPI parser
and check real messages from a live server against it. Event payloads are the
documents the Lua scripts write (docs/agent-protocol.md §3.5), so they allow fields
beyond the ones listed: a newer agent may add some.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from .. import __version__
from .models import AlertState, FieldError, LogEntry, Queue, Time

REF = "#/components/schemas/{model}"
Topic = Literal["agents", "tasks", "queues", "errors", "alerts", "logs"]


class Open(BaseModel):
    """A document written by the scripts: these fields at least."""

    model_config = ConfigDict(extra="allow")


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- what the server sends ----------------------------------------------------------
class HelloData(Closed):
    version: str
    instance: str
    topics: list[Topic]


class AgentDocument(Open):
    """The agent's own document, as ``agent_put`` wrote it."""

    id: str
    status: str
    name: str | None = None
    kind: str | None = None
    model: str | None = None
    host: str | None = None
    pid: int | None = None
    version: str | None = None
    current_task: str | None = None
    started_at: int | None = Field(None, description="Unix ms")
    restarts: int | None = None
    tags: dict[str, str] | None = None
    queues: list[str] | None = None
    concurrency: int | None = None


class TaskErrorData(Open):
    type: str
    message: str


class TaskChange(Open):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled", "dead"]
    queue: str
    type: str
    attempts: int
    priority: int
    ts: int = Field(description="Unix ms of the change")
    agent_id: str | None = None
    error: TaskErrorData | None = None


class ErrorData(Open):
    """A failed or dead task, or an agent in error: the event's data and its source."""

    source: Literal["task", "agent"]
    id: str
    status: str


class Envelope(Closed):
    id: str | None = Field(
        description="The stream id ('ms-seq') of an event or log entry, the resume point "
        "for ``since``; null for messages that are not entries"
    )
    ts: Time | None


class Hello(Envelope):
    type: Literal["hello"]
    data: HelloData


class AgentUpdated(Envelope):
    type: Literal["agent.updated"]
    data: AgentDocument


class TaskUpdated(Envelope):
    type: Literal["task.updated"]
    data: TaskChange


class AlertFired(Envelope):
    type: Literal["alert.fired"]
    data: AlertState


class AlertResolved(Envelope):
    type: Literal["alert.resolved"]
    data: AlertState


class FleetError(Envelope):
    type: Literal["error"]
    data: ErrorData


class QueueStatus(Envelope):
    type: Literal["queue.status"]
    data: list[Queue]


class Log(Envelope):
    type: Literal["log"]
    data: LogEntry


class Empty(Closed):
    pass


class Pong(Envelope):
    type: Literal["pong"]
    data: Empty


class Resync(Envelope):
    """The client fell behind: the server closes with 1013; resubscribe with ``since``."""

    type: Literal["resync"]
    data: Empty


class ProblemData(Closed):
    title: str
    errors: list[FieldError]


class MessageProblem(Envelope):
    """A client message the server could not use; the connection stays open."""

    type: Literal["problem"]
    data: ProblemData


# -- what the client sends ----------------------------------------------------------
class StreamPositions(Closed):
    events: str | None = None
    logs: str | None = None


class Subscribe(Closed):
    op: Literal["subscribe"]
    topics: list[Topic] = Field(min_length=1)
    since: str | StreamPositions | None = Field(
        None,
        description="Resume: an id this server sent, a time (RFC 3339, unix or now-1h), "
        'or {"events": id, "logs": id}',
    )


class Unsubscribe(Closed):
    op: Literal["unsubscribe"]
    topics: list[Topic] = Field(min_length=1)


class Ping(Closed):
    op: Literal["ping"]


SENT: dict[str, tuple[type[Envelope], str]] = {
    "hello": (Hello, "First message of every connection"),
    "agent.updated": (AgentUpdated, "Topic agents: an agent's document changed"),
    "task.updated": (TaskUpdated, "Topic tasks: a task changed state"),
    "error": (FleetError, "Topic errors: a task failed or died, or an agent is in error"),
    "alert.fired": (AlertFired, "Topic alerts: an alert fired"),
    "alert.resolved": (AlertResolved, "Topic alerts: an alert resolved"),
    "queue.status": (QueueStatus, "Topic queues: every queue, at most once a second, on change"),
    "log": (Log, "Topic logs: one log entry"),
    "pong": (Pong, "The answer to ping"),
    "resync": (Resync, "Too slow: the server closes with 1013"),
    "problem": (MessageProblem, "A client message was refused"),
}
RECEIVED: dict[str, tuple[type[Closed], str]] = {
    "subscribe": (Subscribe, "Add topics, optionally resuming after a position"),
    "unsubscribe": (Unsubscribe, "Drop topics"),
    "ping": (Ping, "Ask for a pong"),
}


def _name(kind: str) -> str:
    return "".join(part.capitalize() for part in kind.replace(".", "_").split("_"))


def _channels() -> list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(name, channel fields, what the server sends, what it accepts) of each socket;
    the gateway's messages are named after their models (its kinds repeat these)."""
    from . import gateway_ws  # it imports the handlers; this module is imported by them

    gw_sent = {m.__name__: (m, summary) for m, summary in gateway_ws.SENT.values()}
    gw_received = {m.__name__: (m, summary) for m, summary in gateway_ws.OPS.values()}
    return [
        (
            "realtime",
            {"address": "/api/ws", "title": "The real-time WebSocket"},
            {_name(kind): v for kind, v in SENT.items()},
            {_name(kind): v for kind, v in RECEIVED.items()},
        ),
        (
            "agentGateway",
            {
                "address": "/api/agent/v1/agents/{agent_id}/ws",
                "title": "The agent gateway over one WebSocket (agent keys)",
                "parameters": {"agent_id": {"description": "The agent's own id"}},
            },
            gw_sent,
            gw_received,
        ),
    ]


@cache
def asyncapi_document() -> dict[str, Any]:
    channels_of = _channels()
    models = [m for _, _, sent, got in channels_of for m, _ in (*sent.values(), *got.values())]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    schemas = defs.get("$defs", {})
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for channel, fields, sent, received in channels_of:
        for name, (model, summary) in {**sent, **received}.items():
            literal = model.model_fields["type" if name in sent else "op"].annotation
            kind = getattr(literal, "__args__", (name,))[0]
            messages[name] = {
                "name": kind,
                "title": kind,
                "summary": summary,
                "contentType": "application/json",
                "payload": {"$ref": REF.format(model=model.__name__)},
            }
        ref = f"#/channels/{channel}"
        channels[channel] = {
            **fields,
            "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in {**sent, **received}},
        }
        suffix = "" if channel == "realtime" else channel[0].upper() + channel[1:]
        operations[f"sendUpdates{suffix}"] = {
            "action": "send",
            "title": "What the server sends",
            "channel": {"$ref": ref},
            "messages": [{"$ref": f"{ref}/messages/{n}"} for n in sent],
        }
        operations[f"receiveRequests{suffix}"] = {
            "action": "receive",
            "title": "What the server accepts",
            "channel": {"$ref": ref},
            "messages": [{"$ref": f"{ref}/messages/{n}"} for n in received],
        }
    return {
        "asyncapi": "3.1.0",
        "info": {
            "title": "EzAugent Dashboard real-time API",
            "version": __version__,
            "description": "GET /api/ws: agents, tasks, queues, errors, alerts and logs as "
            "they happen. Authenticate with a Bearer header or ?access_token=<JWT>. "
            "GET /api/agent/v1/agents/{agent_id}/ws: the agent gateway on one socket "
            "(Bearer agent key).",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }
