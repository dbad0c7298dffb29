"""Lease tokens: how an agent on the HTTP gateway proves which attempt it holds.

An agent on Redis keeps its ``Delivery`` in memory; an agent over HTTP gets a token
instead, and every lease renewal and finish presents it.  The token names the agent,
the task, the attempt and the queue entry, signed with the server's key secret, so
any instance (sharing the secret) reads it without storing anything and an agent
cannot make one up for a task it was never given.  The token is a claim, not the
truth: the task scripts still fence on (agent, attempt), so a token for an attempt
that was reclaimed and given to another agent finishes nothing (409).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

_DOMAIN = b"ezdash-lease:"


@dataclass(frozen=True, slots=True)
class Lease:
    """An attempt held by an agent: all ``TaskStore.finish``/``lease`` need of it."""

    agent_id: str
    id: str
    attempt: int
    entry: str


def _sig(secret: bytes, body: bytes) -> str:
    mac = hmac.new(secret, _DOMAIN + body, hashlib.sha256).digest()[:18]
    return base64.urlsafe_b64encode(mac).decode()


def lease_token(secret: bytes, lease: Lease) -> str:
    body = "\n".join((lease.agent_id, lease.id, str(lease.attempt), lease.entry)).encode()
    return base64.urlsafe_b64encode(body).decode().rstrip("=") + "." + _sig(secret, body)


def read_token(secret: bytes, token: str) -> Lease | None:
    """The lease a token stands for, or None when it is not one this service signed."""
    text, _, sig = token.partition(".")
    try:
        body = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return None
    if not hmac.compare_digest(_sig(secret, body), sig):
        return None
    parts = body.decode(errors="replace").split("\n")
    if len(parts) != 4 or not parts[2].isdigit():
        return None
    return Lease(parts[0], parts[1], int(parts[2]), parts[3])
