"""Every route and method of the route table, against every credential that must not
get in: the matrix is built from ``routes()``, so an endpoint added tomorrow is
covered without anyone writing a test for it.

Reads with a plausible credential run while the credential is checked (see
``APIHandler.flush``/``finish``); the revoked key, the revoked key's JWT and the
single-scope keys are all used successfully once before the matrix runs, so they
take that speculative path and the gate, not the waiting one, is what is tested.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import jwt

from ezdash.api.app import routes

from .conftest import Api

ALL = ("read", "write", "control", "admin")
SAMPLE_ARG = "probe-1"


@dataclass(frozen=True)
class Case:
    name: str
    headers: dict[str, str]
    expected: int


def concrete(pattern: str) -> str:
    return re.sub(r"\([^)]*\)", SAMPLE_ARG, pattern)


def operations() -> list[tuple[str, str, str]]:
    """(path, method, scope) of every guarded operation the server routes."""
    out = []
    for pattern, cls in routes():
        for method, scope in cls.scopes.items():
            if scope is not None:
                out.append((concrete(pattern), method, scope))
    return out


def sufficient(held: str, required: str) -> bool:
    """An agent key reaches the agent gateway and nothing else, not even ``any``."""
    return held == "admin" or (required == "any" and held != "agent") or held == required


async def make_key(api: Api, scopes: list[str]) -> tuple[str, str]:
    r = await api.post("/api/auth/keys", json={"name": f"matrix {scopes}", "scopes": scopes})
    assert r.status == 201, r.json
    return r.json["key"], r.json["id"]


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_every_route_refuses_every_bad_credential(api: Api) -> None:
    assert len(operations()) >= 35  # the table really was read
    svc = api.services
    revoked_key, revoked_id = await make_key(api, ["admin"])
    token_of_revoked = (await api.post("/api/auth/token", headers=bearer(revoked_key))).json
    assert (await api.get("/api/agents", headers=bearer(revoked_key))).status == 200
    assert (
        await api.get("/api/agents", headers=bearer(token_of_revoked["access_token"]))
    ).status == 200
    assert (await api.fetch("DELETE", f"/api/auth/keys/{revoked_id}")).status == 200
    now = int(time.time())
    expired = jwt.encode(
        {
            "sub": "key:key_gone",
            "kid": "key_gone",
            "scope": "admin",
            "iat": now - 7200,
            "nbf": now - 7200,
            "exp": now - 3600,
            "iss": svc.settings.jwt_issuer,
        },
        svc.secrets.jwt_secret,
        algorithm="HS256",
    )
    scoped: dict[str, str] = {}
    for scope in ("read", "write", "control"):
        key, _ = await make_key(api, [scope])
        assert (await api.post("/api/auth/token", headers=bearer(key))).status == 200
        scoped[scope] = key  # accepted once: its reads now run speculatively
    r = await api.post(
        "/api/auth/keys",
        json={"name": "matrix agent", "scopes": ["agent"], "agent": {"ids": "*", "queues": ["*"]}},
    )
    assert r.status == 201, r.json
    scoped["agent"] = r.json["key"]
    r = await api.post(
        "/api/auth/keys",
        json={"name": "elsewhere", "scopes": ["agent"], "agent": {"ids": "x-*", "queues": ["*"]}},
    )
    other_agents = r.json["key"]  # may act only as agents x-*: never as probe-1

    refused = [
        Case("no credentials", {"Authorization": ""}, 401),
        Case("unknown key", bearer("ezk_" + "x" * 43), 401),
        Case("revoked key", bearer(revoked_key), 401),
        Case("JWT of a revoked key", bearer(token_of_revoked["access_token"]), 401),
        Case("expired JWT", bearer(expired), 401),
        Case("X-API-Key revoked", {"Authorization": "", "X-API-Key": revoked_key}, 401),
    ]
    failures: list[str] = []
    checked = 0
    for path, method, required in operations():
        cases = list(refused)
        cases += [
            Case(f"{held} key", bearer(key), 403)
            for held, key in scoped.items()
            if not sufficient(held, required)
        ]
        if "/agents/" + SAMPLE_ARG in path and required == "agent":
            cases.append(Case("agent key bound to other ids", bearer(other_agents), 403))
        for case in cases:
            body = b"{}" if method in ("POST", "PUT", "PATCH") else None
            r = await api.fetch(
                method,
                path,
                body=body,
                headers={**case.headers, "Content-Type": "application/json"},
            )
            checked += 1
            ctype = r.headers.get("Content-Type", "")
            if r.status != case.expected or not ctype.startswith("application/problem+json"):
                failures.append(f"{method} {path} with {case.name}: {r.status} {ctype}")
            elif r.json["status"] != case.expected:
                failures.append(f"{method} {path} with {case.name}: body says {r.json}")
    assert not failures, "\n".join(failures)
    assert checked > 300
