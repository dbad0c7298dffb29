"""Liveness, readiness and the API's own description."""

from __future__ import annotations

import time

from redis.exceptions import RedisError

from .. import __version__
from .base import APIHandler
from .openapi import openapi_document


class HealthHandler(APIHandler):
    scopes = {"GET": None}

    async def get(self) -> None:
        started = time.perf_counter()
        try:
            await self.services.redis.ping()
        except (RedisError, OSError) as e:
            body = {
                "status": "degraded",
                "version": __version__,
                "redis": {"ok": False, "latency_ms": None, "error": type(e).__name__},
            }
            self.write_json(body, 503)
            return
        latency = round((time.perf_counter() - started) * 1000, 3)
        self.write_json(
            {"status": "ok", "version": __version__, "redis": {"ok": True, "latency_ms": latency}}
        )


class ReadyHandler(APIHandler):
    """503 once shutdown has begun, so a load balancer drains this instance first."""

    scopes = {"GET": None}

    def get(self) -> None:
        if self.services.draining:
            self.write_json({"status": "draining"}, 503)
        else:
            self.write_json({"status": "ready"})


class OpenAPIHandler(APIHandler):
    scopes = {"GET": None}

    def get(self) -> None:
        self.write_json(openapi_document())


default_handlers = [
    (r"/api/health", HealthHandler),
    (r"/api/ready", ReadyHandler),
    (r"/api/openapi.json", OpenAPIHandler),
]
