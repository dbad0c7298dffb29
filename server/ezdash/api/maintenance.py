"""Background sweeps every server instance runs: retry back-offs, command expiry,
reclaiming deliveries of dead agents, and retention of finished tasks.

Each step is an atomic script or guarded by one, so any number of instances
may sweep at the same time without double effects; a short Redis lock just
keeps them from all doing the same work each tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from ..aio import reraise_if_cancelling

if TYPE_CHECKING:
    from .services import Services

log = logging.getLogger("ezdash.maintenance")


async def sweep(svc: Services) -> dict[str, int]:
    s = svc.settings
    done = {"promoted": 0, "expired": 0, "orphaned": 0, "reclaimed": 0, "purged": 0}
    done["promoted"] = await svc.tasks.promote_due()
    now = await svc.redis_now_ms()
    # Right after an outage every agent looks silent (none could heartbeat, renew a
    # lease or acknowledge): judge them only once they have had time to catch up.
    if svc.redis_watch.settled(s.heartbeat_timeout):
        done["expired"] = await svc.commands.expire_due()
        for queue in await svc.tasks.queue_names():
            done["reclaimed"] += await svc.tasks.reclaim(
                queue, f"server:{svc.instance}", s.visibility_timeout
            )
        done["orphaned"] = await svc.commands.fail_orphans(s.heartbeat_timeout, now)
    done["purged"] = await svc.tasks.purge_finished(now - int(s.task_retention * 1000))
    done["purged"] += await svc.commands.purge_finished(now - int(s.task_retention * 1000))
    done["purged"] += await svc.agents.purge_silent(
        svc.scripts, now - int(s.agent_retention * 1000)
    )
    return done


async def maintenance_loop(svc: Services) -> None:
    interval = svc.settings.maintenance_interval
    while not svc.closing.is_set():
        try:
            got = await svc.redis.set(
                svc.keys.maintenance_lock, svc.instance, nx=True, px=int(interval * 900)
            )
            if got:
                done = await sweep(svc)
                if any(done.values()):
                    log.info("maintenance: %s", done)
        except RedisError as e:
            reraise_if_cancelling(e)
            svc.redis_watch.trouble(e, "maintenance skipped")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(svc.closing.wait(), interval)
