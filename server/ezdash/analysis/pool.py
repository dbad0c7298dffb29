"""A bounded pool of analytics worker processes and a cache of their answers.

Fits never run on the event loop: they go to worker processes (spawned, one BLAS
thread each, lower priority).  At most ``workers`` fits run at once; more wait.
Answers are cached by query and data version (the newest complete bucket), and
identical requests in flight share one computation, so a dashboard polling every
few seconds costs one fit per new bucket.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from .worker import init_worker

T = TypeVar("T")


class AnalyticsPool:
    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._executor: ProcessPoolExecutor | None = None
        self._slots = asyncio.Semaphore(self.workers)

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ.setdefault(var, "1")  # inherited by the spawned workers
            self._executor = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=mp.get_context("spawn"),
                initializer=init_worker,
                initargs=(os.getpid(),),  # workers end with the process that owns them
            )
        return self._executor

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._slots:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool(), fn, *args)

    async def warm_up(self) -> None:
        """Start the workers (importing pandas and statsmodels takes a second)."""
        await asyncio.gather(*(self.run(os.getpid) for _ in range(self.workers)))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


class ResultCache:
    """LRU with time-to-live and single flight per key."""

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self._data: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._inflight: dict[Hashable, asyncio.Future[Any]] = {}
        self.hits = 0
        self.misses = 0

    def peek(self, match: Callable[[Any], bool]) -> Any:
        """The newest live value whose key matches, without computing anything."""
        now = time.monotonic()
        for key in reversed(self._data):
            expires, value = self._data[key]
            if expires > now and match(key):
                return value
        return None

    async def get(self, key: Hashable, ttl_s: float, make: Callable[[], Awaitable[T]]) -> T:
        now = time.monotonic()
        hit = self._data.get(key)
        if hit is not None and hit[0] > now:
            self._data.move_to_end(key)
            self.hits += 1
            value: T = hit[1]
            return value
        pending = self._inflight.get(key)
        if pending is not None:
            try:
                result: T = await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                # The caller computing it was cancelled, not this one: take over.
                return await self.get(key, ttl_s, make)
            return result
        self.misses += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            value = await make()
        except asyncio.CancelledError:
            fut.cancel()  # waiters see the cancellation and compute it themselves
            raise
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: waiters get it, no "never retrieved" warning
            raise
        finally:
            self._inflight.pop(key, None)
        fut.set_result(value)
        self._data[key] = (now + ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)
        return value
