"""``ezdash analyst``: the Panel server for the analyst page.

``ezdash serve`` starts it as a child process next to the demo fleet; several API
instances can share one, or it can run on its own host against the same Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import urlparse

import panel as pn
from tornado.ioloop import IOLoop

from ..aio import stop_on_signals
from ..analysis.pool import AnalyticsPool
from ..redis_server import free_port
from ..security.apikeys import KeyStore
from ..security.audit import AuditLog
from ..security.secrets import load_secrets
from ..settings import Settings
from .auth import KeyAuthProvider, cookie_secret
from .data import AnalystData
from .page import AnalystPage

log = logging.getLogger("ezdash.analyst")


def websocket_origins(settings: Settings, port: int) -> list[str]:
    """Hosts whose pages may open the session WebSocket.

    The session rides on a cookie, so any origin allowed here could drive a signed-in
    analyst's session from another site; only this server's own names and the
    configured CORS origins (``EZ_CORS_ORIGINS``) are allowed.
    """
    hosts = {f"localhost:{port}", f"127.0.0.1:{port}", f"{settings.host}:{port}"}
    for origin in settings.cors_origins:
        parsed = urlparse(origin)
        if parsed.netloc:
            hosts.add(parsed.netloc)
    return sorted(hosts)


async def serve_analyst(
    settings: Settings,
    redis_url: str,
    *,
    ready: asyncio.Future[str] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    stop = stop_on_signals(stop)
    secrets = load_secrets(settings)
    pool = AnalyticsPool(settings.analyst_workers)
    data = AnalystData(settings, redis_url, pool)
    port = settings.analyst_port or free_port(settings.host)
    extra: dict[str, Any] = {}
    if settings.auth:
        store = KeyStore(data.redis, data.keys, secrets.key_secret)
        audit = AuditLog(data.redis, data.keys, settings.audit_maxlen)
        extra["auth_provider"] = KeyAuthProvider(store, audit)
        extra["cookie_secret"] = cookie_secret(secrets.key_secret)

    def app() -> Any:
        pn.extension("tabulator")
        page = AnalystPage(data, user=pn.state.user if settings.auth else None)
        page.serve_hooks()
        return page.view()

    server = pn.serve(
        {"/": app},
        port=port,
        address=settings.host,
        show=False,
        start=False,
        loop=IOLoop.current(),
        title="EzAugent analytics",
        websocket_origin=websocket_origins(settings, port),
        **extra,
    )
    try:
        await data.redis.ping()
        server.start()
        base = f"http://{settings.host}:{port}/"
        print(f"EzAugent analyst page on {base}", flush=True)
        if ready is not None and not ready.done():
            ready.set_result(base)
        await stop.wait()
        log.info("analyst page shutting down")
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        pool.close()
        await data.close()
