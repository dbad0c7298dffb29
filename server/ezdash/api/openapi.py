"""The OpenAPI 3.1 document, generated from the same models that validate requests.

It is a walk over the route table: each handler says what it serves (``scopes``,
``path``, ``query``, ``headers_in``: the very declarations requests are checked
against) and how each operation answers (``docs``, see ``opdocs``); what every
operation of a kind answers (auth, rate limit, 404, 503, 413, 415) is added here."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from pydantic.json_schema import JsonSchemaMode, JsonSchemaValue, models_json_schema

from .. import __version__
from ..settings import Settings
from .base import APIHandler
from .models import INPUTS, SCHEMAS
from .opdocs import REF, Body, Op, problem
from .params import ACCESS_TOKEN, CURSOR, Group, Param, members

Route = tuple[str, type[APIHandler]]

ERR = {
    "400": problem("Malformed request (bad JSON, unknown parameter, bad cursor)"),
    "401": problem("Missing or invalid credentials"),
    "403": problem("Credentials lack the needed scope"),
    "422": problem("A field failed validation; `errors` names it"),
    "429": problem("Rate limited; see Retry-After"),
}

DOCUMENT_ORDER = (
    "health",
    "agents",
    "control",
    "tasks",
    "metrics",
    "logs",
    "alerts",
    "realtime",
    "ops",
    "analytics",
    "auth",
)
"""The order of the paths in the document, by tag (then route order within a tag):
the order clients were generated in. A tag not named here comes last."""


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
    """The module a handler lives in (``ezdash.api.agents`` -> ``agents``), unless the
    handler names its tag (one area split over modules)."""
    named: str | None = vars(cls).get("tag")
    return named or str(cls.__module__).rsplit(".", 1)[-1]


def documented(cls: type[APIHandler]) -> Mapping[str, Op]:
    """The operations ``cls`` itself describes: a subclass does not inherit its base's
    ``docs``, as its operations (and their ids) are its own."""
    docs: Mapping[str, Op] = vars(cls).get("docs", {})
    return docs


def documentation_gaps(table: Sequence[Route]) -> list[str]:
    """Every handler method of the table without ``docs``, and every ``docs`` entry
    for a method its handler does not serve (empty when the document is complete)."""
    from .app import implemented  # the handler modules import this one

    gaps: list[str] = []
    for pattern, cls in table:
        served, declared = implemented(cls), documented(cls)
        gaps += [
            f"{cls.__name__}.{m.lower()} ({pattern}) has no docs"
            for m in served
            if m not in declared
        ]
        gaps += [
            f"{cls.__name__}.docs describes {m} ({pattern}), which it does not serve"
            for m in declared
            if m not in served
        ]
    return gaps


def _tags(table: Sequence[Route]) -> list[dict[str, str]]:
    """One tag per handler module, described by its docstring's first paragraph."""
    seen: dict[str, str] = {}
    for _, cls in table:
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().split("\n\n")[0]
        seen.setdefault(tag_of(cls), " ".join(doc.split()).rstrip(".") or tag_of(cls))
    return [{"name": name, "description": text} for name, text in seen.items()]


@cache
def _models() -> tuple[Mapping[tuple[Any, JsonSchemaMode], JsonSchemaValue], JsonSchemaValue]:
    """The schema of every model: answers as they are sent, bodies as they are
    validated; (model, mode) -> its reference, and the definitions."""
    return models_json_schema(
        [*((m, "serialization") for m in SCHEMAS), *((m, "validation") for m in INPUTS)],
        ref_template=REF,
    )


def _body_schema(body: Body) -> dict[str, Any]:
    item = _models()[0][(body.model, "validation")]
    if body.batch is None:
        return item
    items = {
        "type": "array",
        "items": item,
        "minItems": 1,
        "maxItems": Settings.model_fields["ingest_max_events"].default,
    }
    wrapped = {
        "type": "object",
        "properties": {body.batch: items},
        "required": [body.batch],
        "additionalProperties": False,
    }
    return {"oneOf": [items, wrapped]}


def _responses(
    cls: type[APIHandler], method: str, declared: Op, query: Sequence[Param | Group]
) -> dict[str, Any]:
    """The operation's own answers, then those of every operation of its kind."""
    scope = cls.scopes[method]
    answers = {**declared.responses, **(ERR if scope else {"429": ERR["429"]})}
    if cls.path or CURSOR in members(tuple(query)):
        answers.setdefault("404", problem("No such resource, or a cursor for no page"))
    if scope is not None:  # everything but the open probes needs Redis
        answers.setdefault("503", problem("Redis is unavailable; see Retry-After"))
    if method in ("POST", "PUT", "PATCH"):
        answers.setdefault("413", problem("Body over the limit"))
        answers.setdefault("415", problem("Body is not application/json"))
    return answers


def _operation(cls: type[APIHandler], method: str) -> dict[str, Any]:
    """One operation, from its handler's declarations."""
    declared = documented(cls).get(method)
    if declared is None:
        raise LookupError(f"{cls.__name__}.{method.lower()} has no docs (see api/opdocs.py)")
    scope = cls.scopes[method]
    query: list[Param | Group] = list(cls.query.get(method, ()))
    if cls.query_token:
        query.append(ACCESS_TOKEN)
    op: dict[str, Any] = {
        "summary": declared.summary,
        "parameters": [
            *(p.openapi() for p in cls.path),
            *(p.openapi() for p in query),
            *(h.openapi() for h in cls.headers_in.get(method, ())),
        ],
        "responses": _responses(cls, method, declared, query),
        "security": [{"bearer": []}, {"apiKey": []}] if scope else [],
    }
    if scope:
        op["x-scope"] = scope
    if declared.body:
        schema = _body_schema(declared.body)
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    op["operationId"] = operation_id(cls, method)
    op["tags"] = [tag_of(cls)]
    return op


def _rank(route: Route) -> int:
    tag = tag_of(route[1])
    return DOCUMENT_ORDER.index(tag) if tag in DOCUMENT_ORDER else len(DOCUMENT_ORDER)


def _paths(table: Sequence[Route]) -> dict[str, Any]:
    """Path template -> method -> operation, for every method every route serves."""
    paths: dict[str, Any] = {}
    for pattern, cls in sorted(table, key=_rank):
        template = path_template(pattern, tuple(p.name for p in cls.path))
        for method in cls.scopes:
            paths.setdefault(template, {})[method.lower()] = _operation(cls, method)
    return paths


@cache
def openapi_document() -> dict[str, Any]:
    from .app import routes  # the handler modules import this one

    table = routes()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "EzAugent Dashboard API",
            "version": __version__,
            "description": "Monitoring and control plane for fleets of LLM agents.",
        },
        "tags": _tags(table),
        "paths": _paths(table),
        "components": {
            "schemas": _models()[1].get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "API key or JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }
