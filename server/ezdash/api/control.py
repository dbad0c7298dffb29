"""Control commands as the API sees them."""

from __future__ import annotations

from ..keys import COMMAND_STATUSES
from .base import APIHandler
from .errors import not_found
from .listing import list_page, text
from .opdocs import Op, ok, problem
from .params import AGENT, COMMAND_PATH, PAGE, Choice


class CommandsHandler(APIHandler):
    scopes = {"GET": "read"}
    docs = {"GET": Op("List commands (newest first)", {"200": ok("CommandPage")})}
    query = {"GET": (AGENT, Choice("status", "Command status", values=COMMAND_STATUSES), *PAGE)}

    async def get(self) -> None:
        page = await list_page(self, text)
        items, last = await self.services.commands.page(
            agent=self.q_str("agent"),
            status=self.q_str("status"),
            limit=page.limit,
            after=page.after,
        )
        self.write_json({"items": items, "next_cursor": page.next_cursor(last)})


class CommandHandler(APIHandler):
    scopes = {"GET": "read"}
    docs = {"GET": Op("One command", {"200": ok("Command"), "404": problem("Unknown command")})}
    path = (COMMAND_PATH,)

    async def get(self, command_id: str) -> None:
        doc = await self.services.commands.get(command_id)
        if doc is None:
            raise not_found("command", command_id)
        self.write_json(doc)


default_handlers = [
    (r"/api/control/commands", CommandsHandler),
    (r"/api/control/commands/([^/]+)", CommandHandler),
]
