"""Small asyncio helpers shared by the server and the agent runtime."""

from __future__ import annotations

import asyncio
import contextlib
import signal


def reraise_if_cancelling(exc: BaseException) -> None:
    """Python 3.11's asyncio.timeout can turn a cancellation into a TimeoutError that
    redis-py reports as a connection error; a loop that retries on those must not
    swallow its own cancellation."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


def stop_on_signals(stop: asyncio.Event | None = None) -> asyncio.Event:
    """An event that SIGINT and SIGTERM set, for a graceful stop of a long-running command.

    Where signals cannot be handled (not the main thread, as in tests), the event is
    still returned and the caller sets it itself.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    return stop
