"""One error table (issue 11): every refusal a store can raise has its answer in
``ezdash.api.errors.DOMAIN``, and it is never logged as a server fault."""

from __future__ import annotations

import logging

import pytest

from ezdash.api.errors import DOMAIN, problem_for
from ezdash.store import errors as store_errors
from ezdash.store.errors import Conflict, DomainError, IdempotencyMismatch, NotFound

from .conftest import Api, Fleet, wait_for


def test_every_domain_error_has_an_answer() -> None:
    kinds = {
        v
        for v in vars(store_errors).values()
        if isinstance(v, type) and issubclass(v, DomainError) and v is not DomainError
    }
    assert kinds == set(DOMAIN)
    cases = [
        (NotFound("task", "tsk_1"), 404, "not-found", "no task with id 'tsk_1'"),
        (Conflict("it is stopped", "stopped"), 409, "conflict", "it is stopped"),
        (IdempotencyMismatch("batch"), 422, "idempotency-mismatch", "a different batch"),
    ]
    for exc, status, kind, words in cases:
        p = problem_for(exc, 500)
        assert (p.status_code, p.type) == (status, kind)
        assert words in p.detail


async def test_refusals_answer_from_the_table_and_log_no_traceback(
    api: Api, fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    fleet.start("err-agent")

    async def up() -> bool:
        return (await api.get("/api/agents/err-agent")).status == 200

    await wait_for(up, 10, what="the agent")
    key = {"Idempotency-Key": "same"}
    assert (await api.post("/api/tasks", json={"type": "a"}, headers=key)).status == 201
    r = await api.post("/api/tasks", json={"type": "b"}, headers=key)
    assert (r.status, r.json["type"].rsplit("/", 1)[-1]) == (422, "idempotency-mismatch")
    r = await api.post("/api/tasks/tsk_00000000000000000000000000/cancel")
    assert (r.status, r.json["detail"]) == (404, "no task with id 'tsk_00000000000000000000000000'")
    r = await api.post("/api/agents/nobody/restart")
    assert r.status == 404 and r.json["detail"] == "no agent with id 'nobody'"
    assert [rec for rec in caplog.records if rec.exc_info] == []
