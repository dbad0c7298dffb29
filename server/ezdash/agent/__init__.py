"""The agent runtime: what a real agent imports to join the fleet.

    from ezdash.agent import Agent, AgentConfig, TaskContext, PermanentError

    async def handle(ctx: TaskContext) -> dict:
        ctx.info("summarizing", chars=len(ctx.payload["text"]))
        return {"summary": await call_llm(ctx.payload["text"])}

    config = AgentConfig(queues=["summarize"])
    await Agent("summarizer-1", handle, redis_url=..., config=config).run()

Log lines written with ``ctx.info`` (or ``ctx.log``, ``Agent.log``, or plain
``logging`` inside a handler, captured by ``LogHandler``) reach the dashboard's log
view with the agent and task id. The Redis protocol it speaks is in
docs/agent-protocol.md.
"""

from .config import AgentConfig, PermanentError
from .context import TaskContext
from .logs import LogHandler, LogRecorder
from .runtime import Agent

__all__ = ["Agent", "AgentConfig", "LogHandler", "LogRecorder", "PermanentError", "TaskContext"]
