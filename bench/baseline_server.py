"""The bare baselines: plain Tornado handlers doing the same reads and writes the
naive way, with no validation, paging or problem handling.

    python -m bench.baseline_server PORT REDIS_URL
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time

import tornado.web
from redis.asyncio import BlockingConnectionPool, Redis

from ezdash.keys import Keys

NAIVE_AGENTS = "naive:agents"


def naive_agent_key(agent_id: str) -> str:
    return f"naive:agent:{agent_id}"


class NaiveAgents(tornado.web.RequestHandler):
    """GET: 500 agents as one HGETALL each (in one pipeline), then json.dumps."""

    async def get(self) -> None:
        r: Redis = self.settings["redis"]
        limit = int(self.get_query_argument("limit", "50"))
        ids = await r.zrange(NAIVE_AGENTS, 0, limit - 1)
        async with r.pipeline(transaction=False) as pipe:
            for agent_id in ids:
                pipe.hgetall(naive_agent_key(str(agent_id)))
            rows = await pipe.execute()
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps({"items": rows}))


class NaiveTasks(tornado.web.RequestHandler):
    """POST: parse the body, HSET the task and XADD it to its stream, in one pipeline."""

    async def post(self) -> None:
        r: Redis = self.settings["redis"]
        body = json.loads(self.request.body)
        tid = "tsk_" + secrets.token_hex(13)
        now = int(time.time() * 1000)
        async with r.pipeline(transaction=False) as pipe:
            pipe.hset(
                f"naive:task:{tid}",
                mapping={
                    "id": tid,
                    "type": body["type"],
                    "queue": body.get("queue", "default"),
                    "payload": json.dumps(body.get("payload", {})),
                    "status": "queued",
                    "created_at": now,
                },
            )
            pipe.xadd(f"naive:q:{body.get('queue', 'default')}", {"task": tid})
            await pipe.execute()
        self.set_status(201)
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps({"task": {"id": tid, "status": "queued"}}))


class NaiveTask(tornado.web.RequestHandler):
    """GET: one HGETALL of the project's own task hash, then json.dumps."""

    async def get(self, tid: str) -> None:
        r: Redis = self.settings["redis"]
        row = await r.hgetall(Keys().task(tid))
        if not row:
            raise tornado.web.HTTPError(404)
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(row))


async def main(port: int, url: str) -> None:
    redis = Redis.from_pool(
        BlockingConnectionPool.from_url(url, max_connections=64, decode_responses=True)
    )
    app = tornado.web.Application(
        [
            (r"/api/agents", NaiveAgents),
            (r"/api/tasks", NaiveTasks),
            (r"/api/tasks/([^/]+)", NaiveTask),
        ],
        redis=redis,
    )
    app.listen(port, "127.0.0.1")
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
