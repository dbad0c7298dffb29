"""Cursors are bound to the query as the client wrote it, so a list asked for with a
relative time (``from=now-2h``, the contract's documented form) pages across time; a
list that resolves times is cut, page after page, from the window its first page
saw. Every list with a cursor is checked the same way."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ezdash.timeutil import parse_time

from .conftest import Api, Fleet, wait_for

pytestmark = pytest.mark.timeout(120)

Seed = Callable[[Api, Fleet], Awaitable[None]]


async def seed_tasks(api: Api, fleet: Fleet) -> None:
    for i, queue in enumerate(["q"] * 7 + ["other"] * 2):
        r = await api.post("/api/tasks", json={"type": "t", "queue": queue, "payload": {"i": i}})
        assert r.status == 201, r.json


async def seed_logs(api: Api, fleet: Fleet) -> None:
    for batch in range(3):  # three batches: entries of different instants
        entries = [
            {"agent_id": agent, "level": "info", "message": f"{batch}.{i}"}
            for i, agent in enumerate(["a1", "a1", "a1", "a2"])
        ]
        assert (await api.post("/api/ingest/logs", json=entries)).status == 202


async def seed_agents(api: Api, fleet: Fleet) -> None:
    for name in ("w1", "w2", "w3", "x1"):
        fleet.start(name, queues=["unused"], kind="k" if name.startswith("w") else "other")

    async def registered() -> bool:
        return len((await api.get("/api/agents?limit=500")).json["items"]) == 4

    await wait_for(registered, what="the agents to register")


async def seed_commands(api: Api, fleet: Fleet) -> None:
    await seed_agents(api, fleet)
    for _ in range(5):
        assert (await api.post("/api/agents/w1/restart")).status == 202
    assert (await api.post("/api/agents/w2/restart")).status == 202


def created(task: dict[str, Any]) -> int:
    return parse_time(task["created_at"])


def recorded(entry: dict[str, Any]) -> int:
    return int(entry["id"].split("-")[0])


# name: (the list as a client asks for it, other filters, how to seed it)
LISTS: dict[str, tuple[str, tuple[str, ...], Seed]] = {
    "tasks": (
        "/api/tasks?queue=q&from=now-2h",
        ("/api/tasks?queue=other&from=now-2h", "/api/tasks?queue=q&from=now-2h&type=t"),
        seed_tasks,
    ),
    "audit": (
        "/api/audit?action=tasks.create&from=now-2h",
        (
            "/api/audit?action=alerts.rules&from=now-2h",
            "/api/audit?action=tasks.create&from=now-2h&result=ok",
        ),
        seed_tasks,
    ),
    "logs": (
        "/api/logs/search?agent=a1&from=now-2h",
        ("/api/logs/search?agent=a2&from=now-2h", "/api/logs/search?agent=a1&from=now-3h"),
        seed_logs,
    ),
    "agents": (
        "/api/agents?kind=k",
        ("/api/agents?kind=other", "/api/agents?kind=k&status=idle"),
        seed_agents,
    ),
    "commands": (
        "/api/control/commands?agent=w1",
        ("/api/control/commands?agent=w2", "/api/control/commands?agent=w1&status=completed"),
        seed_commands,
    ),
}
# the lists that resolve times, and the instant each item is selected by
TIMED: dict[str, Callable[[dict[str, Any]], int]] = {
    "tasks": created,
    "audit": recorded,
    "logs": recorded,
}


def ids(page: dict[str, Any]) -> list[str]:
    return [item["id"] for item in page["items"]]


async def later_than(api: Api, ms: int) -> None:
    """Wait until the Redis clock, which resolves ``now``, is past ``ms``."""

    async def past() -> bool:
        return await api.services.redis_now_ms() > ms

    await wait_for(past, what=f"the Redis clock to pass {ms}")


async def seeded(api: Api, fleet: Fleet, name: str) -> tuple[str, tuple[str, ...], Any]:
    """The list's query, its other filters, and the whole list in one page."""
    path, others, seed = LISTS[name]
    await seed(api, fleet)
    everything = (await api.get(f"{path}&limit=500")).json
    assert len(everything["items"]) >= 3 and everything["next_cursor"] is None
    return path, others, everything


@pytest.mark.parametrize("name", list(LISTS))
async def test_a_list_pages_across_time_each_item_once_in_order(
    api: Api, fleet: Fleet, name: str
) -> None:
    path, others, everything = await seeded(api, fleet, name)

    seen: list[str] = []
    cursor = None
    asked_at = 0
    while True:
        await later_than(api, asked_at)  # each page resolves `now` to another instant
        asked_at = await api.services.redis_now_ms()
        r = await api.get(f"{path}&limit=2" + (f"&cursor={cursor}" if cursor else ""))
        assert r.status == 200, r.json
        seen += ids(r.json)
        cursor = r.json["next_cursor"]
        if cursor is None:
            break
    assert seen == ids(everything)  # each exactly once, in the list's order

    first = (await api.get(f"{path}&limit=2")).json
    for elsewhere in others:
        r = await api.get(f"{elsewhere}&limit=2&cursor={first['next_cursor']}")
        assert r.status == 404 and r.json["errors"][0]["field"] == "cursor", r.json
    # the page size is not part of the query a cursor is bound to
    rest = await api.get(f"{path}&limit=500&cursor={first['next_cursor']}")
    assert ids(first) + ids(rest.json) == ids(everything)


@pytest.mark.parametrize("name", list(TIMED))
async def test_every_page_is_cut_from_the_first_pages_window(
    api: Api, fleet: Fleet, name: str
) -> None:
    path, _, whole = await seeded(api, fleet, name)
    everything, oldest = whole["items"], whole["items"][-1]
    # a window whose start is a second before the oldest item, as of now
    span = await api.services.redis_now_ms() - TIMED[name](oldest) + 1000
    windowed = path.replace("from=now-2h", f"from=now-{span}ms")
    first = (await api.get(f"{windowed}&limit={len(everything) - 1}")).json
    assert ids(first) == [i["id"] for i in everything[:-1]] and first["next_cursor"]

    await later_than(api, TIMED[name](oldest) + span)  # the window's start passed it
    fresh = (await api.get(f"{windowed}&limit=500")).json
    assert oldest["id"] not in ids(fresh)
    rest = (await api.get(f"{windowed}&limit=500&cursor={first['next_cursor']}")).json
    assert ids(rest) == [oldest["id"]]  # the list goes on in the window it began in
