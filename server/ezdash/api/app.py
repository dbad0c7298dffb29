"""The Tornado application: routes from every handler module, then a JSON 404."""

from __future__ import annotations

import inspect
from typing import Any

import tornado.web

from . import agents, control, health, tasks
from .base import APIHandler, NotFoundHandler
from .services import Services

HANDLER_MODULES = (health, agents, control, tasks)
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")


def routes() -> list[tuple[str, type[APIHandler]]]:
    out: list[tuple[str, type[APIHandler]]] = []
    for module in HANDLER_MODULES:
        out.extend(module.default_handlers)
    return out


def check_handler_auth(table: list[tuple[str, type[APIHandler]]]) -> None:
    """Refuse to start with a handler method that made no scope decision."""
    for pattern, cls in table:
        for method in METHODS:
            impl = getattr(cls, method.lower(), None)
            base_impl = getattr(tornado.web.RequestHandler, method.lower(), None)
            if impl is None or impl is base_impl:
                continue
            if method not in cls.scopes:
                raise RuntimeError(f"{cls.__name__}.{method.lower()} ({pattern}) has no scope")
            if not inspect.iscoroutinefunction(impl) and not callable(impl):
                raise RuntimeError(f"{cls.__name__}.{method.lower()} is not callable")


def make_app(services: Services, **extra: Any) -> tornado.web.Application:
    table = routes()
    check_handler_auth(table)
    return tornado.web.Application(
        table,
        default_handler_class=NotFoundHandler,
        services=services,
        compress_response=True,
        **extra,
    )
