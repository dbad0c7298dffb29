"""Small asyncio helpers shared by the server and the agent runtime."""

from __future__ import annotations

import asyncio


def reraise_if_cancelling(exc: BaseException) -> None:
    """Python 3.11's asyncio.timeout can turn a cancellation into a TimeoutError that
    redis-py reports as a connection error; a loop that retries on those must not
    swallow its own cancellation."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc
