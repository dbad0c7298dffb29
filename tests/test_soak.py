"""A soak of the demo fleet as ``make run`` starts it (issue 10): zero timeout errors
logged while Redis is healthy, and every restart command sent meanwhile completed.

Thirty minutes by default (``EZ_SOAK_S`` shortens it for a try); ``make soak`` runs
it and CI runs ``make soak`` after ``make test``.  Not part of ``make test``, which
stays within its time budget."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from ezdash.redis_server import free_port

from .conftest import ADMIN_KEY, REPO

SOAK_S = float(os.environ.get("EZ_SOAK_S", "1800"))
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
TROUBLE = re.compile(r"Timeout|timed out|redis trouble|Traceback", re.IGNORECASE)

pytestmark = [pytest.mark.soak, pytest.mark.timeout(int(SOAK_S) + 600)]


def _call(base: str, method: str, path: str) -> tuple[int, Any]:
    req = urllib.request.Request(base + path, method=method, headers=AUTH, data=None)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None
    except OSError:
        return 0, None


def _until(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def test_demo_fleet_soak(tmp_path: Path) -> None:
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("EZ_") and k != "REDIS_URL"  # the embedded Redis, as make run
    }
    env.update(
        {
            "EZ_PORT": str(port),
            "EZ_DATA_DIR": str(tmp_path / "data"),
            "EZ_ADMIN_KEY": ADMIN_KEY,
            "EZ_ANALYST": "false",
            "EZ_BACKFILL_DAYS": "1",
            "EZ_ANALYTICS_WORKERS": "1",
        }
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ezdash.cli", "serve"],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        rng = random.Random(10)
        commands: list[tuple[str, float]] = []
        unhealthy: list[float] = []
        try:
            _until(lambda: _call(base, "GET", "/api/ready")[0] == 200, 120, "the server")

            def fleet() -> list[str]:
                status, page = _call(base, "GET", "/api/agents?limit=100")
                ids = [a["id"] for a in page["items"] if a["status"] in ("idle", "busy")]
                return ids if status == 200 and ids else []

            agents = _until(fleet, 60, "the demo fleet")
            began = time.monotonic()
            while time.monotonic() - began < SOAK_S:
                if _call(base, "GET", "/api/ready")[0] != 200:
                    unhealthy.append(time.monotonic() - began)
                status, body = _call(base, "POST", f"/api/agents/{rng.choice(agents)}/restart")
                if status == 202:
                    commands.append((body["command"]["id"], time.monotonic()))
                time.sleep(20)
            outcomes: dict[str, str] = {}
            for cid, _ in commands:

                def ended(cid: str = cid) -> str | None:
                    status, doc = _call(base, "GET", f"/api/control/commands/{cid}")
                    return (
                        doc["status"]
                        if status == 200
                        and doc["status"]
                        not in (
                            "pending",
                            "acknowledged",
                        )
                        else None
                    )

                outcomes[cid] = _until(ended, 120, f"command {cid}")
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    text = log_path.read_text(errors="replace")
    trouble = [line for line in text.splitlines() if TROUBLE.search(line)]
    assert unhealthy == [], f"Redis was not healthy at {unhealthy}"
    assert trouble == [], "\n".join(trouble[:20])
    assert len(commands) >= SOAK_S // 20 - 1
    assert set(outcomes.values()) == {"completed"}, outcomes
