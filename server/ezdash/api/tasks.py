"""Tasks: list, create, inspect, retry, cancel; and the queues they wait in."""

from __future__ import annotations

import re

import orjson

from ..ids import SERVER_ID
from ..keys import TASK_STATUSES
from ..store.tasks import Conflict, IdempotencyMismatch, NotFound
from .base import APIHandler
from .errors import Problem, conflict, invalid, not_found
from .listing import list_page, number, text
from .models import QUEUE_PATTERN, TYPE_PATTERN, TaskCreate

RETRYABLE = ("failed", "dead", "cancelled")
CANCELLABLE = ("queued", "running")


def check_task_id(task_id: str) -> str:
    if not SERVER_ID.match(task_id) or not task_id.startswith("tsk_"):
        raise not_found("task", task_id)
    return task_id


class TasksHandler(APIHandler):
    scopes = {"GET": "read", "POST": "write"}
    actions = {"POST": "tasks.create"}

    async def get(self) -> None:
        self.check_query({"status", "queue", "agent", "type", "from", "to", "limit", "cursor"})
        page = await list_page(self, (number, text), timed=True)
        start, end = self.q_time("from", page.now), self.q_time("to", page.now)
        if start is not None and end is not None and end < start:
            raise invalid("to", "must not be before from")
        queue = self.q_str("queue", max_len=64)
        if queue is not None and not _match(QUEUE_PATTERN, queue):
            raise invalid("queue", "queue names are 1-64 characters of A-Z a-z 0-9 . _ -")
        ttype = self.q_str("type", max_len=128)
        if ttype is not None and not _match(TYPE_PATTERN, ttype):
            raise invalid("type", "task types are 1-128 characters of A-Z a-z 0-9 . _ : / -")
        items, last = await self.services.tasks.page(
            status=self.q_str("status", choices=TASK_STATUSES),
            queue=queue,
            agent=self.q_str("agent", max_len=128),
            type=ttype,
            start_ms=start,
            end_ms=end,
            limit=page.limit,
            after=page.after,
        )
        self.write_json({"items": items, "next_cursor": page.next_cursor(last)})

    async def post(self) -> None:
        self.check_query(())
        body = self.json_body(TaskCreate)
        svc = self.services
        size = len(orjson.dumps(body.payload))
        if size > svc.settings.max_payload_bytes:
            raise Problem(
                413,
                f"payload is {size} bytes; the limit is {svc.settings.max_payload_bytes}",
                type="too-large",
                errors=[{"field": "payload", "message": "too large"}],
            )
        idem = self.idempotency_key()
        idempotency = None
        if idem:
            idempotency = (
                svc.keys.idempotency(self.principal.id, "tasks", idem),
                svc.settings.idempotency_ttl,
            )
        try:
            task, created = await svc.tasks.create(
                type=body.type,
                payload=body.payload,
                queue=body.queue,
                priority=body.priority,
                max_attempts=body.max_attempts,
                idempotency=idempotency,
            )
        except IdempotencyMismatch:
            raise Problem(
                422,
                "Idempotency-Key was already used for a different request",
                type="idempotency-mismatch",
            ) from None
        except NotFound:
            raise Problem(
                409, "the task first created with this Idempotency-Key is gone", type="conflict"
            ) from None
        if not created:
            self.set_header("Idempotent-Replayed", "true")
        self.audit_target = task["id"]
        self.set_header("Location", f"/api/tasks/{task['id']}")
        self.write_json({"task": task}, 201)


class TaskHandler(APIHandler):
    scopes = {"GET": "read"}

    async def get(self, task_id: str) -> None:
        self.check_query(())
        task = await self.services.tasks.get(check_task_id(task_id), history=True)
        if task is None:
            raise not_found("task", task_id)
        self.write_json(task)


class TaskRetryHandler(APIHandler):
    scopes = {"PUT": "write"}
    actions = {"PUT": "tasks.retry"}

    async def put(self, task_id: str) -> None:
        self.check_query({"dry_run"})
        await transition(self, check_task_id(task_id), "retry", RETRYABLE)


class TaskCancelHandler(APIHandler):
    scopes = {"POST": "write"}
    actions = {"POST": "tasks.cancel"}

    async def post(self, task_id: str) -> None:
        self.check_query({"dry_run"})
        await transition(self, check_task_id(task_id), "cancel", CANCELLABLE)


async def transition(h: APIHandler, task_id: str, action: str, allowed: tuple[str, ...]) -> None:
    store = h.services.tasks
    if h.q_bool("dry_run"):
        h.audit_detail = "dry_run"
        task = await store.get(task_id)
        if task is None:
            raise not_found("task", task_id)
        if task["status"] not in allowed:
            raise conflict(
                f"task {task_id!r} is {task['status']}; only "
                f"{', '.join(allowed)} tasks can {action}"
            )
        verb = "put back on queue" if action == "retry" else "cancel"
        h.write_json(
            {
                "dry_run": True,
                "would": f"{verb} task {task_id!r} (now {task['status']})",
                "target": task,
            }
        )
        return
    try:
        task = await (store.retry(task_id) if action == "retry" else store.cancel(task_id))
    except NotFound:
        raise not_found("task", task_id) from None
    except Conflict as e:
        raise conflict(
            f"task {task_id!r} is {e.status}; only {', '.join(allowed)} tasks can {action}"
        ) from None
    h.write_json({"task": task})


class QueuesHandler(APIHandler):
    scopes = {"GET": "read"}

    async def get(self) -> None:
        self.check_query(())
        svc = self.services
        self.write_json(await svc.tasks.queue_stats(await svc.redis_now_ms()))


def _match(pattern: str, value: str) -> bool:
    return re.match(pattern, value) is not None


default_handlers = [
    (r"/api/tasks", TasksHandler),
    (r"/api/tasks/([^/]+)", TaskHandler),
    (r"/api/tasks/([^/]+)/retry", TaskRetryHandler),
    (r"/api/tasks/([^/]+)/cancel", TaskCancelHandler),
    (r"/api/queues", QueuesHandler),
]
