"""A real agent process for tests that kill one: it blocks in every task it takes.

Usage: python -m tests.agent_proc REDIS_URL AGENT_ID
Prints "started <task id>" when a task starts, so the test knows when to kill it.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from ezdash.agent import Agent, AgentConfig, TaskContext


async def stuck(ctx: TaskContext) -> Any:
    print(f"started {ctx.id}", flush=True)
    await asyncio.sleep(3600)


def main() -> None:
    url, agent_id = sys.argv[1], sys.argv[2]
    cfg = AgentConfig(heartbeat_interval=0.2, visibility_timeout=1.5, block_s=0.5)
    asyncio.run(Agent(agent_id, stuck, redis_url=url, config=cfg).run())


if __name__ == "__main__":
    main()
