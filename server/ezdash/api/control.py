"""Control commands as the API sees them."""

from __future__ import annotations

from ..ids import SERVER_ID
from ..keys import COMMAND_STATUSES
from .agents import check_agent_id
from .base import APIHandler
from .errors import not_found
from .listing import list_page, text


class CommandsHandler(APIHandler):
    scopes = {"GET": "read"}

    async def get(self) -> None:
        self.check_query({"agent", "status", "limit", "cursor"})
        agent = self.q_str("agent", max_len=128)
        if agent is not None:
            check_agent_id(agent)
        status = self.q_str("status", choices=COMMAND_STATUSES)
        page = await list_page(self, text)
        items, last = await self.services.commands.page(
            agent=agent, status=status, limit=page.limit, after=page.after
        )
        self.write_json({"items": items, "next_cursor": page.next_cursor(last)})


class CommandHandler(APIHandler):
    scopes = {"GET": "read"}

    async def get(self, command_id: str) -> None:
        self.check_query(())
        doc = None
        if SERVER_ID.match(command_id) and command_id.startswith("cmd_"):
            doc = await self.services.commands.get(command_id)
        if doc is None:
            raise not_found("command", command_id)
        self.write_json(doc)


default_handlers = [
    (r"/api/control/commands", CommandsHandler),
    (r"/api/control/commands/([^/]+)", CommandHandler),
]
