"""The Tornado application: routes from every handler module, then a JSON 404."""

from __future__ import annotations

import inspect
import logging
import re
from typing import Any

import tornado.web
from tornado.httputil import HTTPServerRequest
from tornado.log import access_log

from ..security.apikeys import looks_like_jwt
from . import (
    agents,
    alerts,
    analytics,
    auth,
    control,
    gateway,
    gateway_ws,
    health,
    logs,
    metrics,
    ops,
    realtime,
    tasks,
)
from .base import APIHandler, NotFoundHandler
from .httpserver import client_address
from .services import Services

HANDLER_MODULES = (
    health,
    auth,
    agents,
    control,
    tasks,
    metrics,
    logs,
    realtime,
    alerts,
    analytics,
    ops,
    gateway,
    gateway_ws,
)
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")


def routes() -> list[tuple[str, type[APIHandler]]]:
    out: list[tuple[str, type[APIHandler]]] = []
    for module in HANDLER_MODULES:
        out.extend(module.default_handlers)
    return out


def implemented(cls: type[tornado.web.RequestHandler]) -> list[str]:
    """The methods ``cls`` has a handler method for (Tornado's defaults do not count)."""
    out = []
    for method in METHODS:
        impl = getattr(cls, method.lower(), None)
        if impl is not None and impl is not getattr(tornado.web.RequestHandler, method.lower()):
            out.append(method)
    return out


def check_handler_auth(table: list[tuple[str, type[APIHandler]]]) -> None:
    """Refuse to start with a handler method that made no scope decision."""
    for pattern, cls in table:
        for method in implemented(cls):
            impl = getattr(cls, method.lower())
            if method not in cls.scopes:
                raise RuntimeError(f"{cls.__name__}.{method.lower()} ({pattern}) has no scope")
            if not inspect.iscoroutinefunction(impl) and not callable(impl):
                raise RuntimeError(f"{cls.__name__}.{method.lower()} is not callable")


SECRET_NAMES = frozenset(
    {"access_token", "api_key", "apikey", "key", "token", "id_token", "secret", "password"}
)
QUERY_PAIR = re.compile(r"([^&=?]*)=([^&]*)")


def _secret(name: str, value: str) -> bool:
    """A query value that is, or looks like, a credential, whatever it is called."""
    name = name.lower().replace("-", "_")
    return (
        name in SECRET_NAMES
        or "token" in name
        or "secret" in name
        or value.startswith("ezk_")
        or looks_like_jwt(value)
    )


def redact_uri(uri: str) -> str:
    path, sep, query = uri.partition("?")
    if not sep:
        return uri
    return (
        path
        + "?"
        + QUERY_PAIR.sub(lambda m: f"{m[1]}=[redacted]" if _secret(m[1], m[2]) else m[0], query)
    )


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log line, with any credential in the query string redacted."""
    status = handler.get_status()
    req = handler.request
    services = handler.application.settings.get("services")
    if services is not None:
        route = handler.application.settings["route_of"].get(type(handler), "unmatched")
        services.request_stats.observe(route, req.method or "", status, req.request_time())
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if access_log.isEnabledFor(level):
        access_log.log(
            level,
            "%d %s %s (%s) %.2fms",
            status,
            req.method,
            redact_uri(req.uri or ""),
            req.remote_ip,
            1000.0 * req.request_time(),
        )


class App(tornado.web.Application):
    """The application; every request's client address is settled here, once, before
    any handler runs (see ``httpserver.client_address``): rate limits, audit and the
    access log all read ``request.remote_ip``."""

    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> Any:
        trusted = self.settings["services"].settings.trust_proxy
        if trusted:
            request.remote_ip = client_address(
                request.remote_ip or "", request.headers.get("X-Forwarded-For"), trusted
            )
        return super().find_handler(request, **kwargs)


def make_app(services: Services, **extra: Any) -> tornado.web.Application:
    table = routes()
    check_handler_auth(table)
    return App(
        table,
        default_handler_class=NotFoundHandler,
        services=services,
        route_of={cls: pattern for pattern, cls in table},
        compress_response=True,
        websocket_ping_interval=20,  # finds dead WebSocket peers behind idle NATs
        websocket_max_message_size=64 << 10,
        log_function=log_request,
        **extra,
    )
