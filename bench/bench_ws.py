"""WebSocket fan-out: events written to Redis, delivered to many subscribers.

The project (``/api/ws``, topic ``tasks``: one frame built per event, the same bytes
queued to every subscriber, bounded per-client queues) against a bare Tornado
server that tails the same stream and calls ``write_message`` per client
(``bench/ws_baseline.py``). The clients are raw sockets that only count frames, so
client-side parsing costs the same for both. Target: report (no issue sets one).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import orjson
from redis.asyncio import Redis

from ezdash.redis_server import free_port

from .common import BENCH_ADMIN_KEY, REPO, project_server, redis_server, report

CLIENTS = 200
EVENTS = 1000
ROUNDS = 3


def _masked(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + body


class Counter:
    """Counts complete frames on one connection without decoding them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = 0
        self.buffer = b""

    async def read_frames(self) -> None:
        while True:
            chunk = await self.reader.read(1 << 16)
            if not chunk:
                return
            self.buffer += chunk
            buf = self.buffer
            i = 0
            while len(buf) - i >= 2:
                n = buf[i + 1] & 0x7F
                head = 2
                if n == 126:
                    if len(buf) - i < 4:
                        break
                    n = struct.unpack_from("!H", buf, i + 2)[0]
                    head = 4
                elif n == 127:
                    if len(buf) - i < 10:
                        break
                    n = struct.unpack_from("!Q", buf, i + 2)[0]
                    head = 10
                if len(buf) - i < head + n:
                    break
                i += head + n
                self.frames += 1
            self.buffer = buf[i:]


async def connect(port: int, path: str, auth: bool) -> Counter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if auth:
        lines.append(f"Authorization: Bearer {BENCH_ADMIN_KEY}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(head.decode(errors="replace"))
    return Counter(reader, writer)


async def one_round(port: int, path: str, project: bool, redis_url: str) -> float:
    clients = await asyncio.gather(*(connect(port, path, project) for _ in range(CLIENTS)))
    readers = [asyncio.create_task(c.read_frames()) for c in clients]
    try:
        if project:
            for c in clients:
                c.writer.write(_masked('{"op":"subscribe","topics":["tasks"]}'))
                c.writer.write(_masked('{"op":"ping"}'))
            expect_before = 2  # hello, pong
        else:
            expect_before = 1  # hello
        await _until(lambda: all(c.frames >= expect_before for c in clients), 30)
        base = [c.frames for c in clients]
        redis = Redis.from_url(redis_url)
        data = orjson.dumps({"id": "task_x", "status": "queued", "queue": "q", "attempts": 0})
        started = time.perf_counter()
        async with redis.pipeline(transaction=False) as pipe:
            for _ in range(EVENTS):
                pipe.xadd("{ez}:events", {"type": "task.updated", "data": data})
            await pipe.execute()
        try:
            await _until(
                lambda: all(c.frames - b >= EVENTS for c, b in zip(clients, base, strict=True)),
                120,
            )
        except TimeoutError:
            got = sorted(c.frames - b for c, b in zip(clients, base, strict=True))
            raise TimeoutError(
                f"{'project' if project else 'baseline'}: got {got[:3]}..{got[-3:]}"
            ) from None
        elapsed = time.perf_counter() - started
        await redis.aclose()
        return CLIENTS * EVENTS / elapsed
    finally:
        for c in clients:
            c.writer.close()
        for r in readers:
            r.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


async def _until(cond: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("clients did not receive everything in time")
        await asyncio.sleep(0.01)


@contextlib.contextmanager
def baseline(redis_url: str) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.ws_baseline", str(port), redis_url],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


def run() -> None:
    results: dict[str, list[float]] = {"project": [], "baseline": []}
    with (
        redis_server() as url,
        project_server(url, EZ_WS_QUEUE=str(EVENTS * 4)) as base,
        baseline(url) as bport,
    ):
        pport = int(base.rsplit(":", 1)[1])
        for _ in range(ROUNDS):
            results["project"].append(asyncio.run(one_round(pport, "/api/ws", True, url)))
            results["baseline"].append(asyncio.run(one_round(bport, "/ws", False, url)))
    proj, bare = statistics.median(results["project"]), statistics.median(results["baseline"])
    report(
        f"WebSocket fan-out: {EVENTS} events x {CLIENTS} subscribers "
        f"(median of {ROUNDS} rounds; raw-socket clients that count frames)"
    )
    report(f"  project : {proj:10,.0f} deliveries/s   (frame built once, per-client queues)")
    report(f"  baseline: {bare:10,.0f} deliveries/s   (write_message per client)")
    report(f"  ratio (project/baseline): {proj / bare:.2f}   target: report")
