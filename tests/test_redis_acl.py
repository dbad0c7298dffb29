"""Redis ACL users (issue 12): the server's, and the direct agents' (``ezdash.redis_acl``).

From the key schema: every key ``Keys`` makes is classified (a new one fails here until
it is), no agent pattern reaches a server-only key, and the agent scripts call only
allowed commands on keys the agent patterns cover.  Live, on each supported Redis: a
direct agent logged in as the agent user does all the runtime does while Redis logs no
denial (``ACL LOG``), what agents must not reach is refused, the server works as its
user, and the default user is closed.  ``ezdash serve``: the demo fleet runs as the
agent user, and the passwords survive a restart.  ``ezdash redis-acl``: its commands
make the same users on a Redis of one's own."""

from __future__ import annotations

import asyncio
import re
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import redis
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.retry import Retry

from ezdash.agent import PermanentError, TaskContext
from ezdash.api.services import Services
from ezdash.cli import main
from ezdash.keys import Keys
from ezdash.redis_acl import (
    AGENT_COMMANDS,
    AGENT_READS,
    AGENT_SCRIPTS,
    AGENT_USER,
    AGENT_WRITES,
    SERVER_ONLY,
    SERVER_USER,
    agent_matches,
    key_patterns,
)
from ezdash.redis_server import RedisServer, redis_version
from ezdash.settings import Settings
from ezdash.store.scripts import NAMES, Scripts
from ezdash.store.tasks import Delivery, TaskStore

from .conftest import ADMIN_KEY, FAST, Fleet, stop_api, wait_for
from .test_key_schema import HOLE, LUA, keys_patterns, lua_key_names
from .test_outage import own_api
from .test_persistence import call, run_server
from .test_redis_versions import BINARIES

PREFIX = "ez"
KEYS = Keys(PREFIX)


# -- from the key schema -------------------------------------------------------------
def test_every_key_is_classified_once() -> None:
    named = [*AGENT_WRITES, *AGENT_READS, *SERVER_ONLY]
    assert len(named) == len(set(named))  # no key in two classes
    assert set(named) == set(keys_patterns())  # a new key in keys.py must be classified


def test_what_agents_must_not_reach_is_server_only() -> None:
    assert {
        "api_key",
        "api_key_digests",
        "api_key_ids",
        "api_keys_revoked",
        "audit",
        "secret_fingerprint",
        "alert_rules",
        "idempotency",
        "rate_limit",
    } <= set(SERVER_ONLY)


def test_no_agent_pattern_reaches_a_server_only_key() -> None:
    reached = []
    for name in SERVER_ONLY:
        for pattern in key_patterns(KEYS, name):
            # the pattern itself as a key ('*' a literal character), and with real values
            for key in (pattern, pattern.replace("*", "x1"), pattern.replace("*", "a:b")):
                if agent_matches(PREFIX, key):
                    reached.append((name, key))
    assert reached == []


def test_every_agent_key_is_reached() -> None:
    for name in (*AGENT_WRITES, *AGENT_READS):
        for pattern in key_patterns(KEYS, name):
            assert agent_matches(PREFIX, pattern.replace("*", "x1")), name


def _agent_lua() -> list[Path]:
    assert set(AGENT_SCRIPTS) <= set(NAMES)
    return [LUA / "_lib.lua", *(LUA / f"{n}.lua" for n in AGENT_SCRIPTS)]


def test_agent_scripts_call_only_allowed_commands() -> None:
    called: set[str] = set()
    for path in _agent_lua():
        text = path.read_text()
        for cmd, sub in re.findall(r"redis\.call\('([A-Z]+)'(?:,\s*'([A-Z]+)')?", text):
            called.add(f"{cmd}|{sub}".lower() if f"{cmd}|{sub}".lower() in AGENT_COMMANDS else cmd)
        called.update(re.findall(r"\{'([A-Z]+)'", text))  # {'BITFIELD', key}: unpacked later
    assert len(called) > 25  # the scan found the scripts' commands
    assert sorted(c.lower() for c in called if c.lower() not in AGENT_COMMANDS) == []


def test_keys_the_agent_scripts_build_are_agent_keys() -> None:
    scripts = {p.name for p in _agent_lua()}
    names = [(s, line, n) for s, line, n in lua_key_names() if s in scripts]
    assert len(names) > 30
    outside = [
        (s, line, n) for s, line, n in names if not agent_matches(PREFIX, n.replace(HOLE, "x"))
    ]
    assert outside == []


# -- live, on each supported Redis ---------------------------------------------------
@pytest.fixture(params=[k for k, v in BINARIES.items() if v])
def acl_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(
        tmp_path / "redis", binary=BINARIES[request.param], appendonly=False, acl_prefix=PREFIX
    )
    server.start()
    yield server
    server.stop()


def denials(url: str) -> list[dict[str, Any]]:
    """What Redis refused, as the ACL LOG has it (read as the server user)."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return [
            {k: e[k] for k in ("username", "reason", "context", "object")}
            for e in cast(list[dict[str, Any]], client.acl_log(count=1000))
        ]
    finally:
        client.close()


def server_settings(url: str, data_dir: Path) -> Settings:
    return Settings(redis_url=url, data_dir=data_dir, **FAST)


@pytest.fixture
async def server_side(acl_redis: RedisServer, tmp_path: Path) -> AsyncIterator[Services]:
    """The server's stores as the server user (no background sweep: what agents do for
    themselves, reclaiming and promoting, must work as the agent user)."""
    svc = Services.create(server_settings(acl_redis.url, tmp_path / "data"), acl_redis.url)
    yield svc
    await svc.close()


async def handler(ctx: TaskContext) -> Any:
    ctx.info("working", n=ctx.payload.get("n"))
    ctx.record_usage(
        model="gpt-4o-mini", provider="openai", input_tokens=10, output_tokens=5, latency_ms=12.0
    )
    fail = ctx.payload.get("fail")
    if fail == "permanent":
        raise PermanentError("no")
    if fail == "once" and ctx.attempt == 1:
        raise RuntimeError("try again")  # retried after a back-off (the delayed set)
    if ctx.payload.get("hold"):
        await asyncio.sleep(ctx.payload["hold"])  # several heartbeats: leases renewed
    return {"ok": ctx.payload}


async def task_done_by_an_agent(server_url: str, agent_url: str, tmp_path: Path) -> str:
    """A task created as the server user and done by an agent as the agent user: its id."""
    svc = Services.create(server_settings(server_url, tmp_path / "data"), server_url)
    fleet = Fleet(agent_url)
    try:
        fleet.start("one-task", handler)
        made, _ = await svc.tasks.create(type="t", payload={"n": 1})

        async def done() -> bool:
            return await svc.tasks.status(made["id"]) == "succeeded"

        await wait_for(done, 15, what="the task done by an agent as the agent user")
        return str(made["id"])
    finally:
        await fleet.close()
        await svc.close()


async def test_a_direct_agent_does_all_it_does_as_the_agent_user(
    acl_redis: RedisServer, server_side: Services
) -> None:
    tasks, commands = server_side.tasks, server_side.commands
    fleet = Fleet(acl_redis.agent_url)
    agent_redis = Redis.from_url(acl_redis.agent_url, decode_responses=True)
    try:
        w1 = fleet.start("acl-w1", handler)

        async def agents_connected() -> bool:
            users = [c["user"] for c in await server_side.redis.client_list()]
            return users.count(AGENT_USER) >= 2  # its own and its blocking reads'

        await wait_for(agents_connected, 10, what="the agent's connections")

        async def status(tid: str) -> str | None:
            return await tasks.status(tid)

        async def settle(tid: str, want: str, timeout: float = 15) -> None:
            async def done() -> bool:
                return await status(tid) == want

            await wait_for(done, timeout, what=f"task {tid} {want}")

        made = {
            "ok": (await tasks.create(type="t", payload={"n": 1}))[0]["id"],
            "permanent": (await tasks.create(type="t", payload={"fail": "permanent"}))[0]["id"],
            "once": (await tasks.create(type="t", payload={"fail": "once"}))[0]["id"],
            "hold": (await tasks.create(type="t", payload={"hold": 1.0}))[0]["id"],
        }
        # the demo fleet's producer creates tasks as the agent user (task_create)
        producer = TaskStore(agent_redis, KEYS, Scripts(agent_redis), events_maxlen=100_000)
        made["produced"] = (await producer.create(type="t", payload={"n": 2}))[0]["id"]
        for name, want in (
            ("ok", "succeeded"),
            ("permanent", "failed"),
            ("once", "succeeded"),
            ("hold", "succeeded"),
            ("produced", "succeeded"),
        ):
            await settle(made[name], want)

        # cancelled while running: the lease is lost and the report answered stale
        blocked, _ = await tasks.create(type="t", payload={"hold": 30})
        await settle(blocked["id"], "running")
        await tasks.cancel(blocked["id"])

        async def let_go() -> bool:
            return blocked["id"] not in w1.running

        await wait_for(let_go, 10, what="the cancelled task's handler to end")

        # a delivery held by a vanished agent is reclaimed by another agent (XAUTOCLAIM)
        lost, _ = await tasks.create(type="t", queue="lost", payload={"n": 3})
        assert isinstance(await tasks.take("ghost", ["lost"]), Delivery)
        w2 = fleet.start("acl-w2", handler, queues=["lost"])
        await settle(lost["id"], "succeeded")
        doc = await tasks.get(lost["id"], history=True)
        assert doc is not None
        assert [(h["agent_id"], h["status"]) for h in doc["history"]] == [
            ("ghost", "lost"),
            ("acl-w2", "succeeded"),
        ]

        async def completes(cid: str) -> None:
            async def check() -> bool:
                doc = await commands.get(cid)
                return doc is not None and doc["status"] == "completed"

            await wait_for(check, 15, what=f"command {cid} completed")

        cmd, _ = await commands.create("acl-w1", "restart")
        await completes(cmd["id"])
        assert w1.restarts == 1

        # a forced stop hands the running task back to its queue (task_requeue abandon)
        held, _ = await tasks.create(type="t", payload={"hold": 30})
        await settle(held["id"], "running")
        cmd, _ = await commands.create("acl-w1", "stop", force=True)
        await completes(cmd["id"])
        await settle(held["id"], "queued")
        cmd, _ = await commands.create("acl-w2", "stop")
        await completes(cmd["id"])
        assert w2.status == "stopped"

        admin = server_side.redis
        assert await admin.zscore(KEYS.heartbeats, "acl-w1") is not None
        assert await admin.xlen(KEYS.metrics.raw) >= 7  # usage of every handler call
        assert await admin.exists(KEYS.metrics.as_of)
        entries = cast(list[tuple[str, dict[str, str]]], await admin.xrange(KEYS.logs))
        logged = {orjson.loads(fields["d"])["agent_id"] for _, fields in entries}
        assert logged == {"acl-w1", "acl-w2"}
        assert denials(acl_redis.url) == []  # nothing the agents did was refused
    finally:
        await fleet.close()
        await agent_redis.aclose()


async def test_what_agents_must_not_reach_is_refused(
    acl_redis: RedisServer, server_side: Services
) -> None:
    await server_side.bootstrap_admin_key()  # an API key record and its digest exist
    await server_side.redis.xadd(KEYS.audit, {"action": "x"})
    agent = redis.Redis.from_url(acl_redis.agent_url, decode_responses=True)
    try:
        # allowed commands on server-only keys: refused by key
        for command in (
            ["HMGET", KEYS.api_key_digests, "x"],
            ["HMGET", KEYS.api_key("x"), "digest"],
            ["XREVRANGE", KEYS.audit, "+", "-", "COUNT", "1"],
            ["GET", KEYS.alert_rules],
            ["GET", KEYS.secret_fingerprint],
            ["SET", KEYS.idempotency("p", "s", "k"), "forged"],
        ):
            with pytest.raises(NoPermissionError):
                agent.execute_command(*command)
        # and from inside a script: every call a script makes is checked too
        sha = agent.script_load("return redis.call('XREVRANGE', ARGV[1], '+', '-', 'COUNT', 1)")
        with pytest.raises(ResponseError, match=r"(?i)permission|can't"):
            agent.evalsha(sha, 0, KEYS.audit)
        # dangerous commands: refused whatever the keys
        for command in (
            ["FLUSHALL"],
            ["FLUSHDB"],
            ["CONFIG", "GET", "*"],
            ["CONFIG", "SET", "appendonly", "no"],
            ["KEYS", "*"],
            ["SCAN", "0"],
            ["DEL", KEYS.tasks],
            ["HGETALL", KEYS.api_key_digests],
            ["ACL", "LIST"],
            ["SCRIPT", "FLUSH"],
            ["EVAL", "return 1", "0"],
            ["MONITOR"],
            ["SHUTDOWN", "NOSAVE"],
        ):
            with pytest.raises(NoPermissionError):
                agent.execute_command(*command)
        for command in (["DEBUG", "SLEEP", "0"], ["MODULE", "LIST"]):
            # 7.x refuses these to everyone by default (enable-debug/module-command),
            # before it looks at the ACL; 6.2 refuses them by the ACL
            with pytest.raises(ResponseError, match=r"(?i)permission|not allowed"):
                agent.execute_command(*command)
        forge = ["XADD", KEYS.agent_commands("someone"), "*", "command", "c", "action", "stop"]
        if redis_version(acl_redis.binary) >= (7, 0):
            with pytest.raises(NoPermissionError):  # read-only: no forged commands
                agent.execute_command(*forge)
        else:
            agent.execute_command(*forge)  # 6.2 has no read-only patterns (documented)
        assert agent.ping()  # still up: SHUTDOWN and friends really were refused
    finally:
        agent.close()
    refused = denials(acl_redis.url)
    assert {d["username"] for d in refused} == {AGENT_USER}
    assert {"reason": "key", "context": "lua", "object": KEYS.audit} in [
        {k: d[k] for k in ("reason", "context", "object")} for d in refused
    ]


def test_the_default_user_and_wrong_passwords_are_refused(acl_redis: RedisServer) -> None:
    for user, password in ((None, None), ("default", "x"), (SERVER_USER, "x"), (AGENT_USER, "x")):
        client = redis.Redis(
            host=acl_redis.host,
            port=acl_redis.port,
            username=user,
            password=password,
            retry=Retry(NoBackoff(), 0),  # a refusal is the answer: no retries with back-off
        )
        try:
            with pytest.raises(AuthenticationError):
                client.ping()
        finally:
            client.close()


async def test_the_server_works_as_its_user(acl_redis: RedisServer, tmp_path: Path) -> None:
    api = await own_api(acl_redis, tmp_path)  # logs in as the server user (acl_redis.url)
    try:
        assert await api.services.redis.acl_whoami() == SERVER_USER
        assert (await api.post("/api/tasks", json={"type": "t", "payload": {}})).status == 201
        made = await api.post("/api/auth/keys", json={"name": "r", "scopes": ["read"]})
        assert made.status == 201
        reader = made.json["key"]
        assert reader.startswith("ezk_")
        got = await api.get("/api/agents", headers={"Authorization": f"Bearer {reader}"})
        assert got.status == 200
        for path in ("/api/summary", "/api/queues", "/api/alerts", "/api/health"):
            assert (await api.get(path)).status == 200, path

        async def audited() -> bool:
            r = await api.get("/api/audit")
            return r.status == 200 and len(r.json["items"]) >= 2

        await wait_for(audited, 10, what="the audit records")
    finally:
        await stop_api(api)
    assert denials(acl_redis.url) == []


@pytest.mark.parametrize("name", [k for k, v in BINARIES.items() if v])
async def test_the_aof_replays_what_scripts_wrote_under_the_acl(name: str, tmp_path: Path) -> None:
    """Redis replays the AOF as the default user, and 7.0 checks that user's rights on
    every replayed MULTI/EXEC, which is how it writes scripts down: a default user
    stripped of its rights silently loses every script's writes at a restart."""
    binary = BINARIES[name]
    data = tmp_path / "redis"
    server = RedisServer(data, binary=binary, appendonly=True, acl_prefix=PREFIX)
    server.start()
    made = await task_done_by_an_agent(server.url, server.agent_url, tmp_path)
    server.stop()  # SIGTERM: the AOF is fsynced
    server.start()
    try:
        admin = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            assert admin.hget(KEYS.task(made), "status") == "succeeded", binary
        finally:
            admin.close()
        assert "NOPERM" not in server.log_path.read_text(), binary
    finally:
        server.stop()


# -- ezdash serve --------------------------------------------------------------------
def _private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_serve_runs_the_demo_fleet_as_the_agent_user_and_keeps_passwords(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    settings = Settings(data_dir=data, port=0, demo_agents=2, admin_key=ADMIN_KEY, **FAST)
    base, stop, server = await run_server(settings)
    try:
        url = (data / "redis.url").read_text().strip()
        agent_url = (data / "redis-agent.url").read_text().strip()
        assert f"//{SERVER_USER}:" in url and f"//{AGENT_USER}:" in agent_url
        admin = Redis.from_url(url, decode_responses=True)
        try:

            async def fleet_works() -> bool:
                users = {c["user"] for c in await admin.client_list()}
                _, page = await call(base, "GET", "/api/tasks?status=succeeded")
                return AGENT_USER in users and bool(page["items"])

            await wait_for(fleet_works, 60, interval=0.2, what="the demo fleet to finish a task")
        finally:
            await admin.aclose()
        assert denials(url) == []
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)
    files = [data / "redis.url", data / "redis-agent.url"]
    files += [data / "redis" / "passwords.json", data / "redis" / "users.acl"]
    assert [f.name for f in files if not _private(f)] == []
    passwords = (data / "redis" / "passwords.json").read_text()
    assert passwords.count(SERVER_USER) == 1 and passwords.count(AGENT_USER) == 1

    base, stop, server = await run_server(settings.model_copy(update={"demo_agents": 0}))
    try:
        assert (data / "redis" / "passwords.json").read_text() == passwords
        again = (data / "redis-agent.url").read_text().strip()
        assert again.split("@")[0] == agent_url.split("@")[0]  # same user and password
        fleet = Fleet(again)
        fleet.start("after-restart")
        try:
            status, body = await call(base, "POST", "/api/tasks", {"type": "t", "payload": {}})
            assert status == 201

            async def done() -> bool:
                _, doc = await call(base, "GET", f"/api/tasks/{body['task']['id']}")
                return bool(doc["status"] == "succeeded")

            await wait_for(done, 15, what="the task to be done by an agent after the restart")
        finally:
            await fleet.close()
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)


# -- ezdash redis-acl ----------------------------------------------------------------
async def test_redis_acl_commands_make_the_users_on_ones_own_redis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    own = RedisServer(tmp_path / "redis", appendonly=False)  # no ACL: the operator's Redis
    own.start()
    try:
        assert main(["redis-acl", "--redis-url", own.url]) == 0
        out, err = capsys.readouterr()
        admin = redis.Redis.from_url(own.url)
        try:
            for line in out.splitlines():
                assert admin.execute_command(*line.split()) == b"OK"
        finally:
            admin.close()
        server_url = re.findall(rf"redis://{SERVER_USER}:[^@\s]+@\S+", err)[0]
        agent_url = re.findall(rf"redis://{AGENT_USER}:[^@\s]+@\S+", err)[0]
        await task_done_by_an_agent(server_url, agent_url, tmp_path)
        agent = redis.Redis.from_url(agent_url)
        try:
            with pytest.raises(NoPermissionError):
                agent.xrevrange(KEYS.audit, count=1)
        finally:
            agent.close()
        assert [d for d in denials(server_url) if d["object"] != KEYS.audit] == []
    finally:
        own.stop()
