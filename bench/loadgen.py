"""A small HTTP/1.1 keep-alive load generator, run in its own process.

It parses only the status line and Content-Length, so the client costs far
less than the servers it measures (the 2-core machines here make that matter).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import statistics
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    bytes: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def _conn(
    host: str, port: int, reqs: list[bytes], until: float, lat: list[float], stats: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = 0
    try:
        while time.perf_counter() < until:
            req = reqs[i % len(reqs)]
            i += 1
            t0 = time.perf_counter()
            writer.write(req)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            lat.append((time.perf_counter() - t0) * 1000)
            stats[1] += len(body)
            if not status_line.startswith((b"HTTP/1.1 2", b"HTTP/1.0 2")):
                stats[0] += 1
    finally:
        writer.close()


def _request(
    method: str, path: str, host: str, body: bytes | None, headers: dict[str, str]
) -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: keep-alive"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + (body or b"")


async def _run(
    url: str,
    paths: list[str],
    method: str,
    bodies: list[bytes] | None,
    headers: dict[str, str],
    concurrency: int,
    seconds: float,
) -> LoadResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    reqs = [
        _request(method, p, f"{host}:{port}", bodies[i % len(bodies)] if bodies else None, headers)
        for i, p in enumerate(paths)
    ]
    lat: list[float] = []
    stats = [0, 0]
    start = time.perf_counter()
    until = start + seconds
    await asyncio.gather(*(_conn(host, port, reqs, until, lat, stats) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")
    return LoadResult(
        len(lat), stats[0], elapsed, statistics.median(lat) if lat else float("nan"), p99, stats[1]
    )


def _worker(args: tuple[object, ...], out: mp.Queue) -> None:  # type: ignore[type-arg]
    out.put(asyncio.run(_run(*args)))  # type: ignore[arg-type]


def load(
    url: str,
    paths: list[str],
    *,
    method: str = "GET",
    bodies: list[bytes] | None = None,
    headers: dict[str, str] | None = None,
    concurrency: int = 16,
    seconds: float = 5.0,
) -> LoadResult:
    """Drive ``url`` + each path (round robin) from a separate process."""
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    proc = ctx.Process(
        target=_worker,
        args=((url, paths, method, bodies, headers or {}, concurrency, seconds), out),
    )
    proc.start()
    result: LoadResult = out.get(timeout=seconds + 60)
    proc.join(30)
    return result
