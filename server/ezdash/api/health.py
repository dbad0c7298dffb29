"""Liveness, readiness, health and the API's own description.

None of these writes to Redis, and none needs it to answer: a load balancer or an
orchestrator must learn that Redis is away from a 503 here, not from a 500 or a
hang. Their rate limit is kept in this process (``APIHandler._rate_here``).
"""

from __future__ import annotations

import asyncio
import time

from redis.exceptions import RedisError

from .. import __version__
from .asyncapi import asyncapi_document
from .base import APIHandler
from .opdocs import Op, ok
from .openapi import openapi_document

PING_TIMEOUT_S = 1.0
"""A probe answers within about this long, whatever Redis is doing."""


async def ping_ms(handler: APIHandler) -> float | None:
    """Round trip to Redis in milliseconds; None when it does not answer in time."""
    started = time.perf_counter()
    try:
        await asyncio.wait_for(handler.services.redis.ping(), PING_TIMEOUT_S)
    except (RedisError, OSError, TimeoutError):
        return None
    return round((time.perf_counter() - started) * 1000, 3)


class LiveHandler(APIHandler):
    """The event loop answers: that is all liveness means. Never touches Redis, so a
    Redis outage never gets healthy instances restarted."""

    scopes = {"GET": None}
    docs = {"GET": Op("Liveness: the process answers (never touches Redis)", {"200": ok("Live")})}

    def get(self) -> None:
        self.write_json({"status": "ok"})


class HealthHandler(APIHandler):
    scopes = {"GET": None}
    docs = {
        "GET": Op(
            "Liveness and Redis latency",
            {"200": ok("Health"), "503": ok("Health", "Redis unreachable")},
        )
    }

    async def get(self) -> None:
        latency = await ping_ms(self)
        ok = latency is not None
        self.write_json(
            {
                "status": "ok" if ok else "degraded",
                "version": __version__,
                "redis": {"ok": ok, "latency_ms": latency},
            },
            200 if ok else 503,
        )


class ReadyHandler(APIHandler):
    """503 once shutdown has begun, so a load balancer drains this instance first, and
    while Redis does not answer, since nothing but the probes could be served."""

    scopes = {"GET": None}
    docs = {
        "GET": Op(
            "Readiness: 503 while draining or while Redis does not answer",
            {"200": ok("Ready"), "503": ok("Ready", "Draining or no Redis")},
        )
    }

    async def get(self) -> None:
        if self.services.draining:
            self.write_json({"status": "not-ready", "reason": "draining"}, 503)
        elif await ping_ms(self) is None:
            self.write_json({"status": "not-ready", "reason": "redis"}, 503)
        else:
            self.write_json({"status": "ready", "reason": None})


class OpenAPIHandler(APIHandler):
    scopes = {"GET": None}
    docs = {"GET": Op("This document", {"200": ok({"type": "object"})})}

    def get(self) -> None:
        self.write_json(openapi_document())


class AsyncAPIHandler(APIHandler):
    """The AsyncAPI 3.1 document of ``/api/ws`` (``ezdash.api.asyncapi``)."""

    scopes = {"GET": None}
    docs = {"GET": Op("The AsyncAPI 3.1 document of /api/ws", {"200": ok({"type": "object"})})}

    def get(self) -> None:
        self.write_json(asyncapi_document())


default_handlers = [
    (r"/api/health", HealthHandler),
    (r"/api/live", LiveHandler),
    (r"/api/ready", ReadyHandler),
    (r"/api/openapi.json", OpenAPIHandler),
    (r"/api/asyncapi.json", AsyncAPIHandler),
]
