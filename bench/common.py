"""Shared plumbing: a throwaway redis-server, server subprocesses, result recording."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ezdash.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        url = server.start()
        try:
            yield url
        finally:
            server.stop()


def _wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


BENCH_ADMIN_KEY = "bench-admin-key-0123456789abcdefghijklmnopq"
BENCH_DATA = Path(tempfile.mkdtemp(prefix="ezdash-bench-"))
UNLIMITED = "100000000/1m"


@contextlib.contextmanager
def project_server(redis_url: str, **env: str) -> Iterator[str]:
    """The real service (`ezdash serve`) in its own process, logging only warnings.
    Rate limits are out of reach (their cost is still paid) unless a benchmark says."""
    port = free_port()
    environ = {
        **os.environ,
        "REDIS_URL": redis_url,
        "EZ_PORT": str(port),
        "EZ_DEMO_AGENTS": "0",
        "EZ_LOG_LEVEL": "WARNING",
        "EZ_DATA_DIR": str(BENCH_DATA),
        "EZ_ADMIN_KEY": BENCH_ADMIN_KEY,
        "EZ_RATE_READ": UNLIMITED,
        "EZ_RATE_WRITE": UNLIMITED,
        "EZ_RATE_CONTROL": UNLIMITED,
        "EZ_RATE_PUBLIC": UNLIMITED,
        "EZ_BACKFILL_DAYS": "0",  # benchmarks seed their own data
        "EZ_ANALYST": "false",
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ezdash.cli", "serve"],
        env=environ,
        stdout=subprocess.DEVNULL,
        cwd=REPO,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/health")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


@contextlib.contextmanager
def baseline_server(redis_url: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.baseline_server", str(port), redis_url],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


def median(values: list[float]) -> float:
    return statistics.median(values)


RESULTS: list[str] = []


def report(line: str) -> None:
    print(line, flush=True)
    RESULTS.append(line)


def record(title: str) -> None:
    """Append this run's lines to docs/benchmarks.md under today's date."""
    path = REPO / "docs" / "benchmarks.md"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = f"\n### {title} — {stamp}\n\n```\n" + "\n".join(RESULTS) + "\n```\n"
    with path.open("a") as f:
        f.write(block)
