"""Logs over HTTP: ingest, search, export and the SSE stream that resumes without gaps."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlparse

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from ezdash.keys import Keys
from ezdash.store.logs import LogTail

from .conftest import ADMIN_KEY, Api, start_api, stop_api, wait_for

pytestmark = pytest.mark.timeout(120)


def entry(i: int, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "agent_id": f"agent-{i % 3}",
        "task_id": f"task-{i % 5}",
        "level": ["debug", "info", "warning", "error", "critical"][i % 5],
        "message": f"step {i} of the Plan",
        "fields": {"i": i},
    }
    return {**base, **kw}


async def ingest(api: Api, entries: list[dict[str, Any]], **kw: Any) -> Any:
    r = await api.post("/api/ingest/logs", json=entries, **kw)
    assert r.status == 202, r.json
    return r


class SSE:
    """A raw SSE client over a real socket: chunked decoding, events, comments."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = b""
        self.events: list[dict[str, Any]] = []
        self.comments: list[str] = []
        self.status = 0
        self.headers: dict[str, str] = {}
        self.ended = False

    @classmethod
    async def open(cls, base: str, path: str, headers: dict[str, str]) -> SSE:
        url = urlparse(base)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        lines = [f"GET {path} HTTP/1.1", f"Host: {url.netloc}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        client = cls(reader, writer)
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode().split("\r\n")
        client.status = int(status_line.split()[1])
        for line in header_lines:
            if ":" in line:
                k, v = line.split(":", 1)
                client.headers[k.strip().lower()] = v.strip()
        return client

    async def _chunk(self) -> bytes:
        size_line = await self.reader.readuntil(b"\r\n")
        size = int(size_line.strip(), 16)
        data = await self.reader.readexactly(size + 2)
        if size == 0:
            self.ended = True
        return data[:-2]

    async def pump(self) -> None:
        """Read one chunk and parse whatever complete events it finished."""
        self.buffer += await self._chunk()
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            event: dict[str, Any] = {}
            for line in block.decode().split("\n"):
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                elif line.startswith("id: "):
                    event["id"] = line[4:]
                elif line.startswith("event: "):
                    event["event"] = line[7:]
                elif line.startswith("data: "):
                    event["data"] = orjson.loads(line[6:])
            if "data" in event:
                self.events.append(event)

    async def until(self, cond: Any, timeout: float = 10.0) -> None:
        async def run() -> None:
            while not cond():
                if self.ended:
                    raise AssertionError("stream ended")
                await self.pump()

        await asyncio.wait_for(run(), timeout)

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def stream_clients() -> AsyncIterator[list[SSE]]:
    opened: list[SSE] = []
    yield opened
    for c in opened:
        c.close()
        await c.writer.wait_closed()


AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def open_stream(api: Api, clients: list[SSE], query: str = "", **headers: str) -> SSE:
    c = await SSE.open(api.base, "/api/logs/stream" + query, {**AUTH, **headers})
    clients.append(c)
    assert c.status == 200, c.status
    assert c.headers["content-type"].startswith("text/event-stream")
    return c


# -- ingest and search ----------------------------------------------------------------


async def test_search_filters_and_pages_newest_first(api: Api) -> None:
    await ingest(api, [entry(i) for i in range(60)])
    everything = (await api.get("/api/logs/search?limit=500")).json["items"]
    assert len(everything) == 60
    assert [e["fields"]["i"] for e in everything] == list(range(59, -1, -1))
    ids = [tuple(map(int, e["id"].split("-"))) for e in everything]
    assert ids == sorted(ids, reverse=True)

    errors = (await api.get("/api/logs/search?level=error&agent=agent-1&limit=500")).json
    assert errors["items"] and all(
        e["level"] in ("error", "critical") and e["agent_id"] == "agent-1" for e in errors["items"]
    )
    assert {e["fields"]["i"] for e in errors["items"]} == {
        i for i in range(60) if i % 5 >= 3 and i % 3 == 1
    }
    by_text = (await api.get("/api/logs/search?q=STEP%2042%20OF%20THE%20plan")).json["items"]
    assert [e["fields"]["i"] for e in by_text] == [42]
    by_task = (await api.get("/api/logs/search?task=task-2&limit=500")).json["items"]
    assert {e["fields"]["i"] % 5 for e in by_task} == {2} and len(by_task) == 12

    seen: list[int] = []
    cursor = None
    while True:
        q = "/api/logs/search?limit=7&level=info" + (f"&cursor={cursor}" if cursor else "")
        page = (await api.get(q)).json
        seen += [e["fields"]["i"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [i for i in range(59, -1, -1) if i % 5 >= 1]

    first = (await api.get("/api/logs/search?limit=5")).json
    other = await api.get(f"/api/logs/search?limit=5&level=error&cursor={first['next_cursor']}")
    assert other.status == 404 and other.json["errors"][0]["field"] == "cursor"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("level=loud", "level"),
        ("from=yesterday-ish", "from"),
        ("limit=0", "limit"),
        ("colour=red", "colour"),
        ("agent=", "agent"),
    ],
)
async def test_bad_search_queries_name_the_field(api: Api, query: str, field: str) -> None:
    r = await api.get(f"/api/logs/search?{query}")
    assert r.status in (400, 422)
    assert r.headers["Content-Type"] == "application/problem+json"
    assert r.json["errors"][0]["field"] == field


async def test_ingest_is_all_or_nothing_and_names_each_bad_entry(api: Api) -> None:
    bad = [
        entry(0),
        entry(1, level="loud"),
        {"message": "no agent"},
        entry(3, fields=[1, 2]),
        entry(4, ts="2999-01-01T00:00:00Z"),
        entry(5, extra=1),
        "not an object",
    ]
    r = await api.post("/api/ingest/logs", json=bad)
    assert r.status == 422
    fields = {e["field"] for e in r.json["errors"]}
    assert {
        "entries[1].level",
        "entries[2].agent_id",
        "entries[3].fields",
        "entries[4].ts",
        "entries[5].extra",
        "entries[6]",
    } <= fields
    assert "entries[0]" not in str(fields)
    assert (await api.get("/api/logs/search")).json["items"] == []

    assert (await api.post("/api/ingest/logs", json=[])).status == 422
    assert (await api.post("/api/ingest/logs", body=b"{nope")).status == 400
    r = await api.post("/api/ingest/logs", json={"entries": [entry(0)], "more": 1})
    assert r.status == 422 and r.json["errors"][0]["field"] == "more"
    big = [entry(i) for i in range(api.services.settings.ingest_max_events + 1)]
    assert (await api.post("/api/ingest/logs", json=big)).status == 413


async def test_ingest_with_an_idempotency_key_counts_a_resend_once(api: Api) -> None:
    batch = [entry(i) for i in range(3)]
    first = await ingest(api, batch, headers={"Idempotency-Key": "k1"})
    again = await ingest(api, batch, headers={"Idempotency-Key": "k1"})
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len((await api.get("/api/logs/search")).json["items"]) == 3
    other = await api.post("/api/ingest/logs", json=batch[:1], headers={"Idempotency-Key": "k1"})
    assert other.status == 422 and "Idempotency-Key" in other.json["detail"]


async def test_search_needs_read_and_ingest_needs_write(api: Api) -> None:
    reader = (await api.post("/api/auth/keys", json={"name": "r", "scopes": ["read"]})).json
    headers = {"Authorization": f"Bearer {reader['key']}"}
    assert (await api.get("/api/logs/search", headers=headers)).status == 200
    r = await api.post("/api/ingest/logs", json=[entry(0)], headers=headers)
    assert r.status == 403
    assert (await api.get("/api/logs/search", headers={"Authorization": ""})).status == 401


# -- export ---------------------------------------------------------------------------


async def _export(api: Api, query: str, accept_gzip: bool = False) -> tuple[Any, bytes, int]:
    chunks: list[bytes] = []
    req = HTTPRequest(
        api.base + "/api/logs/export" + query,
        headers={**AUTH, **({"Accept-Encoding": "gzip"} if accept_gzip else {})},
        streaming_callback=chunks.append,
        decompress_response=False,
        request_timeout=60,
    )
    resp = await AsyncHTTPClient().fetch(req, raise_error=False)
    return resp, b"".join(chunks), len(chunks)


async def test_export_streams_every_match_oldest_first(api: Api) -> None:
    total = 3000
    for start in range(0, total, 1000):
        await ingest(api, [entry(i) for i in range(start, start + 1000)])
    resp, body, chunks = await _export(api, "?format=ndjson")
    assert resp.code == 200
    assert resp.headers["Content-Disposition"].startswith('attachment; filename="logs-')
    rows = [orjson.loads(line) for line in body.splitlines()]
    assert [r["fields"]["i"] for r in rows] == list(range(total))
    assert chunks > 1  # written as it is read, not built whole in memory

    resp, body, _ = await _export(api, "?format=csv&level=critical", accept_gzip=True)
    assert resp.headers["Content-Encoding"] == "gzip"
    table = list(csv.DictReader(io.StringIO(gzip.decompress(body).decode())))
    assert [int(orjson.loads(r["fields"])["i"]) for r in table] == list(range(4, total, 5))
    assert set(table[0]) == {"id", "ts", "level", "agent_id", "task_id", "message", "fields"}

    resp, body, _ = await _export(api, "?format=xml")
    assert resp.code == 422 and orjson.loads(body)["errors"][0]["field"] == "format"


FORMULAS = ['=HYPERLINK("http://x")', "+1", "-2", "@SUM(A1)", "\tx", "\rx", '=a,b;"c"']


async def test_csv_export_neutralises_formulas_unless_asked_not_to(api: Api) -> None:
    entries = [entry(i, message=m) for i, m in enumerate(FORMULAS)]
    entries += [
        entry(90, message="a normal message, 2 + 2 = 4", agent_id="=cmd|' /C calc'!A0"),
        entry(91, message="task and fields", task_id="@t", fields={"=k": "-v"}),
        entry(92, message='one cell\r=HYPERLINK("http://x")'),  # no row of its own
    ]
    await ingest(api, entries)

    async def table(query: str) -> list[dict[str, str]]:
        resp, body, _ = await _export(api, "?format=csv" + query)
        assert resp.code == 200, body
        return list(csv.DictReader(io.StringIO(body.decode(), newline="")))

    safe = await table("")
    assert [r["message"] for r in safe] == ["'" + m for m in FORMULAS] + [
        "a normal message, 2 + 2 = 4",
        "task and fields",
        'one cell\r=HYPERLINK("http://x")',
    ]
    assert safe[-3]["agent_id"] == "'=cmd|' /C calc'!A0"
    assert safe[-2]["task_id"] == "'@t" and orjson.loads(safe[-2]["fields"]) == {"=k": "-v"}
    assert not any(c.startswith(("=", "+", "-", "@", "\t", "\r")) for r in safe for c in r.values())

    verbatim = await table("&escape_formulas=false")
    assert [r["message"] for r in verbatim] == [e["message"] for e in entries]
    assert verbatim[-3]["agent_id"] == "=cmd|' /C calc'!A0" and verbatim[-2]["task_id"] == "@t"
    assert [r["id"] for r in verbatim] == [r["id"] for r in safe]

    resp, body, _ = await _export(api, "?format=ndjson")  # JSON has no formulas: as sent
    assert [orjson.loads(line)["message"] for line in body.splitlines()][:3] == FORMULAS[:3]
    resp, body, _ = await _export(api, "?format=csv&escape_formulas=maybe")
    assert resp.code == 422 and orjson.loads(body)["errors"][0]["field"] == "escape_formulas"


# -- the SSE stream -------------------------------------------------------------------


async def test_stream_delivers_live_entries_then_resumes_without_gaps(
    api: Api, stream_clients: list[SSE]
) -> None:
    await ingest(api, [entry(i) for i in range(3)])  # before: not sent without a resume point
    c = await open_stream(api, stream_clients)
    await ingest(api, [entry(i) for i in range(3, 8)])
    await c.until(lambda: len(c.events) >= 5)
    assert [e["data"]["fields"]["i"] for e in c.events] == [3, 4, 5, 6, 7]
    assert all(e["event"] == "log" and e["id"] == e["data"]["id"] for e in c.events)
    last = c.events[-1]["id"]
    c.close()

    await ingest(api, [entry(i) for i in range(8, 12)])  # missed while away
    again = await open_stream(api, stream_clients, **{"Last-Event-ID": last})
    await again.until(lambda: len(again.events) >= 4)
    await ingest(api, [entry(i) for i in range(12, 14)])  # live after the catch-up
    await again.until(lambda: len(again.events) >= 6)
    assert [e["data"]["fields"]["i"] for e in again.events] == list(range(8, 14))

    by_time = await open_stream(api, stream_clients, "?since=now-1h&level=critical")
    await by_time.until(lambda: len(by_time.events) >= 2)
    assert [e["data"]["fields"]["i"] for e in by_time.events] == [4, 9]


@pytest.mark.parametrize("settings_overrides", [{"log_keepalive": 0.2}])
async def test_stream_sends_keepalive_comments(api: Api, stream_clients: list[SSE]) -> None:
    c = await open_stream(api, stream_clients)
    await c.until(lambda: c.comments.count("keepalive") >= 2, timeout=5)
    assert c.events == []


@pytest.mark.parametrize("settings_overrides", [{"log_keepalive": 1.0}])
async def test_a_filtered_stream_gets_keepalives_while_entries_it_drops_keep_coming(
    api: Api, stream_clients: list[SSE]
) -> None:
    # Another agent logs ten times a keep-alive interval: none of it matches, so
    # the wire is silent, and the comments must still come on time.
    c = await open_stream(api, stream_clients, "?agent=quiet")
    stop = asyncio.Event()

    async def chatter() -> int:
        n = 0
        while not stop.is_set():
            await ingest(api, [entry(n, agent_id="loud")])
            n += 1
            await asyncio.sleep(0.1)
        return n

    talking = asyncio.create_task(chatter())
    try:
        for count in (1, 2, 3):  # each within the interval, with slack for a busy machine
            await c.until(lambda count=count: c.comments.count("keepalive") >= count, 2.5)
    finally:
        stop.set()
        sent = await talking
    assert c.events == []
    assert sent >= 10  # entries kept arriving all along


async def test_stream_takes_a_jwt_in_the_query_and_refuses_bad_resume_points(
    api: Api, stream_clients: list[SSE]
) -> None:
    token = (await api.post("/api/auth/token")).json["access_token"]
    c = await SSE.open(api.base, f"/api/logs/stream?access_token={token}", {})
    stream_clients.append(c)
    assert c.status == 200
    await ingest(api, [entry(1)])
    await c.until(lambda: len(c.events) == 1)

    bad = await SSE.open(api.base, "/api/logs/stream", {**AUTH, "Last-Event-ID": "yesterday"})
    stream_clients.append(bad)
    assert bad.status == 400
    none = await SSE.open(api.base, "/api/logs/stream", {})
    stream_clients.append(none)
    assert none.status == 401


async def test_every_instance_streams_entries_ingested_through_another(
    api: Api, stream_clients: list[SSE]
) -> None:
    other = await start_api(api.services.settings)
    try:
        c = await open_stream(other, stream_clients)
        await ingest(api, [entry(i) for i in range(4)])
        await c.until(lambda: len(c.events) == 4)
        assert [e["data"]["fields"]["i"] for e in c.events] == [0, 1, 2, 3]
    finally:
        c.close()
        await stop_api(other)


async def test_a_reader_that_falls_behind_is_dropped_not_buffered(api: Api) -> None:
    svc = api.services
    assert svc.settings.redis_url
    tail = LogTail(svc.settings.redis_url, Keys(svc.settings.redis_prefix), queue_size=5)
    try:
        queue = await tail.subscribe()
        await ingest(api, [entry(i) for i in range(50)])
        await wait_for(lambda: _has_sign_off(queue), timeout=10, what="the sign-off")
        assert queue.qsize() <= 5
        assert queue not in tail.readers
    finally:
        await tail.close()


async def _has_sign_off(queue: asyncio.Queue[Any]) -> bool:
    await asyncio.sleep(0)
    return None in list(queue._queue)  # type: ignore[attr-defined]


async def test_stream_survives_a_redis_restart_without_gaps(
    api: Api, stream_clients: list[SSE], redis_server: Any
) -> None:
    c = await open_stream(api, stream_clients)
    await ingest(api, [entry(i) for i in range(2)])
    await c.until(lambda: len(c.events) == 2)
    redis_server.stop()  # graceful: the AOF keeps what was accepted
    redis_server.start()  # the SSE connection stays open through the outage
    await api.services.redis.connection_pool.disconnect()

    async def accepted() -> bool:
        r = await api.post("/api/ingest/logs", json=[entry(i) for i in range(2, 4)])
        return r.status == 202

    await wait_for(accepted, timeout=20, what="ingest after the restart")
    await c.until(lambda: len(c.events) >= 4, timeout=20)
    assert [e["data"]["fields"]["i"] for e in c.events] == [0, 1, 2, 3]
    assert len({e["id"] for e in c.events}) == 4
