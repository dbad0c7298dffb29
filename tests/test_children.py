"""No process of ours outlives the one that started it, SIGKILL included.

End to end: every descendant of a real ``ezdash serve`` (analytics workers and their
resource tracker, the demo fleet, the analyst page, the embedded redis-server) is gone
within seconds of serve being SIGKILLed.  Unit level: the lifeline (``ezdash.lifeline``)
ends an orphan, the workers of any ``AnalyticsPool`` end with the pool's owner, and a
child forked for a short-lived thread is not killed when that thread ends.

Processes are found through /proc and told apart from a later process with the same
pid by their start time; an exited child that nobody reaped (a zombie) counts as gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import pytest

from ezdash.redis_server import free_port, popen_tied

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")

T = TypeVar("T")


@dataclass(frozen=True)
class Proc:
    pid: int
    start: int  # clock ticks after boot
    cmdline: str

    @property
    def kind(self) -> str:
        for needle, kind in (
            ("redis-server", "redis"),
            ("ezdash.cli demo", "demo"),
            ("ezdash.cli analyst", "analyst"),
            ("resource_tracker", "tracker"),
            ("multiprocessing.spawn", "worker"),
        ):
            if needle in self.cmdline:
                return kind
        return "other"


def _stat(pid: int) -> tuple[str, int, int] | None:
    """State, parent pid and start time of a live process, else None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name in () may hold spaces
    if fields[0] in ("Z", "X"):
        return None
    return fields[0], int(fields[1]), int(fields[19])


def descendants(root: int) -> list[Proc]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(st[1], []).append(int(entry.name))
    found: list[Proc] = []
    todo = [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            st = _stat(pid)
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if st is not None:
                found.append(Proc(pid, st[2], cmdline.decode(errors="replace").strip()))
                todo.append(pid)
    return found


def track(pid: int) -> Proc:
    """The process running as ``pid`` now; if none is, one that is never alive."""
    st = _stat(pid)
    return Proc(pid, st[2] if st else -1, "")


def alive(proc: Proc) -> bool:
    st = _stat(proc.pid)
    return st is not None and st[2] == proc.start


def wait_until(cond: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {value!r}")
        time.sleep(0.05)
    return value


def kill_left(procs: list[Proc]) -> list[Proc]:
    """After a failure: end what the test started, so the suite does not inherit it."""
    left = [p for p in procs if alive(p)]
    for proc in left:
        os.kill(proc.pid, signal.SIGKILL)
    return left


def wait_gone(procs: list[Proc], timeout: float, what: str) -> None:
    try:
        wait_until(lambda: not any(alive(p) for p in procs), timeout, what)
    except AssertionError as e:
        raise AssertionError(f"{e}; still running: {kill_left(procs)}") from None


@pytest.fixture
def python() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``python -c CODE ARGS`` with a pipe on stdout; kill what is left after."""
    started: list[subprocess.Popen[str]] = []

    def run(code: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append(proc)
        return proc

    yield run
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def line(stream: IO[str] | None) -> str:
    assert stream is not None
    return stream.readline().strip()


# -- the lifeline on its own --------------------------------------------------------

PARENT = """
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid())])
    print(child.pid, flush=True)
    if sys.argv[2] == "stays":
        time.sleep(600)
"""

WATCHING = """
    import os, signal, sys, time
    from ezdash.lifeline import watch_parent
    {setup}
    watch_parent(int(sys.argv[1]), grace={grace}, interval=0.05)
    print("watching", flush=True)
    time.sleep(600)
"""


PLAIN = WATCHING.format(setup="", grace=0)
ASKS = WATCHING.format(
    setup="signal.signal(signal.SIGTERM, lambda *_: (print('stopping', flush=True), sys.exit(0)))",
    grace=30,
)
IGNORES = WATCHING.format(setup="signal.signal(signal.SIGTERM, signal.SIG_IGN)", grace=0.2)
LATE = WATCHING.format(setup="while os.getppid() == int(sys.argv[1]): time.sleep(0.01)", grace=0)


@pytest.mark.parametrize(
    ("child", "says"),
    [(PLAIN, ""), (ASKS, "stopping"), (IGNORES, "")],
    ids=["at-once", "graceful-stop-first", "ends-after-grace"],
)
def test_an_orphan_ends_when_its_parent_is_killed(
    python: Callable[..., subprocess.Popen[str]], child: str, says: str
) -> None:
    parent = python(PARENT, textwrap.dedent(child), "stays")
    orphan = track(int(line(parent.stdout)))
    assert line(parent.stdout) == "watching"  # the child writes to the same pipe
    parent.kill()
    if says:
        assert line(parent.stdout) == says, kill_left([orphan])
    wait_gone([orphan], 5, "the orphan to end")


def test_a_child_whose_parent_died_before_it_watched_ends_too(
    python: Callable[..., subprocess.Popen[str]],
) -> None:
    parent = python(PARENT, textwrap.dedent(LATE), "leaves")  # the child waits for that
    orphan = track(int(line(parent.stdout)))
    parent.wait()
    wait_gone([orphan], 5, "the orphan to end")


def test_pool_workers_and_their_tracker_end_with_the_pools_owner(
    python: Callable[..., subprocess.Popen[str]],
) -> None:
    """What makes the analyst page's fit workers end with it, as the API's end with serve."""
    owner = python(
        """
        import asyncio
        from ezdash.analysis.pool import AnalyticsPool

        async def main() -> None:
            pool = AnalyticsPool(1)  # held: an unreferenced pool stops its workers
            await pool.warm_up()
            print("ready", flush=True)
            await asyncio.sleep(600)

        asyncio.run(main())
        """
    )
    assert line(owner.stdout) == "ready"
    tree = descendants(owner.pid)
    assert sorted(p.kind for p in tree) == ["tracker", "worker"], tree
    owner.kill()
    wait_gone(tree, 10, "the worker and the tracker to end")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_tied_child_outlives_the_thread_that_started_it() -> None:
    """PR_SET_PDEATHSIG fires when the forking *thread* exits: ``popen_tied`` forks on a
    thread that lives as long as the process, as the embedded Redis needs when serve
    starts it through ``asyncio.to_thread``."""
    started: list[subprocess.Popen[bytes]] = []
    echo = "import sys; sys.stdout.write(sys.stdin.readline())"

    def start() -> None:
        args = [sys.executable, "-c", echo]
        started.append(popen_tied(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE))

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    task = Path(f"/proc/self/task/{thread.native_id}")
    wait_until(lambda: not task.exists(), 5, "the thread to be gone")  # its death signals sent
    child = started[0]
    out, _ = child.communicate(b"still here\n", timeout=30)
    assert (out, child.returncode) == (b"still here\n", 0)


# -- ezdash serve, end to end -------------------------------------------------------


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_every_child_of_serve_ends_when_serve_is_killed(tmp_path: Path) -> None:
    """Killed once everything is up: the pool warmed up, both pages answering."""
    port, analyst_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EZ_") and k != "REDIS_URL"}
    env.update(
        {
            "EZ_DATA_DIR": str(tmp_path / "data"),  # no REDIS_URL: the embedded Redis
            "EZ_PORT": str(port),
            "EZ_ANALYST": "true",
            "EZ_ANALYST_PORT": str(analyst_port),
            "EZ_DEMO_AGENTS": "2",
            "EZ_BACKFILL_DAYS": "0",
            "EZ_ANALYTICS_WORKERS": "1",
        }
    )
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "ezdash.cli", "serve"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    tree: list[Proc] = []

    def up() -> bool:
        nonlocal tree
        assert serve.poll() is None, log.read_text()[-3000:]
        tree = descendants(serve.pid)
        kinds = {p.kind for p in tree}
        return (
            kinds >= {"redis", "demo", "analyst", "tracker", "worker"}  # warmed up at start
            and answers(f"http://127.0.0.1:{port}/api/health")
            and answers(f"http://127.0.0.1:{analyst_port}/login")
        )

    try:
        wait_until(up, 120, "serve, its children and both pages")
        tree = descendants(serve.pid)
        serve.kill()
        serve.wait()
        wait_gone(tree, 10, "every descendant of the killed serve to end")
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        kill_left(tree)
