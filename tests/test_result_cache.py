"""The analytics answer cache: single flight that survives a cancelled first caller."""

from __future__ import annotations

import asyncio

from ezdash.analysis.pool import ResultCache


async def test_a_waiter_takes_over_when_the_computing_caller_is_cancelled() -> None:
    cache = ResultCache()
    started = asyncio.Event()
    calls = 0

    async def slow() -> int:
        nonlocal calls
        calls += 1
        started.set()
        await asyncio.sleep(0.2)
        return 42

    owner = asyncio.create_task(cache.get("k", 60, slow))
    await started.wait()
    waiter = asyncio.create_task(cache.get("k", 60, slow))
    await asyncio.sleep(0)
    owner.cancel()
    assert await waiter == 42  # not the owner's CancelledError
    assert owner.cancelled()
    assert calls == 2
    assert await cache.get("k", 60, slow) == 42 and calls == 2  # now cached


async def test_concurrent_callers_share_one_computation() -> None:
    cache = ResultCache()
    calls = 0

    async def once() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return "x"

    assert await asyncio.gather(*(cache.get("k", 60, once) for _ in range(10))) == ["x"] * 10
    assert calls == 1 and cache.misses == 1
