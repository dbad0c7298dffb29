"""The reference agent in TypeScript (examples/node-agent) against a live server.

It is built with ``tsc --strict`` from the committed lock file, given an agent key made
through the API, and run as a Node process: it works tasks over the gateway (long
polls, leases renewed by its heartbeats while a handler outlasts the visibility
timeout), reports its pretend LLM calls the way an Anthropic caller must (cache reads
and writes added back into input_tokens), and obeys restart and a graceful stop."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO, Api, start_api, stop_api, wait_for

PACKAGE = REPO / "examples" / "node-agent"
AGENT_ID = "node-1"
QUEUE = "summarize"
DELAY_MS = 1700  # longer than the test's visibility timeout (1.5 s): leases must be renewed
TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank",
    "Agents take tasks over HTTP",
    "one",
]
PRICES = json.loads((REPO / "server/ezdash/data/prices.json").read_text())

pytestmark = pytest.mark.skipif(
    shutil.which("npm") is None or shutil.which("node") is None,
    reason="Node.js and npm are not installed (the reference agent needs them)",
)


@pytest.fixture(scope="module")
def built() -> Path:
    """npm ci (only when node_modules is missing or older than the lock file), then tsc."""
    marker = PACKAGE / "node_modules" / ".package-lock.json"  # written by npm ci
    lock = PACKAGE / "package-lock.json"
    if not marker.exists() or lock.stat().st_mtime > marker.stat().st_mtime:
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=PACKAGE,
            check=True,
            timeout=300,
        )
    done = subprocess.run(
        ["npm", "run", "--silent", "build"], cwd=PACKAGE, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    return PACKAGE / "dist" / "main.js"


def expected_usage(text: str) -> dict[str, int]:
    """What the demo handler reports for one call: Anthropic's usage, input made whole."""
    fresh, cached, created, output = 50 + len(text), 1800, 200, 20
    return {
        "input_tokens": fresh + cached + created,
        "cached_tokens": cached,
        "cache_creation_tokens": created,
        "output_tokens": output,
    }


def cost_nanos(u: dict[str, int]) -> int:
    (p,) = [
        m
        for m in PRICES["models"]
        if m["provider"] == "anthropic" and m["model"] == "claude-sonnet-4"
    ]
    fresh = u["input_tokens"] - u["cached_tokens"] - u["cache_creation_tokens"]
    usd = (
        fresh * Decimal(str(p["input_per_mtok"]))
        + u["cached_tokens"] * Decimal(str(p["cache_read_per_mtok"]))
        + u["cache_creation_tokens"] * Decimal(str(p["cache_write_per_mtok"]))
        + u["output_tokens"] * Decimal(str(p["output_per_mtok"]))
    )
    return int((usd * 1000).to_integral_value())  # USD per 1e6 tokens -> nano-USD


async def command_status(api: Api, cid: str, status: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        doc: dict[str, Any] = (await api.get(f"/api/control/commands/{cid}")).json
        return doc if doc["status"] == status else None

    doc: dict[str, Any] = await wait_for(check, 15, what=f"command {cid} {status}")
    return doc


class NodeAgents:
    """Node agent processes of one test, with the key they share; each logs to a file
    of its own, killed and closed at the end whatever happened."""

    def __init__(self, api: Api, built: Path, logs: Path) -> None:
        self.api, self.built, self.logs = api, built, logs
        self.key = ""
        self.procs: list[asyncio.subprocess.Process] = []
        self.sinks: list[Any] = []

    async def issue_key(self, name: str) -> str:
        r = await self.api.post(
            "/api/auth/keys",
            json={"name": name, "scopes": ["agent"], "agent": {"ids": "node-*", "queues": [QUEUE]}},
        )
        assert r.status == 201, r.json
        self.key = str(r.json["key"])
        return self.key

    async def start(self, agent_id: str, delay_ms: int) -> asyncio.subprocess.Process:
        env = {
            **os.environ,
            "EZ_URL": self.api.base,
            "EZ_AGENT_KEY": self.key,
            "EZ_AGENT_ID": agent_id,
            "EZ_QUEUES": QUEUE,
            "EZ_DEMO_DELAY_MS": str(delay_ms),
        }
        sink = (self.logs / f"{agent_id}.log").open("wb")
        self.sinks.append(sink)
        proc = await asyncio.create_subprocess_exec(
            "node", str(self.built), env=env, stdout=sink, stderr=subprocess.STDOUT
        )
        self.procs.append(proc)
        return proc

    def said(self, agent_id: str) -> str:
        return (self.logs / f"{agent_id}.log").read_text()

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for sink in self.sinks:
            sink.close()


@pytest.fixture
async def node_agents(api: Api, built: Path, tmp_path: Path) -> Any:
    agents = NodeAgents(api, built, tmp_path)
    yield agents
    await agents.close()


async def test_the_node_agent_works_tasks_reports_usage_and_obeys_commands(
    api: Api, node_agents: NodeAgents
) -> None:
    await node_agents.issue_key("node agent")
    proc = await node_agents.start(AGENT_ID, DELAY_MS)

    def said() -> str:
        return node_agents.said(AGENT_ID)

    try:

        async def agent() -> dict[str, Any] | None:
            r = await api.get(f"/api/agents/{AGENT_ID}")
            return r.json if r.status == 200 else None

        doc = await wait_for(agent, 15, what="the agent to register")
        assert doc["kind"] == "node" and doc["model"] == "claude-sonnet-4", doc
        assert doc["queues"] == [QUEUE] and doc["transport"] == "http", doc

        # (4) tasks: each succeeds at its first attempt, though it outlasts the timeout
        ids = []
        for text in TEXTS:
            r = await api.post(
                "/api/tasks", json={"type": "summarize", "queue": QUEUE, "payload": {"text": text}}
            )
            assert r.status == 201, r.json
            ids.append(r.json["task"]["id"])

        async def all_done() -> list[dict[str, Any]] | None:
            tasks = [(await api.get(f"/api/tasks/{t}")).json for t in ids]
            return tasks if all(t["status"] == "succeeded" for t in tasks) else None

        tasks = await wait_for(all_done, 30, what="the tasks to succeed")
        for text, task in zip(TEXTS, tasks, strict=True):
            words = text.split()
            assert task["result"] == {"summary": " ".join(words[:5]), "words": len(words)}
            assert task["agent_id"] == AGENT_ID and task["attempts"] == 1, task

        # (5) its usage, exactly: tokens with cache reads and writes, and their cost
        usages = [expected_usage(t) for t in TEXTS]
        want = {k: sum(u[k] for u in usages) for k in usages[0]}
        q = f"from=now-1h&agent={AGENT_ID}"
        tokens = (await api.get(f"/api/metrics/tokens?{q}")).json["totals"]
        assert {k: tokens[k] for k in want} == want, tokens
        costs = (await api.get(f"/api/metrics/costs?{q}&group_by=model")).json
        assert round(costs["totals"]["cost_usd"] * 1e9) == sum(map(cost_nanos, usages)), costs
        assert costs["totals"]["unpriced_requests"] == 0
        assert [s["group"]["model"] for s in costs["series"]] == ["claude-sonnet-4"]
        logs = (await api.get(f"/api/logs/search?agent={AGENT_ID}&q=summarized")).json
        assert sorted(e["task_id"] for e in logs["items"]) == sorted(ids), logs

        # (6) restart: acknowledged, then completed, and counted
        r = await api.post(f"/api/agents/{AGENT_ID}/restart")
        assert r.status == 202, r.json
        cmd = await command_status(api, r.json["command"]["id"], "completed")
        assert cmd["acknowledged_at"] is not None, cmd
        after = (await api.get(f"/api/agents/{AGENT_ID}")).json
        assert after["restarts"] == doc["restarts"] + 1, after

        # (7) a graceful stop while a task runs: the task is finished, then the agent stops
        r = await api.post("/api/tasks", json={"type": "summarize", "queue": QUEUE})
        last = r.json["task"]["id"]

        async def busy() -> bool:
            return bool((await api.get(f"/api/agents/{AGENT_ID}")).json["current_task"] == last)

        await wait_for(busy, 15, what="the agent to take the last task")
        r = await api.fetch("DELETE", f"/api/agents/{AGENT_ID}")
        assert r.status == 202, r.json
        await command_status(api, r.json["command"]["id"], "completed")
        assert (await api.get(f"/api/tasks/{last}")).json["status"] == "succeeded"
        assert await asyncio.wait_for(proc.wait(), 15) == 0, said()
        assert (await api.get(f"/api/agents/{AGENT_ID}")).json["status"] == "stopped"
    finally:
        print(said())  # shown when the test fails


async def test_a_killed_agent_s_task_is_reclaimed_and_finished_once_by_another(
    api: Api, node_agents: NodeAgents
) -> None:
    """SIGKILL an HTTP agent mid-task: nothing tells the server, its lease lapses, the
    task is reclaimed after the visibility timeout and finished once, by the other."""
    await node_agents.issue_key("node agents")
    start = node_agents.start
    try:
        doomed = await start("node-doomed", 120_000)
        r = await api.post("/api/tasks", json={"type": "summarize", "queue": QUEUE})
        tid = r.json["task"]["id"]

        async def held() -> bool:
            t = (await api.get(f"/api/tasks/{tid}")).json
            return bool(t["status"] == "running" and t["agent_id"] == "node-doomed")

        await wait_for(held, 15, what="the first agent to take the task")
        doomed.kill()
        await doomed.wait()
        await start("node-heir", 50)

        async def finished() -> dict[str, Any] | None:
            t: dict[str, Any] = (await api.get(f"/api/tasks/{tid}")).json
            return t if t["status"] == "succeeded" else None

        task = await wait_for(finished, 30, what="the task to be reclaimed and finished")
        assert task["agent_id"] == "node-heir" and task["attempts"] == 2, task
        history = [(h["agent_id"], h["status"]) for h in task["history"]]
        assert history[0][0] == "node-doomed" and history[0][1] != "succeeded", history
        assert history[-1] == ("node-heir", "succeeded"), history
        assert sum(1 for _, status in history if status == "succeeded") == 1, history
    finally:
        await node_agents.close()


async def test_agents_long_polling_through_a_server_restart_lose_nothing(
    api: Api, node_agents: NodeAgents
) -> None:
    """Two Node agents work a queue; the server stops and a new one starts on the same
    port and Redis: they reconnect, every task succeeds once, none held by two."""
    await node_agents.issue_key("node pair")
    for agent_id in ("node-a", "node-b"):
        await node_agents.start(agent_id, 150)
    port = int(api.base.rsplit(":", 1)[1])
    current = api
    try:
        ids = []
        for _i in range(12):
            r = await current.post("/api/tasks", json={"type": "summarize", "queue": QUEUE})
            ids.append(r.json["task"]["id"])

        async def some_done() -> bool:
            r = await current.get(f"/api/tasks?queue={QUEUE}&status=succeeded&limit=500")
            return len(r.json["items"]) >= 3

        await wait_for(some_done, 20, what="a few tasks done before the restart")
        await stop_api(current)
        current = await start_api(api.services.settings, port)
        for _i in range(4):  # and some created after the restart
            r = await current.post("/api/tasks", json={"type": "summarize", "queue": QUEUE})
            ids.append(r.json["task"]["id"])

        async def all_done() -> list[dict[str, Any]] | None:
            tasks = [(await current.get(f"/api/tasks/{t}")).json for t in ids]
            return tasks if all(t["status"] == "succeeded" for t in tasks) else None

        tasks = await wait_for(all_done, 60, what="every task to succeed after the restart")
        for t in tasks:
            wins = [h for h in t["history"] if h["status"] == "succeeded"]
            assert len(wins) == 1, t["history"]
            spans = sorted((h["started_at"], h["finished_at"] or "~") for h in t["history"])
            for (_, end), (start, _) in itertools.pairwise(spans):
                assert end <= start, t["history"]  # attempts never overlap
        assert {t["agent_id"] for t in tasks} <= {"node-a", "node-b"}
    finally:
        await node_agents.close()
        if current is not api:  # the fixture stops the server it holds: the new one
            api.server, api.services = current.server, current.services
            current.client.close()
