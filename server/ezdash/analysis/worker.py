"""The first code an analytics worker process runs; deliberately imports nothing heavy.

A spawned worker unpickles its initializer before anything else, so keeping it in a
module without pandas lets it ignore SIGINT before the heavy imports start: Ctrl-C
in the terminal reaches the whole process group, and the server, not its workers,
decides when they stop.  The same goes the other way: a worker whose server is gone
(killed, crashed) ends within a second instead of living on as an orphan
(see ``ezdash.lifeline``).
"""

from __future__ import annotations

import os
import signal
import warnings

from ..lifeline import watch_parent


def init_worker(parent: int) -> None:
    """Ignore Ctrl-C, end with ``parent`` (the process that owns the pool), run at lower
    priority than the server (which answers health checks and dashboards), and keep
    statsmodels' expected numerical RuntimeWarnings on sparse series out of the log.
    BLAS threads are capped through the environment the pool sets before spawning,
    since numpy reads it at import."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch_parent(parent)
    os.nice(5)
    warnings.filterwarnings("ignore", category=RuntimeWarning)
