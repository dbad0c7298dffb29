"""Checks a real response against the server's own OpenAPI document."""

from __future__ import annotations

import re
from typing import Any

import jsonschema

from ezdash.api.openapi import openapi_document

from .conftest import Response


def find_operation(method: str, path: str) -> tuple[str, dict[str, Any]]:
    doc = openapi_document()
    bare = path.split("?")[0]
    for template, ops in doc["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, bare) and method.lower() in ops:
            return template, ops[method.lower()]
    raise AssertionError(f"{method} {bare} is not in the OpenAPI document")


def _validate(instance: Any, schema: dict[str, Any]) -> None:
    full = {**schema, "components": openapi_document()["components"]}
    jsonschema.validate(instance, full, cls=jsonschema.Draft202012Validator)


def check_request(method: str, path: str, body: Any) -> None:
    """``body`` is a request body the document admits for this operation."""
    _, op = find_operation(method, path)
    _validate(body, op["requestBody"]["content"]["application/json"]["schema"])


def check_response(method: str, path: str, resp: Response) -> None:
    _, op = find_operation(method, path)
    spec = op["responses"].get(str(resp.status))
    assert spec is not None, f"{method} {path} answered {resp.status}, not documented"
    ctype = resp.headers["Content-Type"].split(";")[0]
    assert ctype in spec["content"], f"{ctype} not documented for {resp.status}"
    _validate(resp.json, spec["content"][ctype]["schema"])
