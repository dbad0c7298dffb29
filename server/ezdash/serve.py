"""``ezdash serve``: the API, the embedded Redis when no REDIS_URL is set, and the demo fleet.

Shutdown order matters for "nothing lost": first readiness turns 503, then the
demo fleet stops gracefully (its agents report the tasks they hold: those on the
agent gateway through this server, so the listener is still open), then the listener
closes, then our Redis clients close, and last the embedded Redis gets SIGTERM, which
makes it fsync its AOF before exiting.

When this process is killed outright (SIGKILL, the OOM killer), every child still ends
within a few seconds: the embedded Redis gets SIGTERM from the kernel
(``redis_server.popen_tied``), and the demo fleet, the analyst page and the analytics
workers each watch their parent (``ezdash.lifeline``).

The embedded Redis has two ACL users (``ezdash.redis_acl``): this process, the analyst
page and the shell commands log in as the server user, the demo fleet as the agent user,
the one direct agents get.  An operator's ``REDIS_URL`` is used as given, by all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

from tornado.netutil import bind_sockets

from .aio import stop_on_signals
from .api.app import make_app
from .api.httpserver import Server, make_http_server
from .api.services import Services
from .redis_acl import without_credentials
from .redis_server import RedisServer, die_with_parent
from .security.secrets import write_private
from .settings import Settings

log = logging.getLogger("ezdash.serve")


class DataDirBusy(RuntimeError):
    pass


def lock_data_dir(data_dir: Path) -> IO[str]:
    """One embedded Redis per data directory; a second instance is told how to share it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = (data_dir / "ezdash.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        # The file's name, not its content: the URL holds the server user's password.
        raise DataDirBusy(
            f"{data_dir} is in use by another ezdash; to run another instance on the same "
            f"data, start it with REDIS_URL=$(cat {data_dir / 'redis.url'}) "
            "(and another EZ_PORT)"
        ) from None
    return handle


async def first_run_history(services: Services, redis_url: str) -> None:
    """An empty store gets a few weeks of the demo fleet's history, so every chart has
    data at once; written in the background while the server already answers."""
    from .agent.demo import http_count
    from .backfill import backfill

    s = services.settings
    agents = max(s.demo_agents, 12)
    print(f"empty metrics store: backfilling {s.backfill_days} days of demo history...", flush=True)
    summary = await backfill(
        redis_url,  # its own connection, packed by hiredis, off the server's pool
        days=s.backfill_days,
        agents=agents,
        http_agents=http_count(agents, s.demo_http_share),  # under the ids serve runs
        prefix=s.redis_prefix,
        tiers=services.tiers,
        prices=services.prices,
        progress=True,
    )
    print(
        f"backfill done: {summary.get('calls', 0):,} calls, "
        f"{summary.get('cost_usd', 0):,.2f} USD of history",
        flush=True,
    )


DEMO_KEY_ID = "key_demo_fleet"
"""The agent key of the demo fleet's HTTP agents: one record, issued anew at each start."""


def local_base(host: str, port: int) -> str:
    """This server's base URL as a process on the same host reaches it (a wildcard
    listen address is reached on loopback)."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def demo_on_gateway(services: Services, port: int) -> tuple[list[str], dict[str, str]]:
    """The arguments and environment that put part of the demo fleet (``EZ_DEMO_HTTP_SHARE``)
    on this server's own agent gateway, so the HTTP path is used whenever we run.

    Its agent key is bound to the HTTP agents' ids (``demo-http-*``) and the demo
    queues, and given to the child in its environment, not on its command line (which
    ``ps`` shows).  It is issued anew at each start under one fixed id (``KeyStore.
    replace``), because that is what an operator expects of a key the server makes for
    itself: one entry in ``ezdash keys list`` however often it restarts; no secret kept
    on disk to hand out again (only a digest is stored, so reuse would mean writing
    the key down); the previous key dead at once, and one revoked by hand staying dead
    (the next start issues another; ``EZ_DEMO_HTTP_SHARE=0`` turns them off).

    With no HTTP agents to run, the key is left alone: another instance on the same
    Redis (the README's second instance runs ``EZ_DEMO_AGENTS=0``) may be the one whose
    fleet holds it, and one that no running process holds is only a digest in Redis.
    The count is always passed, so an ``EZ_DEMO_URL`` in our environment (meant for a
    standalone ``ezdash demo``) cannot put the whole fleet on some gateway.
    """
    from .agent.demo import HTTP_IDS, QUEUES, http_count
    from .security.apikeys import AgentBinding

    s = services.settings
    n = http_count(s.demo_agents, s.demo_http_share)
    if n == 0:
        return ["--http-agents", "0"], {}
    key = await services.api_keys.replace(
        DEMO_KEY_ID,
        "demo fleet (HTTP agents)",
        ["agent"],
        agent=AgentBinding(HTTP_IDS, QUEUES),
        created_by="ezdash serve",
    )
    return ["--http-agents", str(n), "--url", local_base(s.host, port)], {"EZ_DEMO_KEY": key}


async def start_child(args: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    """``ezdash ARGS`` as a child that ends when this process does, however it ends.

    Its own session, so Ctrl-C in the terminal reaches only us and we stop it first (see
    the shutdown order above).  For a SIGKILL of ours, PR_SET_PDEATHSIG gives it SIGTERM
    at once on Linux (this event loop's thread forks it and lives as long as we serve),
    and ``--parent-pid`` starts its lifeline (``ezdash.lifeline``) anywhere.
    """
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ezdash.cli",
        *args,
        "--parent-pid",
        str(os.getpid()),
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )


async def stop_child(child: asyncio.subprocess.Process | None, grace: float) -> None:
    """SIGTERM (its graceful stop), then SIGKILL if it has not ended within ``grace``."""
    if child is None or child.returncode is not None:
        return
    child.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(child.wait(), grace)
    except TimeoutError:
        child.kill()
        await child.wait()


async def serve(
    settings: Settings,
    *,
    ready: asyncio.Future[str] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    stop = stop_on_signals(stop)

    embedded: RedisServer | None = None
    lock: IO[str] | None = None
    url = settings.redis_url
    if not url:
        lock = lock_data_dir(settings.data_dir)
        embedded = RedisServer(settings.data_dir / "redis", acl_prefix=settings.redis_prefix)
        url = await asyncio.to_thread(embedded.start)
        # With the passwords in them: only this user may read them (0600).
        write_private(settings.data_dir / "redis.url", url + "\n")
        write_private(settings.data_dir / "redis-agent.url", embedded.agent_url + "\n")
        log.info(
            "embedded redis-server at %s (data in %s; ACL users in %s)",
            without_credentials(url),
            embedded.data_dir,
            embedded.acl_path,
        )

    # an operator's REDIS_URL: the demo fleet uses it as given
    agent_url = embedded.agent_url if embedded is not None else url
    services = Services.create(settings, url)
    demo: asyncio.subprocess.Process | None = None
    analyst: asyncio.subprocess.Process | None = None
    server: Server | None = None
    try:
        await services.redis.ping()
        await services.check_secrets()
        new_key = await services.bootstrap_admin_key()
        app = make_app(services)
        server = make_http_server(app, settings)
        sockets = bind_sockets(settings.port, settings.host)
        server.add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        services.start_background()
        services.spawn(services.pool.warm_up())  # fits answer fast from the first request
        if settings.backfill_days > 0 and not await services.redis.exists(
            services.keys.metrics.as_of
        ):
            services.background.append(  # cancelled, not awaited, at shutdown
                asyncio.create_task(first_run_history(services, url), name="first-run-history")
            )
        over_http, http_env = await demo_on_gateway(services, port)
        if settings.demo_agents > 0:
            env = {"REDIS_URL": agent_url, "EZ_REDIS_PREFIX": settings.redis_prefix, **http_env}
            demo = await start_child(
                ["demo", "--agents", str(settings.demo_agents), *over_http], env
            )
        if settings.analyst:
            # Its own process: charts and sessions never share this event loop.
            env = {
                "REDIS_URL": url,
                "EZ_REDIS_PREFIX": settings.redis_prefix,
                "EZ_DATA_DIR": str(settings.data_dir),  # the same secrets.json
                "EZ_ANALYST_PORT": str(settings.analyst_port),
                "EZ_HOST": settings.host,
            }
            analyst = await start_child(["analyst"], env)
        base = f"http://{settings.host}:{port}"
        print(f"EzAugent Dashboard API on {base}/api  (health: {base}/api/health)", flush=True)
        if new_key:
            print(
                "\nNo API key existed, so an admin key was created. It is shown this once:\n"
                f"\n    {new_key}\n\n"
                f"Use it as 'Authorization: Bearer <key>', e.g.\n"
                f"    curl -H 'Authorization: Bearer {new_key}' {base}/api/agents\n"
                "Make more with 'ezdash keys create --name NAME --scopes read', or set "
                "EZ_ADMIN_KEY.\n",
                flush=True,
            )
        if ready is not None and not ready.done():
            ready.set_result(base)
        await stop.wait()
        log.info("shutting down")
    finally:
        services.draining = True
        await stop_child(demo, settings.shutdown_grace)  # while its HTTP agents reach us
        if server is not None:
            server.stop()
        await stop_child(analyst, settings.shutdown_grace)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.close_all_connections(), settings.shutdown_grace)
        await services.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        if lock is not None:
            lock.close()
