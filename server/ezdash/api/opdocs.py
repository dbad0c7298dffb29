"""What a handler says about each operation it serves, for the OpenAPI document.

A handler class declares ``docs = {"GET": Op(...), ...}`` next to ``scopes`` and
``query``; ``openapi.py`` walks the route table and adds to each declaration its
scope, its parameters and the problems every operation of its kind can answer.
This module imports nothing of the handlers, so every handler module can import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

REF = "#/components/schemas/{model}"


def ref(name: str) -> dict[str, str]:
    """A reference to the component schema ``name`` (a model of ``models.SCHEMAS``)."""
    return {"$ref": REF.format(model=name)}


def problem(desc: str, schema: str = "Problem") -> dict[str, Any]:
    """A problem+json answer (``schema``: a Problem with extension members)."""
    return {
        "description": desc,
        "content": {"application/problem+json": {"schema": ref(schema)}},
    }


def ok(schema: str | dict[str, Any], desc: str = "OK") -> dict[str, Any]:
    """A JSON answer: ``schema`` is a component schema's name or a schema."""
    body = ref(schema) if isinstance(schema, str) else schema
    return {"description": desc, "content": {"application/json": {"schema": body}}}


def ok_text(desc: str, *media: str) -> dict[str, Any]:
    """An answer that is not JSON: a string in any of ``media``."""
    return {"description": desc, "content": {m: {"schema": {"type": "string"}} for m in media}}


@dataclass(frozen=True)
class Body:
    """A JSON request body, documented as ``model`` validates it (``models.INPUTS``);
    with ``batch``, a JSON array of such items or ``{batch: [...]}``."""

    model: type[BaseModel]
    batch: str | None = None


def batch(model: type[BaseModel], name: str) -> Body:
    """An ingest body: a JSON array of ``model`` items, or ``{name: [...]}``."""
    return Body(model, name)


@dataclass(frozen=True)
class Op:
    """One operation: its summary, the answers particular to it (status -> response
    object) and its request body. The answers every operation of its kind has
    (auth, rate limit, 404, 503, 413, 415) are added by ``openapi.py``."""

    summary: str
    responses: Mapping[str, Any]
    body: Body | None = None
