"""Alert rules evaluated by the server: firing, resolving, WebSocket events and signed,
retried webhooks delivered to a real HTTP receiver."""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler
from tornado.websocket import websocket_connect

from ezdash.alerts.delivery import sign
from ezdash.alerts.evaluate import evaluate_all
from ezdash.redis_server import free_port

from .conftest import ADMIN_KEY, Api, Fleet, wait_for
from .openapi_check import check_request, check_response

pytestmark = pytest.mark.timeout(120)
FAST_ALERTS = {"alert_interval": 0.2, "webhook_backoff": 0.05, "webhook_attempts": 4}
SECRET = "s3cret-s3cret-s3cret"


@dataclass
class Receiver:
    url: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    fail_first: int = 0


class Hook(RequestHandler):
    def initialize(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def post(self) -> None:
        r = self.receiver
        r.calls.append(
            {
                "body": self.request.body,
                "signature": self.request.headers.get("X-EzDash-Signature"),
                "timestamp": self.request.headers.get("X-EzDash-Timestamp"),
            }
        )
        if len(r.calls) <= r.fail_first:
            self.set_status(503)
        self.finish("ok")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    sockets = bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    r = Receiver(f"http://127.0.0.1:{port}/hook")
    server = HTTPServer(Application([(r"/hook", Hook, {"receiver": r})]))
    server.add_sockets(sockets)
    yield r
    server.stop()


def usage(now: int, n: int, *, errors: int = 0, latency: float = 300.0) -> list[dict[str, Any]]:
    rng = random.Random(n)
    return [
        {
            "ts": (now - rng.randrange(1000, 60_000)) / 1000,
            "agent_id": "a1",
            "model": "gpt-4o",
            "provider": "openai",
            "input_tokens": 100,
            "output_tokens": 10,
            "latency_ms": latency,
            "status": "error" if i < errors else "ok",
            **({"error_type": "Timeout"} if i < errors else {}),
        }
        for i in range(n)
    ]


async def put_rules(api: Api, rules: list[dict[str, Any]]) -> Any:
    r = await api.fetch("PUT", "/api/alerts/rules", json={"rules": rules})
    assert r.status == 200, r.json
    return r.json


async def active(api: Api) -> list[dict[str, Any]]:
    return list((await api.get("/api/alerts")).json["active"])


@pytest.mark.parametrize("settings_overrides", [FAST_ALERTS])
async def test_error_rate_fires_notifies_and_resolves(api: Api, receiver: Receiver) -> None:
    now = await api.services.redis_now_ms()
    assert (await api.post("/api/ingest/usage", json=usage(now, 40, errors=12))).status == 202
    rule = {
        "id": "errors-high",
        "name": "Error rate above 20%",
        "kind": "error_rate",
        "threshold": 0.2,
        "window": "5m",
        "webhook": {"url": receiver.url, "secret": SECRET},
    }
    saved = await put_rules(api, [rule])
    assert saved["rules"][0]["webhook"] == {"url": receiver.url, "signed": True}
    ws_url = api.base.replace("http://", "ws://") + "/api/ws"
    from tornado.httpclient import HTTPRequest

    conn = await websocket_connect(
        HTTPRequest(ws_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    )
    try:
        await conn.write_message(orjson.dumps({"op": "subscribe", "topics": ["alerts"]}).decode())

        async def firing() -> list[dict[str, Any]]:
            return await active(api)

        (alert,) = await wait_for(firing, what="the alert to fire")
        assert alert["rule_id"] == "errors-high" and alert["subject"] == "fleet"
        assert alert["value"] == pytest.approx(0.3) and "30.0%" in alert["message"]
        summary = (await api.get("/api/summary")).json
        assert [a["id"] for a in summary["alerts"]] == [alert["id"]]

        async def event(kind: str) -> dict[str, Any]:
            while True:
                msg = orjson.loads(await conn.read_message() or "{}")
                if msg.get("type") == kind:
                    return msg

        fired = await event("alert.fired")
        assert fired["data"]["id"] == alert["id"]

        async def delivered() -> bool:
            return len(receiver.calls) >= 1

        await wait_for(delivered, what="the webhook")
        call = receiver.calls[0]
        assert call["signature"] == sign(SECRET, call["timestamp"], call["body"])
        expected = hmac.new(
            SECRET.encode(), call["timestamp"].encode() + b"." + call["body"], hashlib.sha256
        ).hexdigest()
        assert call["signature"] == "sha256=" + expected
        assert orjson.loads(call["body"])["event"] == "alert.fired"

        # A stricter rule set clears it: resolved, announced, delivered.
        await put_rules(api, [{**rule, "threshold": 0.5, "webhook": {"url": receiver.url}}])

        async def cleared() -> bool:
            return await active(api) == []

        await wait_for(cleared, what="the alert to resolve")
        resolved = await event("alert.resolved")
        assert resolved["data"]["id"] == alert["id"]
        await wait_for(lambda: _async(len(receiver.calls) >= 2), what="the resolved webhook")
        last = receiver.calls[1]
        assert orjson.loads(last["body"])["event"] == "alert.resolved"
        # the PUT without a secret kept it (same id and URL)
        assert last["signature"] == sign(SECRET, last["timestamp"], last["body"])
        recent = (await api.get("/api/alerts")).json["recent"]
        assert recent[0]["status"] == "resolved" and recent[0]["resolved_at"]
        events = sorted(d["event"] for d in recent[0]["deliveries"])
        assert events == ["fired", "resolved"]
    finally:
        conn.close()


async def _async(value: bool) -> bool:
    return value


@pytest.mark.parametrize("settings_overrides", [FAST_ALERTS])
async def test_webhook_is_retried_and_the_outcome_kept(api: Api, receiver: Receiver) -> None:
    receiver.fail_first = 2
    now = await api.services.redis_now_ms()
    await api.post("/api/ingest/usage", json=usage(now, 20, latency=4000.0))
    await put_rules(
        api,
        [
            {
                "id": "slow",
                "kind": "latency_p95",
                "threshold": 1000,
                "window": "10m",
                "webhook": {"url": receiver.url},
            }
        ],
    )

    async def recorded() -> list[dict[str, Any]]:
        alerts = await active(api)
        return alerts[0]["deliveries"] if alerts and alerts[0]["deliveries"] else []

    (delivery,) = await wait_for(recorded, what="the delivery record")
    assert delivery == {**delivery, "event": "fired", "attempts": 3, "status": 200, "error": None}
    assert len(receiver.calls) == 3
    assert receiver.calls[0]["signature"] is None  # no secret, no signature
    (alert,) = await active(api)
    assert alert["kind"] == "latency_p95" and alert["value"] > 1000


@pytest.mark.parametrize(
    "settings_overrides", [{**FAST_ALERTS, "heartbeat_timeout": 0.6, "heartbeat_interval": 0.1}]
)
async def test_unresponsive_agents_and_old_queues_fire_per_subject(api: Api, fleet: Fleet) -> None:
    agent = fleet.start("w-gone", queues=["elsewhere"], heartbeat_interval=0.1)

    async def seen() -> bool:
        return (await api.get("/api/agents/w-gone")).status == 200

    await wait_for(seen, what="the agent")
    await put_rules(
        api,
        [
            {"id": "gone", "kind": "agent_unresponsive"},
            {"id": "stuck", "kind": "queue_age", "threshold": 0.3, "filters": {"queue": "q1"}},
        ],
    )
    await api.post("/api/tasks", json={"type": "t", "queue": "q1"})
    await api.post("/api/tasks", json={"type": "t", "queue": "q2"})  # not watched
    await agent.kill()  # no goodbye: heartbeats just stop

    async def both() -> list[dict[str, Any]] | None:
        alerts = await active(api)
        subjects = {(a["rule_id"], a["subject"]) for a in alerts}
        return alerts if subjects == {("gone", "w-gone"), ("stuck", "q1")} else None

    alerts = await wait_for(both, timeout=15, what="both alerts")
    assert all(a["status"] == "firing" for a in alerts)
    # evaluating again changes nothing: one alert per rule and subject
    assert await evaluate_all(api.services) == {"fired": 0, "resolved": 0}
    await put_rules(api, [])

    async def none_left() -> bool:
        return await active(api) == []

    await wait_for(none_left, what="removed rules to resolve their alerts")


@pytest.mark.parametrize("settings_overrides", [FAST_ALERTS])
async def test_cost_burn_fires_when_spend_beats_the_forecast(api: Api) -> None:
    now = await api.services.redis_now_ms()
    hour = 3_600_000
    end = now // hour * hour
    events = []
    rng = random.Random(3)
    for h in range(24 * 7, 0, -1):  # a week of steady spend with a daily cycle
        start = end - h * hour
        n = 4 + int(2 * math.sin(2 * math.pi * ((start // hour) % 24) / 24)) + rng.randrange(2)
        if h == 1:
            n = 60  # the last complete hour burns far more than forecast
        events += [
            {
                "ts": (start + rng.randrange(hour)) / 1000,
                "agent_id": "a1",
                "model": "gpt-4o",
                "provider": "openai",
                "input_tokens": 10_000,
                "output_tokens": 1000,
                "latency_ms": 500.0,
                "status": "ok",
            }
            for _ in range(n)
        ]
    for i in range(0, len(events), 2000):
        assert (await api.post("/api/ingest/usage", json=events[i : i + 2000])).status == 202
    await put_rules(api, [{"id": "burn", "kind": "cost_burn", "window": "1h"}])

    async def burning() -> list[dict[str, Any]]:
        return await active(api)

    (alert,) = await wait_for(burning, timeout=60, what="the cost burn alert")
    assert alert["kind"] == "cost_burn" and "upper bound" in alert["message"]


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ({"id": "x", "kind": "error_rate"}, "rules.0.threshold"),
        ({"id": "x", "kind": "error_rate", "threshold": 5}, "rules.0.threshold"),
        ({"id": "x", "kind": "queue_age", "threshold": 1, "window": "90s"}, "rules.0.window"),
        ({"id": "x", "kind": "cost_burn", "window": "30m"}, "rules.0.window"),
        ({"id": "x", "kind": "weather", "threshold": 1}, "rules.0.kind"),
        ({"id": "bad id!", "kind": "agent_unresponsive"}, "rules.0.id"),
        (
            {"id": "x", "kind": "agent_unresponsive", "webhook": {"url": "ftp://x"}},
            "rules.0.webhook.url",
        ),
        ({"id": "x", "kind": "agent_unresponsive", "colour": "red"}, "rules.0.colour"),
        (
            {
                "id": "x",
                "kind": "queue_age",
                "threshold": 1,
                "webhook": {"url": "http://x/", "signed": "yes"},
            },
            "rules.0.webhook.signed",
        ),
    ],
)
async def test_bad_rules_are_refused_naming_the_field(
    api: Api, rule: dict[str, Any], field: str
) -> None:
    r = await api.fetch("PUT", "/api/alerts/rules", json={"rules": [rule]})
    assert r.status == 422, r.json
    assert field in {e["field"] for e in r.json["errors"]}, r.json


async def test_rules_need_admin_to_change_and_hide_secrets(api: Api) -> None:
    reader = (await api.post("/api/auth/keys", json={"name": "r", "scopes": ["read"]})).json
    headers = {"Authorization": f"Bearer {reader['key']}"}
    rule = {
        "id": "r1",
        "kind": "queue_age",
        "threshold": 60,
        "webhook": {"url": "http://127.0.0.1:9/x", "secret": SECRET},
    }
    r = await api.fetch("PUT", "/api/alerts/rules", json={"rules": [rule]}, headers=headers)
    assert r.status == 403
    await put_rules(api, [rule])
    shown = (await api.get("/api/alerts/rules", headers=headers)).json
    assert SECRET not in orjson.dumps(shown).decode()
    dup = await api.fetch("PUT", "/api/alerts/rules", json={"rules": [rule, rule]})
    assert dup.status == 422 and dup.json["errors"][0]["field"] == "rules"
    audit = (await api.get("/api/audit?limit=20")).json["items"]
    assert any(a["action"] == "alerts.rules" and a["result"] == "ok" for a in audit)


@pytest.mark.parametrize("settings_overrides", [FAST_ALERTS])
async def test_what_get_answers_put_takes_back_unchanged(api: Api, receiver: Receiver) -> None:
    hook = {"url": receiver.url}
    await put_rules(
        api,
        [
            {
                "id": "kept",
                "kind": "error_rate",
                "threshold": 0.2,
                "webhook": {**hook, "secret": SECRET},
            },
            # claiming to be signed signs nothing: only a secret does
            {
                "id": "claimed",
                "kind": "error_rate",
                "threshold": 0.2,
                "webhook": {**hook, "signed": True},
            },
            {"id": "plain", "kind": "queue_age", "threshold": 60, "window": "2m"},
        ],
    )
    got = await api.get("/api/alerts/rules")
    check_response("GET", "/api/alerts/rules", got)  # exactly as the document describes it
    shown = got.json
    assert [r["webhook"] for r in shown["rules"]] == [
        {**hook, "signed": True},
        {**hook, "signed": False},
        None,
    ]
    check_request("PUT", "/api/alerts/rules", shown)  # the document admits it back
    put = await api.fetch("PUT", "/api/alerts/rules", json=shown)
    assert put.status == 200, put.json
    check_response("PUT", "/api/alerts/rules", put)
    assert put.json == shown
    # `signed` is ignored either way: false does not drop the secret either
    shown["rules"][0]["webhook"]["signed"] = False
    await put_rules(api, shown["rules"])
    assert (await api.get("/api/alerts/rules")).json == put.json

    # The secret outlived both PUTs: deliveries are still signed with it.
    now = await api.services.redis_now_ms()
    assert (await api.post("/api/ingest/usage", json=usage(now, 40, errors=12))).status == 202
    await wait_for(lambda: _async(len(receiver.calls) >= 2), what="both webhooks")
    calls = {orjson.loads(c["body"])["alert"]["rule_id"]: c for c in receiver.calls}
    kept = calls["kept"]
    assert kept["signature"] == sign(SECRET, kept["timestamp"], kept["body"])
    assert calls["claimed"]["signature"] is None


@pytest.mark.parametrize("settings_overrides", [FAST_ALERTS])
async def test_a_webhook_nobody_listens_on_is_recorded_not_raised(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    now = await api.services.redis_now_ms()
    await api.post("/api/ingest/usage", json=usage(now, 20, latency=4000.0))
    nobody = f"http://127.0.0.1:{free_port()}/hook"
    await put_rules(
        api,
        [
            {
                "id": "slow",
                "kind": "latency_p95",
                "threshold": 1000,
                "window": "10m",
                "webhook": {"url": nobody},
            }
        ],
    )

    async def recorded() -> list[dict[str, Any]]:
        alerts = await active(api)
        return alerts[0]["deliveries"] if alerts and alerts[0]["deliveries"] else []

    (delivery,) = await wait_for(recorded, 30, what="the delivery record")
    assert delivery["status"] is None and "refused" in delivery["error"].lower()
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
