"""The agent runtime: what a real agent imports to join the fleet.

    from ezdash.agent import Agent, TaskContext, PermanentError

    async def handle(ctx: TaskContext) -> dict:
        return {"summary": await call_llm(ctx.payload["text"])}

    await Agent("summarizer-1", handle, redis_url=..., queues=["summarize"]).run()

The Redis protocol it speaks is in docs/agent-protocol.md.
"""

from .runtime import Agent, AgentConfig, PermanentError, TaskContext

__all__ = ["Agent", "AgentConfig", "PermanentError", "TaskContext"]
