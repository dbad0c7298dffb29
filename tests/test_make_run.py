"""The README's first command, run for real: `make run` in a fresh copy of the project
creates its own .venv, installs, starts the embedded Redis, the API and the demo
fleet, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from ezdash.redis_server import free_port

from .conftest import REPO


def _project_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [line for line in out.splitlines() if line and (REPO / line).is_file()]


def _get(url: str, key: str = "") -> tuple[int, object]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, None
    except OSError:
        return 0, None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _status(url: str) -> int:
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_make_run_from_a_fresh_copy(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    work = tmp_path / "project"
    for rel in _project_files():
        dest = work / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest)
    port = free_port()
    analyst_port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EZ_", "VIRTUAL_ENV")) and k != "REDIS_URL"
    }
    env.update(
        {
            "EZ_PORT": str(port),
            "EZ_DEMO_AGENTS": "3",
            "EZ_HEARTBEAT_INTERVAL": "1",
            "EZ_BACKFILL_DAYS": "2",
            "EZ_ANALYST_PORT": str(analyst_port),
        }
    )
    log = (tmp_path / "make-run.log").open("w")
    proc = subprocess.Popen(
        ["make", "run"],
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 480  # includes creating .venv and installing
        status = 0
        while time.monotonic() < deadline and proc.poll() is None:
            status, _ = _get(base + "/health")
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200, (tmp_path / "make-run.log").read_text()[-3000:]
        # the first start creates an admin key and prints it once
        printed = re.search(r"^\s+(ezk_\S+)$", (tmp_path / "make-run.log").read_text(), re.M)
        assert printed, (tmp_path / "make-run.log").read_text()[-3000:]
        key = printed.group(1)
        assert _get(base + "/agents")[0] == 401
        agents: list[dict[str, object]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(agents) < 3:
            _, body = _get(base + "/agents", key)
            agents = body["items"] if isinstance(body, dict) else []
            time.sleep(0.2)
        assert len(agents) == 3 and all(str(a["id"]).startswith("demo-") for a in agents)
        # an empty store gets history at once: two days of the fleet's usage
        cost: object = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            _, cost = _get(base + "/metrics/costs?from=now-2d&step=1h", key)
            if isinstance(cost, dict) and cost["totals"]["cost_usd"] > 0:
                break
            time.sleep(0.5)
        assert isinstance(cost, dict) and cost["totals"]["cost_usd"] > 0
        # the analyst page runs next to the API and asks for a key first
        page = f"http://127.0.0.1:{analyst_port}/"
        deadline = time.monotonic() + 60
        answer = 0
        while time.monotonic() < deadline and answer != 200:
            answer = _status(page + "login")
            time.sleep(0.3)
        assert answer == 200, (tmp_path / "make-run.log").read_text()[-3000:]
        assert _status(page) == 302  # not signed in: sent to the login form
        assert (work / ".venv" / "bin" / "ezdash").exists()
        assert any((work / ".data" / "redis" / "appendonlydir").iterdir())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        code = proc.wait(60)
        log.close()
    text = (tmp_path / "make-run.log").read_text()
    assert "Traceback" not in text, text[-3000:]
    # make exits 2, or dies of the SIGINT itself, when its child stops on Ctrl-C
    assert code in (0, 2, -signal.SIGINT), text[-2000:]
    assert "shutting down" in text
    status, _ = _get(base + "/health")
    assert status == 0  # nothing left listening
    assert _status(f"http://127.0.0.1:{analyst_port}/login") == 0
