"""Background sweeps every server instance runs: retry back-offs, command expiry,
reclaiming deliveries of dead agents, and retention of finished tasks.

An engine, not part of the HTTP layer: it serves no request and reads only the
stores.  Each step is an atomic script or guarded by one, so any number of
instances may sweep at the same time without double effects; the lease of
:func:`ezdash.leader.leader_loop` just keeps them from all doing the same work each
tick.
"""

from __future__ import annotations

import logging
from typing import Protocol

from .leader import Instance, leader_loop
from .store.agents import AgentStore
from .store.commands import CommandStore
from .store.scripts import Scripts
from .store.tasks import TaskStore

log = logging.getLogger("ezdash.maintenance")


class MaintenanceContext(Instance, Protocol):
    """The stores a sweep works on (the server's ``Services`` has them)."""

    scripts: Scripts
    agents: AgentStore
    tasks: TaskStore
    commands: CommandStore


async def sweep(svc: MaintenanceContext) -> dict[str, int]:
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


async def maintenance_loop(svc: MaintenanceContext) -> None:
    async def tick() -> None:
        done = await sweep(svc)
        if any(done.values()):
            log.info("maintenance: %s", done)

    await leader_loop(
        svc,
        svc.keys.maintenance_lock,
        svc.settings.maintenance_interval,
        tick,
        skipped="maintenance skipped",
    )
