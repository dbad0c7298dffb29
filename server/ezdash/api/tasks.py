"""Tasks: list, create, inspect, retry, cancel; and the queues they wait in."""

from __future__ import annotations

import orjson

from ..keys import TASK_STATUSES
from ..store.tasks import check_transition
from .base import APIHandler
from .errors import Problem, not_found
from .listing import list_page, number, text
from .models import QUEUE_PATTERN, TYPE_PATTERN, TaskCreate
from .opdocs import Body, Op, ok, problem, ref
from .params import AGENT, DRY_RUN, IDEMPOTENCY_KEY, PAGE, TASK_PATH, Choice, Text, Time

TASK_CHANGE_ANSWERS = {
    "200": ok({"oneOf": [ref("TaskEnvelope"), ref("DryRun")]}),
    "404": problem("Unknown task"),
}
"""What a retry or a cancel answers, but for its 409."""


class TasksHandler(APIHandler):
    scopes = {"GET": "read", "POST": "write"}
    docs = {
        "GET": Op("List tasks (newest first)", {"200": ok("TaskPage")}),
        "POST": Op(
            "Create a task",
            {
                "201": ok("TaskEnvelope", "Created; Location names it"),
                "413": problem("Body or payload too large"),
            },
            body=Body(TaskCreate),
        ),
    }
    actions = {"POST": "tasks.create"}
    query = {
        "GET": (
            Choice("status", "Task status", values=TASK_STATUSES),
            Text(
                "queue",
                "Queue name",
                max_len=64,
                pattern=QUEUE_PATTERN,
                hint="queue names are 1-64 characters of A-Z a-z 0-9 . _ -",
            ),
            AGENT,
            Text(
                "type",
                "Task type",
                max_len=128,
                pattern=TYPE_PATTERN,
                hint="task types are 1-128 characters of A-Z a-z 0-9 . _ : / -",
            ),
            Time("from", "Created at or after (RFC 3339, unix seconds, now-24h)"),
            Time("to", "Created at or before (a to before from selects nothing)"),
            *PAGE,
        )
    }
    headers_in = {"POST": (IDEMPOTENCY_KEY,)}

    async def get(self) -> None:
        page = await list_page(self, (number, text), timed=True)
        start, end = self.q_time("from", page.now), self.q_time("to", page.now)
        items, last = await self.services.tasks.page(
            status=self.q_str("status"),
            queue=self.q_str("queue"),
            agent=self.q_str("agent"),
            type=self.q_str("type"),
            start_ms=start,
            end_ms=end,
            limit=page.limit,
            after=page.after,
        )
        self.write_json({"items": items, "next_cursor": page.next_cursor(last)})

    async def post(self) -> None:
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
        task, created = await svc.tasks.create(
            type=body.type,
            payload=body.payload,
            queue=body.queue,
            priority=body.priority,
            max_attempts=body.max_attempts,
            idempotency=idempotency,
        )
        if not created:
            self.set_header("Idempotent-Replayed", "true")
        self.audit_target = task["id"]
        self.set_header("Location", f"/api/tasks/{task['id']}")
        self.write_json({"task": task}, 201)


class TaskHandler(APIHandler):
    scopes = {"GET": "read"}
    docs = {
        "GET": Op(
            "One task with its attempt history",
            {"200": ok("TaskWithHistory"), "404": problem("Unknown task")},
        )
    }
    path = (TASK_PATH,)

    async def get(self, task_id: str) -> None:
        task = await self.services.tasks.get(task_id, history=True)
        if task is None:
            raise not_found("task", task_id)
        self.write_json(task)


class TaskRetryHandler(APIHandler):
    scopes = {"PUT": "write"}
    docs = {
        "PUT": Op(
            "Put a failed, dead or cancelled task back on its queue",
            {**TASK_CHANGE_ANSWERS, "409": problem("Task not retryable")},
        )
    }
    actions = {"PUT": "tasks.retry"}
    path = (TASK_PATH,)
    query = {"PUT": (DRY_RUN,)}

    async def put(self, task_id: str) -> None:
        await transition(self, task_id, "retry")


class TaskCancelHandler(APIHandler):
    scopes = {"POST": "write"}
    docs = {
        "POST": Op(
            "Cancel a queued or running task",
            {**TASK_CHANGE_ANSWERS, "409": problem("Task already finished")},
        )
    }
    actions = {"POST": "tasks.cancel"}
    path = (TASK_PATH,)
    query = {"POST": (DRY_RUN,)}

    async def post(self, task_id: str) -> None:
        await transition(self, task_id, "cancel")


async def transition(h: APIHandler, task_id: str, action: str) -> None:
    store = h.services.tasks
    if h.q_bool("dry_run"):
        h.audit_detail = "dry_run"
        task = await store.get(task_id)
        if task is None:
            raise not_found("task", task_id)
        check_transition(task_id, task["status"], action)
        verb = "put back on queue" if action == "retry" else "cancel"
        h.write_json(
            {
                "dry_run": True,
                "would": f"{verb} task {task_id!r} (now {task['status']})",
                "target": task,
            }
        )
        return
    task = await (store.retry(task_id) if action == "retry" else store.cancel(task_id))
    h.write_json({"task": task})


class QueuesHandler(APIHandler):
    scopes = {"GET": "read"}
    docs = {
        "GET": Op(
            "Queues with depth, age and throughput",
            {"200": ok({"type": "array", "items": ref("Queue")})},
        )
    }

    async def get(self) -> None:
        svc = self.services
        self.write_json(await svc.tasks.queue_stats(await svc.redis_now_ms()))


default_handlers = [
    (r"/api/tasks", TasksHandler),
    (r"/api/tasks/([^/]+)", TaskHandler),
    (r"/api/tasks/([^/]+)/retry", TaskRetryHandler),
    (r"/api/tasks/([^/]+)/cancel", TaskCancelHandler),
    (r"/api/queues", QueuesHandler),
]
