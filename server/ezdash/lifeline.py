"""Our child processes end when the process that started them is gone, however it went.

``ezdash serve`` stops its children itself on Ctrl-C or SIGTERM (see serve.py), but a
SIGKILL, the OOM killer or a crash gives it no chance to.  Without this module its fit
workers, the demo fleet and the analyst page (with fit workers of its own) would live
on as orphans, some 37 MB each and more with every crash: nothing in them notices, a
fit worker even waits on a queue whose write end it holds itself.

PR_SET_PDEATHSIG (``redis_server.die_with_parent``) is no answer for them: it is
Linux-only, and it fires when the *thread* that forked the child exits, not the
process, while a process pool forks from whichever thread hands it work.  So each of
our Python children watches for itself: a daemon thread that wakes once a second and
checks that ``os.getppid()`` is still the pid of the process that started it.  An
orphan is re-parented (to init or a subreaper), so the two differ as soon as the parent
is gone.  The parent passes its pid in rather than the child reading it at start, so a
parent that dies before the child gets that far is noticed too.  The rule applies
recursively: the analyst page's fit workers watch the analyst page, which watches serve.

The multiprocessing resource tracker needs nothing of this: it exits by itself once no
process holds its pipe, that is once its owner and all the workers are gone.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

log = logging.getLogger("ezdash.lifeline")

ORPHAN_GRACE_S = 3.0
"""How long an orphan with a graceful stop of its own (the demo fleet, the analyst page)
gets for it: short, since whatever it still talks to may be going away as well."""


def watch_parent(parent: int, *, grace: float = 0.0, interval: float = 1.0) -> threading.Thread:
    """End this process once ``parent`` is no longer its parent.

    With no ``grace`` it ends at once (``os._exit``): a fit worker has nothing to save
    and nobody left to hand a result to.  With a grace it first gets SIGTERM, the stop
    its parent would have asked for, so the demo fleet hands back the tasks it holds;
    if it is still running ``grace`` seconds later it ends all the same.  Costs one
    thread that sleeps.
    """
    thread = threading.Thread(
        target=_watch, args=(parent, grace, interval), name="ezdash-lifeline", daemon=True
    )
    thread.start()
    return thread


def _watch(parent: int, grace: float, interval: float) -> None:  # pragma: no cover - exits
    while os.getppid() == parent:
        time.sleep(interval)
    log.info("parent process %d is gone: exiting", parent)
    if grace > 0:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
    os._exit(1)
