"""A bare WebSocket fan-out server: the baseline of ``bench_ws``.

It does the same job as the project's hub in the most direct way Tornado offers:
tail the events stream with XREAD and, for each entry, ``write_message`` its JSON to
every connected client. No auth, no topics, no resume, no slow-client handling.

python -m bench.ws_baseline PORT REDIS_URL
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson
from redis.asyncio import Redis
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application
from tornado.websocket import WebSocketClosedError, WebSocketHandler

CLIENTS: set[WebSocketHandler] = set()


class Naive(WebSocketHandler):
    def open(self, *args: str, **kwargs: str) -> None:
        CLIENTS.add(self)
        self.write_message(orjson.dumps({"type": "hello"}).decode())

    def on_close(self) -> None:
        CLIENTS.discard(self)

    def on_message(self, message: str | bytes) -> None:
        pass


async def tail(url: str) -> None:
    redis = Redis.from_url(url, decode_responses=True)
    position = "$"
    while True:
        # 2 s: under redis-py 8's default 5 s socket timeout
        reply: Any = await redis.xread({"{ez}:events": position}, block=2000)
        if not reply:
            continue
        for entry_id, fields in reply[0][1]:
            position = entry_id
            message = orjson.dumps(
                {"type": fields["type"], "id": entry_id, "data": orjson.loads(fields["data"])}
            ).decode()
            for client in list(CLIENTS):
                try:
                    client.write_message(message)
                except WebSocketClosedError:
                    CLIENTS.discard(client)


async def main(port: int, url: str) -> None:
    server = HTTPServer(Application([(r"/ws", Naive)]))
    server.add_sockets(bind_sockets(port, "127.0.0.1"))
    print("ready", flush=True)
    await tail(url)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
