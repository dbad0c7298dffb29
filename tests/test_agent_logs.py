"""Agent logs: ``ctx.info`` and friends, captured ``logging``, lifecycle entries,
batching, a Redis outage, and the flush at a graceful stop."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from ezdash.agent import LogHandler, LogRecorder, PermanentError, TaskContext
from ezdash.agent.logs import make_entry
from ezdash.keys import Keys
from ezdash.redis_server import RedisServer
from ezdash.store.commands import CommandStore
from ezdash.store.logs import MAX_FIELDS_BYTES, MAX_MESSAGE_CHARS, LogStore
from ezdash.store.scripts import Scripts
from ezdash.store.tasks import TaskStore

from .conftest import Fleet, wait_for

KEYS = Keys()
Doc = dict[str, Any]


async def entries(rds: Redis) -> list[Doc]:
    found: Any = await rds.xrange(KEYS.logs)
    return [orjson.loads(fields["d"]) for _, fields in found]


async def wait_entries(rds: Redis, what: str, ok: Any, timeout: float = 10.0) -> list[Doc]:
    """Wait until ``ok(entries)`` holds; return the entries."""

    async def check() -> list[Doc] | None:
        docs = await entries(rds)
        return docs if ok(docs) else None

    found: list[Doc] = await wait_for(check, timeout, what=what)
    return found


def messages(docs: list[Doc], **match: Any) -> list[str]:
    return [d["message"] for d in docs if all(d.get(k) == v for k, v in match.items())]


def task_store(rds: Redis) -> TaskStore:
    return TaskStore(rds, KEYS, Scripts(rds), events_maxlen=100_000)


async def finished(tasks: TaskStore, tid: str, status: str) -> None:
    async def check() -> bool:
        return await tasks.status(tid) == status

    await wait_for(check, 10, what=f"task {tid} {status}")


def log_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, LogHandler)]


# -- entries ------------------------------------------------------------------------------


def test_make_entry_normalises_and_refuses_programming_errors() -> None:
    doc = make_entry("a-1", "WARN", "hello", task_id="tsk_1", fields={"n": 1, "obj": object()})
    assert (doc["agent_id"], doc["task_id"], doc["level"], doc["message"]) == (
        "a-1",
        "tsk_1",
        "warning",
        "hello",
    )
    assert doc["fields"]["n"] == 1 and doc["fields"]["obj"].startswith("<object object")
    assert isinstance(doc["ts"], int) and abs(doc["ts"] - time.time() * 1000) < 5000
    assert make_entry("a-1", logging.ERROR, "x")["level"] == "error"
    assert make_entry("a-1", 25, "x")["level"] == "info"  # custom levels round down
    assert "task_id" not in make_entry("a-1", "info", "x") and "fields" not in make_entry(
        "a-1", "info", "x"
    )
    long = make_entry("a-1", "info", "x" * (MAX_MESSAGE_CHARS + 10))
    assert len(long["message"]) == MAX_MESSAGE_CHARS and long["message"].endswith("…")
    big = make_entry("a-1", "info", "x", fields={"blob": "y" * MAX_FIELDS_BYTES})
    assert big["fields"]["fields_truncated"] is True
    with pytest.raises(ValueError, match="log level"):
        make_entry("a-1", "verbose", "x")
    with pytest.raises(ValueError, match="empty"):
        make_entry("a-1", "info", "")


async def test_task_entries_carry_agent_and_task_id(fleet: Fleet, rds: Redis) -> None:
    async def handler(ctx: TaskContext) -> Any:
        ctx.info("calling gpt-4o", model="gpt-4o", prompt_tokens=1200)
        ctx.warning("rate limited; backing off", retry_after_s=0.5)
        ctx.log("debug", "raw reply", reply={"choices": 1})
        ctx.error("reply failed validation", field="summary")
        ctx.agent.log("info", "agent-level note from a handler", cache="warm")
        return "ok"

    before = time.time() * 1000
    fleet.start("logger-1", handler)
    tasks = task_store(rds)
    task, _ = await tasks.create(type="summarize", payload={})
    tid = task["id"]
    docs = await wait_entries(
        rds, "the task's entries", lambda d: any("succeeded" in m for m in messages(d))
    )
    after = time.time() * 1000
    mine = [d for d in docs if d.get("task_id") == tid]
    assert [(d["level"], d["message"]) for d in mine[:5]] == [
        ("info", "task started (summarize, attempt 1/3)"),
        ("info", "calling gpt-4o"),
        ("warning", "rate limited; backing off"),
        ("debug", "raw reply"),
        ("error", "reply failed validation"),
    ]
    assert len(mine) == 6 and mine[5]["level"] == "info"
    assert mine[5]["message"].startswith("task succeeded in ")
    assert all(d["agent_id"] == "logger-1" for d in docs)
    assert all(before - 1 <= d["ts"] <= after + 1 for d in docs)
    assert mine[1]["fields"] == {"model": "gpt-4o", "prompt_tokens": 1200}
    assert mine[2]["fields"] == {"retry_after_s": 0.5}
    assert mine[3]["fields"] == {"reply": {"choices": 1}}
    note = next(d for d in docs if d["message"] == "agent-level note from a handler")
    assert "task_id" not in note and note["fields"] == {"cache": "warm"}
    started = next(d for d in docs if d["message"].startswith("agent started"))
    assert "task_id" not in started and started["fields"]["queues"] == ["default"]


async def test_python_logging_in_a_handler_is_captured(
    fleet: Fleet, rds: Redis, request: pytest.FixtureRequest
) -> None:
    app = logging.getLogger("tests.agent_logs.app")
    app.setLevel(logging.DEBUG)  # the handler's INFO is what filters here
    request.addfinalizer(lambda: app.setLevel(logging.NOTSET))

    async def handler(ctx: TaskContext) -> Any:
        app.info("looking up %s", ctx.payload["what"], extra={"doc_count": 3})
        app.debug("below the capture level")
        logging.getLogger("ezdash.agent.custom").warning("the runtime's own: not captured")
        await asyncio.to_thread(app.warning, "from a worker thread of %s", ctx.agent.id)
        try:
            raise KeyError("k")
        except KeyError:
            app.exception("lookup failed")
        return "ok"

    fleet.start("cap-a", handler, queues=["qa"])
    fleet.start("cap-b", handler, queues=["qb"])
    fleet.start("quiet", handler, queues=["qq"], capture_logging=False)
    tasks = task_store(rds)
    ids = {}
    for agent, queue in (("cap-a", "qa"), ("cap-b", "qb"), ("quiet", "qq")):
        ids[agent] = (await tasks.create(type="t", queue=queue, payload={"what": agent}))[0]["id"]
    for tid in ids.values():
        await finished(tasks, tid, "succeeded")
    assert len(log_handlers()) == 2  # cap-a's and cap-b's, on the root logger
    app.warning("logged by the test itself, outside any agent")
    docs = await wait_entries(
        rds,
        "captured lines of both agents",
        lambda d: (
            sum(m.startswith("lookup failed") for m in messages(d)) == 2
            and sum(m.startswith("task succeeded") for m in messages(d)) == 3
        ),
    )
    for agent in ("cap-a", "cap-b"):
        captured = [d for d in docs if d["agent_id"] == agent and "logger" in d.get("fields", {})]
        assert [(d["level"], d["message"].splitlines()[0]) for d in captured] == [
            ("info", f"looking up {agent}"),
            ("warning", f"from a worker thread of {agent}"),
            ("error", "lookup failed"),
        ]
        assert all(d["task_id"] == ids[agent] for d in captured)
        assert captured[0]["fields"] == {"logger": "tests.agent_logs.app", "doc_count": 3}
        assert "Traceback" in captured[2]["message"] and "KeyError" in captured[2]["message"]
        assert captured[2]["fields"]["exc_type"] == "KeyError"
    assert not [d for d in docs if d["agent_id"] == "quiet" and "logger" in d.get("fields", {})]
    assert not messages(docs, message="logged by the test itself, outside any agent")
    assert not [d for d in docs if "runtime's own" in d["message"]]


# -- lifecycle ----------------------------------------------------------------------------


async def test_lifecycle_entries(fleet: Fleet, rds: Redis) -> None:
    async def handler(ctx: TaskContext) -> Any:
        if ctx.payload.get("fail"):
            raise ValueError("model returned garbage")
        if ctx.payload.get("permanent"):
            raise PermanentError("prompt exceeds the context window")
        return "ok"

    agent = fleet.start("life-1", handler)
    run = fleet.agents[-1][1]
    tasks = task_store(rds)
    good = (await tasks.create(type="good", payload={}))[0]["id"]
    bad = (await tasks.create(type="bad", payload={"fail": True}, max_attempts=2))[0]["id"]
    perm = (await tasks.create(type="perm", payload={"permanent": True}))[0]["id"]
    await finished(tasks, good, "succeeded")
    await finished(tasks, bad, "dead")
    await finished(tasks, perm, "failed")
    docs = await wait_entries(
        rds,
        "outcome entries",
        lambda d: len([x for x in d if x.get("task_id") in (bad, perm)]) == 6,
    )
    by_task = {t: [d for d in docs if d.get("task_id") == t] for t in (good, bad, perm)}

    ok = by_task[good]
    assert [d["level"] for d in ok] == ["info", "info"]
    assert ok[0]["message"] == "task started (good, attempt 1/3)"
    assert ok[0]["fields"] == {"type": "good", "queue": "default", "attempt": 1, "max_attempts": 3}
    assert ok[1]["message"].startswith("task succeeded in ")
    assert ok[1]["fields"]["status"] == "succeeded" and ok[1]["fields"]["duration_ms"] >= 0

    failing = by_task[bad]
    assert [(d["level"], d["fields"].get("attempt")) for d in failing] == [
        ("info", 1),
        ("warning", 1),
        ("info", 2),
        ("error", 2),
    ]
    retry, dead = failing[1], failing[3]
    assert retry["message"].startswith(
        "attempt 1/2 failed (ValueError: model returned garbage); retry in "
    )
    assert retry["fields"]["error_type"] == "ValueError" and retry["fields"]["backoff_s"] > 0
    assert retry["fields"]["status"] == "queued"
    assert dead["message"] == "task dead after 2 attempts (ValueError: model returned garbage)"
    assert dead["fields"]["status"] == "dead"

    refused = by_task[perm][-1]
    assert refused["level"] == "error"
    assert refused["message"] == "task failed (PermanentError: prompt exceeds the context window)"

    commands = CommandStore(rds, KEYS, Scripts(rds), events_maxlen=100_000, ttl_s=60)
    cmd, _ = await commands.create("life-1", "restart")
    await wait_entries(
        rds, "restart entries", lambda d: "agent restarted" in messages(d, agent_id="life-1")
    )
    await agent.stop()
    await run
    docs = await entries(rds)  # written by the flush at the stop, no waiting
    agent_level = [
        (d["level"], d["message"]) for d in docs if "task_id" not in d and d["agent_id"] == "life-1"
    ]
    assert agent_level == [
        ("info", "agent started (generic, queues default)"),
        ("info", "command received: restart"),
        ("info", "agent restarting"),
        ("info", "agent restarted"),
        ("info", "agent stopping"),
        ("info", "agent stopped"),
    ]
    received = next(d for d in docs if d["message"] == "command received: restart")
    assert received["fields"] == {"command_id": cmd["id"], "action": "restart", "force": False}


# -- batching -----------------------------------------------------------------------------


async def evalsha_calls(rds: Redis) -> int:
    stats = await rds.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_burst_is_written_in_full_batches(rds: Redis) -> None:
    store = LogStore(rds, KEYS, Scripts(rds), maxlen=1_000_000, retention_ms=7 * 86_400_000)
    recorder = LogRecorder(store, "burst", flush_every_s=0.5, max_batch=200)
    recorder.log("info", "warm-up")  # the first call also loads the script (NOSCRIPT, retry)
    await recorder.flush()
    before = await evalsha_calls(rds)
    for i in range(1000):
        recorder.log("info", f"line {i}", fields={"i": i})

    async def all_written() -> bool:
        return await rds.xlen(KEYS.logs) == 1001

    await wait_for(all_written, 10, what="the burst to be written")
    # One script call per 200 entries: the Redis server counts exactly five.
    assert await evalsha_calls(rds) - before == 5
    docs = await entries(rds)
    assert [d["fields"]["i"] for d in docs[1:]] == list(range(1000))  # in order
    await recorder.close()


async def test_many_lines_from_a_handler_take_few_calls(fleet: Fleet, rds: Redis) -> None:
    n = 600

    async def handler(ctx: TaskContext) -> Any:
        for i in range(n):
            ctx.info("token chunk", i=i)
            await asyncio.sleep(0)  # other tasks (the flusher) run between the lines
        return "ok"

    agent = fleet.start("chatty", handler)
    assert agent.log_recorder is not None
    await wait_entries(rds, "agent started", lambda d: len(d) == 1)
    calls_before = agent.log_recorder.batches
    tid = (await task_store(rds).create(type="t", payload={}))[0]["id"]
    docs = await wait_entries(
        rds,
        "every line",
        lambda d: any(x["message"].startswith("task succeeded") for x in d),
    )
    lines = [d["fields"]["i"] for d in docs if d["message"] == "token chunk"]
    assert lines == list(range(n)) and all(
        d["task_id"] == tid for d in docs if d["message"] == "token chunk"
    )
    calls = agent.log_recorder.batches - calls_before
    # n + 2 entries. Full batches alone would be ceil(602 / 200) = 4 calls; each 0.5 s
    # tick may add one partial batch. One call per line would be 602.
    assert calls <= math.ceil((n + 2) / 200) + 4, calls


# -- Redis away ---------------------------------------------------------------------------


async def test_entries_logged_while_redis_is_down_arrive_after(
    fleet: Fleet, rds: Redis, redis_server: RedisServer
) -> None:
    go, logged, resume = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def handler(ctx: TaskContext) -> Any:
        ctx.info("before the outage")
        await go.wait()
        for i in range(50):
            ctx.info(f"during the outage {i}", i=i)
        logging.getLogger("tests.agent_logs.app").warning("captured during the outage")
        logged.set()
        await resume.wait()
        return "ok"

    agent = fleet.start("outage-1", handler, log_flush_s=0.1)
    recorder = agent.log_recorder
    assert recorder is not None
    await task_store(rds).create(type="t", payload={})
    await wait_entries(rds, "the first line", lambda d: "before the outage" in messages(d))

    redis_server.stop()  # in this thread, as other tests do: forking from a worker is unsafe
    try:
        go.set()
        await logged.wait()
        agent.log("warning", "agent-level line during the outage")

        async def flush_failed() -> bool:
            return recorder.failures > 0

        await wait_for(flush_failed, 30, what="a flush to fail while Redis is down")
        assert recorder.pending >= 52  # nothing written, nothing dropped
    finally:
        redis_server.start()
    await rds.connection_pool.disconnect()  # the test's own client: drop the dead connections
    resume.set()
    docs = await wait_entries(
        rds,
        "the lines logged during the outage",
        lambda d: any(x["message"].startswith("task succeeded") for x in d),
        timeout=30,
    )
    during = [d for d in docs if d["message"].startswith("during the outage")]
    assert [d["fields"]["i"] for d in during] == list(range(50))  # all, once, in order
    assert len(messages(docs, message="agent-level line during the outage")) == 1
    assert len(messages(docs, message="captured during the outage")) == 1
    assert recorder.dropped == 0
    # the runtime's own complaints ("redis trouble") were not turned into entries
    assert not [d for d in docs if str(d.get("fields", {}).get("logger", "")).startswith("ezdash")]
    assert not [d for d in docs if "trouble" in d["message"]]


async def test_a_full_buffer_drops_the_oldest_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=False)
    url = server.start()
    client = Redis.from_url(url, decode_responses=True)
    try:
        store = LogStore(client, KEYS, Scripts(client), maxlen=1_000_000, retention_ms=0)
        recorder = LogRecorder(store, "dropper", flush_every_s=0.05, max_batch=5, max_buffer=10)
        server.stop()
        for i in range(25):
            recorder.log("info", f"line {i}")
        assert (recorder.dropped, recorder.pending) == (15, 10)

        async def flush_failed() -> bool:
            return recorder.failures > 0

        await wait_for(flush_failed, 30, what="a flush to fail")
        server.start()

        async def written() -> list[Doc] | None:
            docs = await entries(client)
            return docs if len(docs) == 11 else None

        docs = await wait_for(written, 30, what="the buffer to be written")
        assert [d["message"] for d in docs[:10]] == [f"line {i}" for i in range(15, 25)]
        assert docs[10]["level"] == "warning" and docs[10]["fields"] == {"dropped": 15}
        assert docs[10]["message"].startswith("15 log entries dropped")
        warned = [r for r in caplog.records if "log entries dropped" in r.getMessage()]
        assert len(warned) == 1 and "15" in warned[0].getMessage()
        await recorder.close()
    finally:
        await client.aclose()
        server.stop()


# -- stopping -----------------------------------------------------------------------------


async def test_graceful_stop_flushes_and_a_crash_does_not(fleet: Fleet, rds: Redis) -> None:
    async def handler(ctx: TaskContext) -> Any:
        ctx.info("one")
        ctx.info("two")
        return "ok"

    tasks = task_store(rds)
    # A minute between flushes: whatever is in Redis before the stop was not flushed
    # by the ticker.
    crasher = fleet.start("crasher", handler, queues=["crash"], log_flush_s=60)
    closer = fleet.start("closer", handler, queues=["close"], log_flush_s=60)
    run = fleet.agents[-1][1]
    crash_task = (await tasks.create(type="t", queue="crash", payload={}))[0]["id"]
    close_task = (await tasks.create(type="t", queue="close", payload={}))[0]["id"]
    await finished(tasks, crash_task, "succeeded")
    await finished(tasks, close_task, "succeeded")
    recorder = closer.log_recorder
    assert recorder is not None

    async def all_buffered() -> bool:  # started, task started, one, two, succeeded
        return recorder.pending == 5

    await wait_for(all_buffered, 10, what="the outcome entry")
    assert await rds.xlen(KEYS.logs) == 0  # nothing written yet

    await crasher.kill()
    await closer.stop()
    await run
    docs = await entries(rds)
    assert not [d for d in docs if d["agent_id"] == "crasher"]  # lost with the "process"
    assert [(d.get("task_id"), d["message"]) for d in docs][:4] == [
        (None, "agent started (generic, queues close)"),
        (close_task, "task started (t, attempt 1/3)"),
        (close_task, "one"),
        (close_task, "two"),
    ]
    assert [d["message"] for d in docs][-2:] == ["agent stopping", "agent stopped"]
    assert recorder.pending == 0
    assert log_handlers() == []  # both agents took their handlers with them


async def test_logging_can_be_turned_off(fleet: Fleet, rds: Redis) -> None:
    async def handler(ctx: TaskContext) -> Any:
        ctx.info("nobody hears this")
        return "ok"

    agent = fleet.start("silent", handler, record_logs=False)
    assert agent.log_recorder is None
    tasks = task_store(rds)
    tid = (await tasks.create(type="t", payload={}))[0]["id"]
    await finished(tasks, tid, "succeeded")
    await agent.stop()
    await fleet.agents[-1][1]
    assert await rds.xlen(KEYS.logs) == 0
    with pytest.raises(ValueError, match="record logs"):
        LogHandler(agent)
