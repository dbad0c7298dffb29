"""The OpenAPI 3.1 document, generated from the same models that validate requests."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from .. import __version__
from ..settings import Settings
from .models import INPUTS, SCHEMAS
from .params import ACCESS_TOKEN, CURSOR, STREAM_ID, members

REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _problem(desc: str) -> dict[str, Any]:
    return {
        "description": desc,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }


def _ok(schema: dict[str, Any], desc: str = "OK") -> dict[str, Any]:
    return {"description": desc, "content": {"application/json": {"schema": schema}}}


ERR = {
    "400": _problem("Malformed request (bad JSON, unknown parameter, bad cursor)"),
    "401": _problem("Missing or invalid credentials"),
    "403": _problem("Credentials lack the needed scope"),
    "422": _problem("A field failed validation; `errors` names it"),
    "429": _problem("Rate limited; see Retry-After"),
}


def _op(
    summary: str,
    scope: str | None,
    responses: dict[str, Any],
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One operation; its parameters are filled in from its handler (see below)."""
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": [],
        "responses": {**responses, **(ERR if scope else {"429": ERR["429"]})},
    }
    op["security"] = [{"bearer": []}, {"apiKey": []}] if scope else []
    if scope:
        op["x-scope"] = scope
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    return op


def path_template(pattern: str, names: tuple[str, ...]) -> str:
    """``/api/tasks/([^/]+)`` and ("task_id",) -> ``/api/tasks/{task_id}``."""
    parts = iter(names)
    return re.sub(r"\([^)]*\)", lambda _: "{" + next(parts) + "}", pattern)


def operation_id(cls: type, method: str) -> str:
    """``AgentRestartHandler`` and POST -> ``postAgentRestart``: unique because handler
    class names are, and stable as long as they are (generated clients name their
    functions after it)."""
    return method.lower() + cls.__name__.removesuffix("Handler")


def tag_of(cls: type) -> str:
    """The module a handler lives in (``ezdash.api.agents`` -> ``agents``)."""
    return str(cls.__module__).rsplit(".", 1)[-1]


def _tags() -> list[dict[str, str]]:
    """One tag per handler module, described by its docstring's first paragraph."""
    import sys

    from .app import routes

    seen: dict[str, str] = {}
    for _, cls in routes():
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().split("\n\n")[0]
        seen.setdefault(tag_of(cls), " ".join(doc.split()).rstrip(".") or tag_of(cls))
    return [{"name": name, "description": text} for name, text in seen.items()]


def _attach_parameters(paths: dict[str, Any]) -> None:
    """Every operation's parameters come from its handler's declarations (path
    segments, query parameters, headers): the very lists the server checks requests
    against, so the document can neither miss one nor describe one differently."""
    from .app import routes  # the handler modules import this one

    for pattern, cls in routes():
        template = path_template(pattern, tuple(p.name for p in cls.path))
        for method in cls.scopes:
            op = paths[template][method.lower()]
            op["operationId"] = operation_id(cls, method)
            op["tags"] = [tag_of(cls)]
            query = list(cls.query.get(method, ()))
            if cls.query_token:
                query.append(ACCESS_TOKEN)
            op["parameters"] = [
                *(p.openapi() for p in cls.path),
                *(p.openapi() for p in query),
                *(h.openapi() for h in cls.headers_in.get(method, ())),
            ]
            answers = op["responses"]
            if cls.path or CURSOR in members(tuple(query)):
                answers.setdefault("404", _problem("No such resource, or a cursor for no page"))
            if cls.scopes[method] is not None:  # everything but the open probes needs Redis
                answers.setdefault("503", _problem("Redis is unavailable; see Retry-After"))
            if method in ("POST", "PUT", "PATCH"):
                answers.setdefault("413", _problem("Body over the limit"))
                answers.setdefault("415", _problem("Body is not application/json"))


@cache
def openapi_document() -> dict[str, Any]:
    refs, defs = models_json_schema(
        [*((m, "serialization") for m in SCHEMAS), *((m, "validation") for m in INPUTS)],
        ref_template=REF,
    )
    schemas = defs.get("$defs", {})
    bodies = {m.__name__: refs[(m, "validation")] for m in INPUTS}

    def batch(model: str, name: str) -> dict[str, Any]:
        """An ingest body: a JSON array of items, or {name: [...]}."""
        items = {
            "type": "array",
            "items": bodies[model],
            "minItems": 1,
            "maxItems": Settings.model_fields["ingest_max_events"].default,
        }
        wrapped = {
            "type": "object",
            "properties": {name: items},
            "required": [name],
            "additionalProperties": False,
        }
        return {"oneOf": [items, wrapped]}

    def metrics_op(summary: str) -> dict[str, Any]:
        return {"get": _op(summary, "read", {"200": _ok(_ref("MetricsAnswer"))})}

    paths: dict[str, Any] = {
        "/api/health": {
            "get": _op(
                "Liveness and Redis latency",
                None,
                {"200": _ok(_ref("Health")), "503": _ok(_ref("Health"), "Redis unreachable")},
            )
        },
        "/api/live": {
            "get": _op(
                "Liveness: the process answers (never touches Redis)",
                None,
                {"200": _ok(_ref("Live"))},
            )
        },
        "/api/ready": {
            "get": _op(
                "Readiness: 503 while draining or while Redis does not answer",
                None,
                {"200": _ok(_ref("Ready")), "503": _ok(_ref("Ready"), "Draining or no Redis")},
            )
        },
        "/api/openapi.json": {"get": _op("This document", None, {"200": _ok({"type": "object"})})},
        "/api/asyncapi.json": {
            "get": _op(
                "The AsyncAPI 3.1 document of /api/ws", None, {"200": _ok({"type": "object"})}
            )
        },
        "/api/agents": {
            "get": _op("List agents (id order)", "read", {"200": _ok(_ref("AgentPage"))})
        },
        "/api/agents/{agent_id}": {
            "get": _op(
                "One agent with stats, recent errors and pending commands",
                "read",
                {"200": _ok(_ref("AgentDetail")), "404": _problem("Unknown agent")},
            ),
            "delete": _op(
                "Stop an agent (graceful; force=true requeues its task)",
                "control",
                {
                    "202": _ok(_ref("CommandEnvelope"), "Command queued"),
                    "200": _ok(_ref("DryRun"), "Dry run"),
                    "404": _problem("Unknown agent"),
                    "409": _problem("Agent already stopped"),
                },
            ),
        },
        "/api/agents/{agent_id}/restart": {
            "post": _op(
                "Restart an agent",
                "control",
                {
                    "202": _ok(_ref("CommandEnvelope"), "Command queued"),
                    "200": _ok(_ref("DryRun"), "Dry run"),
                    "404": _problem("Unknown agent"),
                    "409": _problem("Agent stopped"),
                },
            )
        },
        "/api/control/commands": {
            "get": _op("List commands (newest first)", "read", {"200": _ok(_ref("CommandPage"))})
        },
        "/api/control/commands/{command_id}": {
            "get": _op(
                "One command",
                "read",
                {"200": _ok(_ref("Command")), "404": _problem("Unknown command")},
            )
        },
        "/api/tasks": {
            "get": _op("List tasks (newest first)", "read", {"200": _ok(_ref("TaskPage"))}),
            "post": _op(
                "Create a task",
                "write",
                {
                    "201": _ok(_ref("TaskEnvelope"), "Created; Location names it"),
                    "413": _problem("Body or payload too large"),
                },
                body=bodies["TaskCreate"],
            ),
        },
        "/api/tasks/{task_id}": {
            "get": _op(
                "One task with its attempt history",
                "read",
                {"200": _ok(_ref("TaskWithHistory")), "404": _problem("Unknown task")},
            )
        },
        "/api/tasks/{task_id}/retry": {
            "put": _op(
                "Put a failed, dead or cancelled task back on its queue",
                "write",
                {
                    "200": _ok({"oneOf": [_ref("TaskEnvelope"), _ref("DryRun")]}),
                    "404": _problem("Unknown task"),
                    "409": _problem("Task not retryable"),
                },
            )
        },
        "/api/tasks/{task_id}/cancel": {
            "post": _op(
                "Cancel a queued or running task",
                "write",
                {
                    "200": _ok({"oneOf": [_ref("TaskEnvelope"), _ref("DryRun")]}),
                    "404": _problem("Unknown task"),
                    "409": _problem("Task already finished"),
                },
            )
        },
        "/api/queues": {
            "get": _op(
                "Queues with depth, age and throughput",
                "read",
                {"200": _ok({"type": "array", "items": _ref("Queue")})},
            )
        },
        "/api/metrics/tokens": metrics_op("Tokens by kind per bucket"),
        "/api/metrics/costs": metrics_op("Cost in USD per bucket (price_table names the table)"),
        "/api/metrics/performance": metrics_op(
            "Requests, tasks, latency percentiles, task duration p95, success rate"
        ),
        "/api/metrics/errors": metrics_op("Errors and error rate per bucket; top error types"),
        "/api/metrics/prices": {
            "get": _op("The active model price table", "read", {"200": _ok(_ref("PriceTableDoc"))})
        },
        "/api/ingest/usage": {
            "post": _op(
                'Usage events (a JSON array or {"events": [...]}); all or nothing',
                "write",
                {"202": _ok(_ref("Accepted"), "Accepted"), "413": _problem("Too many events")},
                body=batch("UsageEvent", "events"),
            )
        },
        "/api/ingest/logs": {
            "post": _op(
                'Log entries (a JSON array of LogEntryIn or {"entries": [...]}); all or nothing',
                "write",
                {"202": _ok(_ref("Accepted"), "Accepted"), "413": _problem("Too many entries")},
                body=batch("LogEntryIn", "entries"),
            )
        },
        "/api/logs/search": {
            "get": _op(
                "Log entries, newest first; a page may be short with a cursor when the "
                "filter is sparse (each page examines a bounded number of entries)",
                "read",
                {"200": _ok(_ref("LogPage"))},
            )
        },
        "/api/logs/export": {
            "get": _op(
                "The matching entries, oldest first, streamed as an attachment "
                "(gzip when accepted)",
                "read",
                {
                    "200": {
                        "description": "NDJSON (one LogEntry per line) or CSV",
                        "content": {
                            "application/x-ndjson": {"schema": {"type": "string"}},
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    }
                },
            )
        },
        "/api/logs/stream": {
            "get": _op(
                "Server-Sent Events: `id`, `event: log`, `data: LogEntry`; resumes after "
                "Last-Event-ID (or ?since=) with nothing lost and nothing twice; a comment "
                "line at least every 15 s",
                "read",
                {
                    "200": {
                        "description": "An event stream: one event per log entry",
                        "content": {
                            "text/event-stream": {
                                "schema": {
                                    "type": "object",
                                    "description": "One event (comments are not events)",
                                    "required": ["id", "event", "data"],
                                    "properties": {
                                        "id": {"type": "string", "pattern": STREAM_ID},
                                        "event": {"const": "log"},
                                        "data": {
                                            "type": "string",
                                            "contentMediaType": "application/json",
                                            "contentSchema": _ref("LogEntry"),
                                        },
                                        "retry": {"type": "integer"},
                                    },
                                }
                            }
                        },
                    }
                },
            )
        },
        "/api/alerts": {
            "get": _op(
                "Alerts firing now and the most recent ones, with webhook deliveries",
                "read",
                {"200": _ok(_ref("AlertsAnswer"))},
            )
        },
        "/api/alerts/rules": {
            "get": _op(
                "The alert rules (webhook secrets are never shown)",
                "read",
                {"200": _ok(_ref("AlertRulesAnswer"))},
            ),
            "put": _op(
                "Replace the alert rules (a webhook without a secret keeps its old one "
                "when id and URL are unchanged)",
                "admin",
                {"200": _ok(_ref("AlertRulesAnswer"))},
                body=bodies["AlertRules"],
            ),
        },
        "/api/ws": {
            "get": _op(
                "WebSocket (upgrade): send {op: subscribe|unsubscribe, topics, since} or "
                "{op: ping}; receive {type, id, ts, data} with type hello, agent.updated, "
                "task.updated, queue.status, error, log, pong, resync or problem. A client "
                "too slow to keep up gets resync and close code 1013",
                "read",
                {
                    "101": {"description": "Switching Protocols"},
                    "426": _problem("Not a WebSocket upgrade request"),
                },
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus text exposition: this instance's request counts and latencies, "
                "the fleet's agents by status and queue gauges",
                "read",
                {
                    "200": {
                        "description": "Prometheus text format 0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            )
        },
        "/api/docs": {
            "get": _op(
                "This document as a human-readable page",
                None,
                {
                    "200": {
                        "description": "HTML",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            )
        },
        "/api/summary": {
            "get": _op(
                "The dashboard front page in one call", "read", {"200": _ok(_ref("SummaryAnswer"))}
            )
        },
        "/api/analytics/history": {
            "get": _op(
                "Any metric at any step, columnar", "read", {"200": _ok(_ref("HistoryAnswer"))}
            )
        },
        "/api/analytics/trends": {
            "get": _op(
                "Slope per day, change against the previous window, direction with p-value, "
                "seasonality strength, per group",
                "read",
                {
                    "200": _ok(_ref("TrendsAnswer")),
                    "409": _problem("Not enough data in the range to fit"),
                },
            )
        },
        "/api/analytics/forecast": {
            "get": _op(
                "Forecast with prediction intervals and its backtest",
                "read",
                {
                    "200": _ok(_ref("ForecastAnswer")),
                    "409": _problem("Not enough data in the range to fit"),
                },
            )
        },
        "/api/analytics/anomalies": {
            "get": _op(
                "Points that break the learned pattern",
                "read",
                {
                    "200": _ok(_ref("AnomaliesAnswer")),
                    "409": _problem("Not enough data in the range to fit"),
                },
            )
        },
        "/api/analytics/predictions": {
            "get": _op(
                "Month-end cost with interval, budget run-out, drain ETA per queue",
                "read",
                {
                    "200": _ok(_ref("PredictionsAnswer")),
                    "409": _problem("Not enough data in the range to fit"),
                },
            )
        },
        "/api/auth/token": {
            "post": _op(
                "Exchange the API key you authenticate with for a short-lived JWT",
                "any",
                {"200": _ok(_ref("Token"))},
            )
        },
        "/api/auth/keys": {
            "get": _op("List API keys (never the keys)", "admin", {"200": _ok(_ref("KeyPage"))}),
            "post": _op(
                "Create an API key; the key is in this answer only",
                "admin",
                {"201": _ok(_ref("ApiKeyCreated"), "Created")},
                body=bodies["KeyCreate"],
            ),
        },
        "/api/auth/keys/{key_id}": {
            "delete": _op(
                "Revoke an API key (at once, on every instance)",
                "admin",
                {"200": _ok(_ref("ApiKey")), "404": _problem("Unknown key")},
            )
        },
        "/api/audit": {
            "get": _op("Audit log, newest first", "admin", {"200": _ok(_ref("AuditPage"))})
        },
    }
    _attach_parameters(paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "EzAugent Dashboard API",
            "version": __version__,
            "description": "Monitoring and control plane for fleets of LLM agents.",
        },
        "tags": _tags(),
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "API key or JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }
