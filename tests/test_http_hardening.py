"""What an attacker tries at the HTTP layer: forged client addresses, oversized bodies
and heads, slow connections, odd methods, secrets in URLs. Real sockets throughout;
raw ones where a polite client library would hide what the server does."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from typing import Any

import orjson
import pytest

from ezdash.api.httpserver import client_address

from .conftest import ADMIN_KEY, Api, wait_for

MB = 1 << 20


def nets(*specs: str) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_network(s) for s in specs)


def test_client_address_takes_the_right_most_untrusted_hop() -> None:
    proxy = nets("10.0.0.0/8", "127.0.0.1/32")
    # no trusted proxies: the header is never read
    assert client_address("127.0.0.1", "6.6.6.6", ()) == "127.0.0.1"
    # a peer that is not a trusted proxy: its header is ignored
    assert client_address("203.0.113.9", "6.6.6.6", proxy) == "203.0.113.9"
    # through our proxies: the first hop from the right that is not ours
    assert client_address("10.0.0.2", "6.6.6.6, 198.51.100.7, 10.0.0.1", proxy) == ("198.51.100.7")
    # what a client prepends itself cannot win
    assert client_address("127.0.0.1", "1.1.1.1, 198.51.100.7", proxy) == "198.51.100.7"
    # malformed hops are the client's writing: the hop that passed them on is taken
    assert client_address("10.0.0.2", "evil, 10.0.0.1", proxy) == "10.0.0.1"
    assert client_address("10.0.0.2", "[2001:db8::1]:443", proxy) == "2001:db8::1"
    assert client_address("10.0.0.2", "198.51.100.7:5555", proxy) == "198.51.100.7"
    # every hop ours: the left-most is the client
    assert client_address("10.0.0.2", "10.0.0.3, 10.0.0.1", proxy) == "10.0.0.3"


@pytest.mark.parametrize("settings_overrides", [{"rate_public": "5/1m"}])
async def test_forged_forwarded_for_changes_neither_bucket_nor_audit(api: Api) -> None:
    statuses = []
    for i in range(7):
        r = await api.get(
            "/api/health",
            headers={"Authorization": "", "X-Forwarded-For": f"198.51.100.{i}", "X-Real-IP": "9.9"},
        )
        statuses.append(r.status)
    assert statuses == [200] * 5 + [429, 429]
    created = await api.post(
        "/api/tasks", json={"type": "t", "payload": {}}, headers={"X-Forwarded-For": "6.6.6.6"}
    )
    assert created.status == 201
    audit = await wait_for(lambda: _audit(api, "tasks.create"), what="audit record")
    assert audit[0]["client"] == "127.0.0.1"


@pytest.mark.parametrize(
    "settings_overrides", [{"rate_public": "5/1m", "trust_proxy": "127.0.0.1"}]
)
async def test_a_trusted_proxy_forwards_the_client_address(api: Api) -> None:
    statuses = []
    for i in range(7):
        r = await api.get(
            "/api/health",
            headers={"Authorization": "", "X-Forwarded-For": f"6.6.6.6, 198.51.100.{i}"},
        )
        statuses.append(r.status)
    assert statuses == [200] * 7  # one bucket per forwarded client
    created = await api.post(
        "/api/tasks",
        json={"type": "t", "payload": {}},
        headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.5"},
    )
    assert created.status == 201
    audit = await wait_for(lambda: _audit(api, "tasks.create"), what="audit record")
    assert audit[0]["client"] == "203.0.113.5"


async def _audit(api: Api, action: str) -> list[dict[str, Any]]:
    r = await api.get(f"/api/audit?action={action}")
    items: list[dict[str, Any]] = r.json["items"]
    return items


# -- raw HTTP -----------------------------------------------------------------------
def _port(api: Api) -> int:
    return int(api.base.rsplit(":", 1)[1])


async def raw_exchange(
    api: Api, head: bytes, body_chunks: list[bytes] | None = None, timeout: float = 30
) -> tuple[int, dict[str, str], bytes]:
    """Send a request as a careless client would (the whole body, no Expect), then
    read the answer until the server closes or the answer is complete."""
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(api))
    try:
        writer.write(head)
        for chunk in body_chunks or []:
            writer.write(chunk)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        return await asyncio.wait_for(read_response(reader), timeout)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await reader.readline()
    assert status_line, "the server closed without an answer"
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return status, headers, body


def request_head(method: str, path: str, extra: str = "", length: int | None = None) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authorization: Bearer {ADMIN_KEY}",
        "Content-Type: application/json",
    ]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize("size_mb", [2, 5, 20])
async def test_big_bodies_get_413_problem_json(api: Api, size_mb: int) -> None:
    size = size_mb * MB
    chunk = b"x" * MB
    status, headers, body = await raw_exchange(
        api, request_head("POST", "/api/tasks", length=size), [chunk] * size_mb
    )
    assert status == 413
    assert headers["content-type"] == "application/problem+json"
    assert orjson.loads(body)["type"].endswith("/too-large")


async def test_big_bodies_refused_before_they_are_sent(api: Api) -> None:
    """Expect: 100-continue: the answer comes at once and no body need be sent."""
    head = request_head("POST", "/api/tasks", "Expect: 100-continue", length=50 * MB)
    status, _, body = await raw_exchange(api, head, timeout=5)
    assert status == 413 and orjson.loads(body)["status"] == 413


async def test_chunked_bodies_are_counted_as_they_arrive(api: Api) -> None:
    head = request_head("POST", "/api/ingest/logs", "Transfer-Encoding: chunked")
    piece = b"y" * (256 << 10)
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece)] * 12 + [b"0\r\n\r\n"]  # 3 MiB
    status, headers, body = await raw_exchange(api, head, chunks)
    assert status == 413 and headers["content-type"] == "application/problem+json"
    # a chunked body within the limit is accepted
    doc = orjson.dumps([{"agent_id": "a", "level": "info", "message": "hello"}])
    ok = [b"%x\r\n%s\r\n" % (len(doc), doc), b"0\r\n\r\n"]
    status, _, body = await raw_exchange(api, head, ok)
    assert status == 202, body


async def test_oversized_heads_get_431(api: Api) -> None:
    head = request_head("GET", "/api/agents", "X-Filler: " + "a" * (200 << 10))
    status, headers, body = await raw_exchange(api, head)
    assert status == 431
    assert headers["content-type"] == "application/problem+json"
    assert orjson.loads(body)["status"] == 431
    # the server goes on serving
    assert (await api.get("/api/agents")).status == 200


@pytest.mark.parametrize(
    "settings_overrides", [{"http_idle_timeout": 1.0, "http_body_timeout": 1.0}]
)
async def test_slow_and_idle_connections_are_closed(api: Api) -> None:
    async def closed_within(send: bytes, limit: float) -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(api))
        started = time.monotonic()
        writer.write(send)
        try:
            deadline = started + limit
            while time.monotonic() < deadline:
                writer.write(b"X")  # trickle, as a slowloris does
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                try:
                    data = await asyncio.wait_for(reader.read(1024), 0.3)
                except TimeoutError:
                    continue
                if not data:
                    return time.monotonic() - started
            raise AssertionError(f"connection still open after {limit}s")
        finally:
            writer.close()

    trickled = await closed_within(b"GET /api/agents HTTP/1.1\r\nHost: x\r\nX-Slow: ", 10)
    assert trickled < 5
    body = await closed_within(request_head("POST", "/api/tasks", length=1000), 10)
    assert body < 5
    # a keep-alive connection left idle is closed too
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(api))
    writer.write(request_head("GET", "/api/live"))
    status, _, _ = await read_response(reader)
    assert status == 200
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(1), 10) == b""
    assert time.monotonic() - started < 5
    writer.close()


async def test_undeclared_methods_get_405_with_allow_and_an_audit_record(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for method in ("TRACE", "PROPFIND", "PATCH"):
        r = await api.fetch(method, "/api/tasks")
        assert r.status == 405, (method, r.status)
        assert r.headers["Content-Type"] == "application/problem+json"
        assert set(r.headers["Allow"].split(", ")) == {"GET", "POST", "OPTIONS"}
    r = await api.fetch("TRACE", "/api/tasks/tsk_x/retry")
    assert r.status == 405 and r.headers["Allow"] == "OPTIONS, PUT"
    assert "Traceback" not in caplog.text and "Uncaught" not in caplog.text

    async def audited() -> list[dict[str, Any]]:
        items = (await api.get("/api/audit?result=failed")).json["items"]
        return [i for i in items if i["status"] == 405]

    records = await wait_for(audited, what="405 audit records")
    assert {r["action"] for r in records} >= {"TRACE /api/tasks", "PROPFIND /api/tasks"}


async def test_secrets_are_redacted_from_the_access_log_whatever_their_name(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="tornado.access")
    secrets = {
        "api_key": "ezk_" + "s" * 43,
        "key": "some-raw-admin-key-0123456789abcdefghij",
        "token": "opaque-token-value-123",
        "x_auth_token": "another-token-value",
        "anything": "ezk_" + "t" * 43,
        "jwtish": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
    }
    query = "&".join(f"{k}={v}" for k, v in secrets.items())
    await api.get(f"/api/agents?{query}&status=idle")
    text = caplog.text
    for value in secrets.values():
        assert value not in text
    assert "status=idle" in text and "api_key=[redacted]" in text


async def test_live_needs_nothing(api: Api) -> None:
    r = await api.get("/api/live", headers={"Authorization": ""})
    assert r.status == 200 and r.json == {"status": "ok"}
    assert r.headers["RateLimit-Policy"].startswith('"public"')
