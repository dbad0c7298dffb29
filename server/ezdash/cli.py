"""The ``ezdash`` command.  Flags override the environment (see ``settings.Settings``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from .settings import Settings, env_name, load_settings


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis-url", help="Redis to use (env REDIS_URL); default: embedded")
    p.add_argument("--redis-prefix", help="key prefix (env EZ_REDIS_PREFIX)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")


def _child(p: argparse.ArgumentParser) -> None:
    # Given by `ezdash serve` to the processes it starts: end when that pid is gone.
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ezdash", description="EzAugent Dashboard")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the API (embedded Redis and demo fleet by default)")
    _common(s)
    s.add_argument("--host", help="listen address (env EZ_HOST, default 127.0.0.1)")
    s.add_argument("--port", type=int, help="listen port (env EZ_PORT, default 8888)")
    s.add_argument("--data-dir", help="embedded Redis data (env EZ_DATA_DIR, default .data)")
    s.add_argument("--demo-agents", type=int, help="simulated agents (env EZ_DEMO_AGENTS)")

    k = sub.add_parser("keys", help="create, list and revoke API keys")
    _common(k)
    k.add_argument("--data-dir", help="where the embedded Redis keeps its data")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="create a key and print it (shown once)")
    kc.add_argument("--name", required=True)
    kc.add_argument(
        "--scopes", required=True, help="comma-separated: read,write,control,admin, or agent"
    )
    kc.add_argument("--agent-ids", help="an agent key: the agent ids it acts as, a glob ('ci-*')")
    kc.add_argument("--queues", help="an agent key: comma-separated queues it takes from, or *")
    ksub.add_parser("list", help="list keys (never the keys themselves)")
    kr = ksub.add_parser("revoke", help="revoke a key by id, at once on every instance")
    kr.add_argument("id")

    b = sub.add_parser("backfill", help="write realistic usage history into the rollups")
    _common(b)
    b.add_argument("--data-dir", help="where the embedded Redis keeps its data")
    b.add_argument("--days", type=float, default=30.0, help="days of history (default 30)")
    b.add_argument("--agents", type=int, default=100, help="agents (default 100)")
    b.add_argument("--seed", type=int, default=1)

    a = sub.add_parser("analyst", help="serve the analysts' Panel page")
    _common(a)
    a.add_argument("--host", help="listen address (env EZ_HOST, default 127.0.0.1)")
    a.add_argument(
        "--port", dest="analyst_port", type=int, help="port (env EZ_ANALYST_PORT, default 8889)"
    )
    a.add_argument("--data-dir", help="embedded Redis and secrets (env EZ_DATA_DIR)")
    _child(a)

    d = sub.add_parser(
        "demo", help="run a fleet of simulated agents on a Redis and/or a server's agent gateway"
    )
    _common(d)
    d.add_argument("--agents", type=int, default=None, help="how many (default EZ_DEMO_AGENTS)")
    d.add_argument(
        "--http-agents",
        type=int,
        default=None,
        help="how many of them use the agent gateway (default: all with --url, else none)",
    )
    d.add_argument(
        "--url", dest="demo_url", help="the server whose agent gateway they use (env EZ_DEMO_URL)"
    )
    d.add_argument(
        "--key",
        dest="demo_key",
        help="their agent key, bound to 'demo-http-*' and the demo queues (better in env "
        "EZ_DEMO_KEY: a command line shows in ps)",
    )
    d.add_argument("--speed", type=float, default=1.0, help="time compression of LLM latency")
    d.add_argument("--no-producer", action="store_true", help="do not create demo tasks")
    _child(d)

    r = sub.add_parser(
        "redis-acl",
        help="print ACL SETUSER commands creating the server and agent users on your Redis",
    )
    _common(r)
    r.add_argument(
        "--redis-version",
        help="MAJOR.MINOR of that redis-server (default: asked of REDIS_URL, else 7.0)",
    )

    sub.add_parser(
        "openapi",
        help="print the OpenAPI document the server serves (what clients are generated from)",
    )
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    names = (
        "redis_url",
        "redis_prefix",
        "log_level",
        "host",
        "port",
        "analyst_port",
        "data_dir",
        "demo_agents",
        "demo_url",
        "demo_key",
    )
    # `keys` also takes --data-dir: the same settings field
    overrides: dict[str, Any] = {n: getattr(args, n, None) for n in names}
    if overrides.get("log_level"):
        overrides["log_level"] = str(overrides["log_level"]).upper()
    return load_settings(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "openapi":  # needs no settings: the document is the code's
        import orjson

        from .api.openapi import openapi_document

        sys.stdout.buffer.write(orjson.dumps(openapi_document(), option=orjson.OPT_INDENT_2))
        sys.stdout.buffer.write(b"\n")
        return 0
    if getattr(args, "parent_pid", None) is not None:
        from .lifeline import ORPHAN_GRACE_S, watch_parent

        watch_parent(args.parent_pid, grace=ORPHAN_GRACE_S)
    try:
        settings = settings_from(args)
    except ValidationError as e:
        for err in e.errors(include_url=False):
            where = " " + env_name("_".join(str(x) for x in err["loc"])) if err["loc"] else ""
            # a rule's own words, without pydantic's "Value error, " in front
            text = str(err.get("ctx", {}).get("error", err["msg"]))
            for line in text.splitlines():
                print(f"ezdash: configuration{where}: {line}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "serve":
        from .serve import DataDirBusy, serve

        try:
            asyncio.run(serve(settings))
        except DataDirBusy as e:
            print(f"ezdash: {e}", file=sys.stderr)
            return 1
        return 0
    if args.command == "keys":
        from .keyscli import run_keys

        return asyncio.run(run_keys(settings, args))
    if args.command == "redis-acl":
        return _redis_acl(settings, args.redis_version)
    if args.command == "backfill":
        if args.days <= 0 or args.agents <= 0:
            print("ezdash backfill: --days and --agents must be positive", file=sys.stderr)
            return 2
        asyncio.run(_backfill(settings, args.days, args.agents, args.seed))
        return 0
    if args.command == "analyst":
        try:
            asyncio.run(_analyst(settings))
        except OSError as e:
            print(
                f"ezdash analyst: cannot listen on {settings.host}:{settings.analyst_port} "
                f"({e.strerror}); set EZ_ANALYST_PORT or --port",
                file=sys.stderr,
            )
            return 1
        return 0
    if args.command == "demo":
        n = args.agents if args.agents is not None else settings.demo_agents
        http = args.http_agents
        if http is None:
            http = n if settings.demo_url else 0
        wrong = _demo_problem(settings, n, http)
        if wrong:
            print(f"ezdash demo: {wrong}", file=sys.stderr)
            return 2
        asyncio.run(_demo(settings, n, http, args.speed, not args.no_producer))
        return 0
    return 2


def _redis_acl(settings: Settings, version: str | None) -> int:
    import redis as sync_redis

    from .redis_acl import parse_version, setup_for_own_redis

    if version is None and settings.redis_url:
        client = sync_redis.Redis.from_url(settings.redis_url, socket_timeout=5)
        try:
            version = str(client.info("server")["redis_version"])
        finally:
            client.close()
    commands, notes = setup_for_own_redis(
        settings.redis_prefix, parse_version(version or "7.0"), settings.redis_url
    )
    print("\n".join(commands))  # stdout: only what redis-cli runs
    for line in notes:
        print(f"ezdash redis-acl: {line}", file=sys.stderr)
    return 0


async def _backfill(settings: Settings, days: float, agents: int, seed: int) -> None:
    from .backfill import backfill
    from .cliutil import redis_for
    from .metrics.pricing import load_price_table

    async with redis_for(settings) as url:
        summary = await backfill(
            url,
            days=days,
            agents=agents,
            prefix=settings.redis_prefix,
            tiers=settings.rollup_tiers,
            prices=load_price_table(settings.prices_file),
            seed=seed,
            progress=True,
        )
    print(
        f"backfilled {summary.get('calls', 0):,} calls, "
        f"{summary.get('cost_usd', 0):,.2f} USD in {summary.get('seconds', 0):.1f} s"
    )


def _demo_problem(settings: Settings, n: int, http: int) -> str | None:
    """What stops ``ezdash demo`` from starting, in the words of its options."""
    if n < 0:
        return "--agents must not be negative"
    if not 0 <= http <= n:
        return f"--http-agents must be between 0 and the number of agents ({n})"
    if http and not settings.demo_url:
        return "agents over HTTP need a server: set EZ_DEMO_URL or --url"
    if http and settings.demo_key is None:
        return "agents over HTTP need an agent key: set EZ_DEMO_KEY (or --key)"
    if http < n and not settings.redis_url:
        return "set REDIS_URL or --redis-url (or run every agent over HTTP with --url)"
    return None


async def _demo(settings: Settings, n: int, http: int, speed: float, produce: bool) -> None:
    from .agent.demo import run_fleet

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    grace = settings.shutdown_grace
    await run_fleet(
        settings.redis_url,
        n,
        prefix=settings.redis_prefix,
        heartbeat=settings.heartbeat_interval,
        visibility=settings.visibility_timeout,
        speed=speed,
        stop=stop,
        produce_tasks=produce,
        log_maxlen=settings.log_maxlen,
        log_retention=settings.log_retention,
        http=http,
        url=settings.demo_url,
        key=settings.demo_key.get_secret_value() if settings.demo_key else None,
        # done before `ezdash serve` (which waits EZ_SHUTDOWN_GRACE for us) kills us
        stop_within=max(grace - 1.0, grace / 2),
    )


async def _analyst(settings: Settings) -> None:
    from .analyst.app import serve_analyst
    from .cliutil import redis_for

    async with redis_for(settings) as url:
        await serve_analyst(settings, url)


if __name__ == "__main__":
    sys.exit(main())
