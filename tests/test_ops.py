"""Operations endpoints: Prometheus /metrics and the /api/docs page."""

from __future__ import annotations

import re

from .conftest import Api, Fleet, wait_for


def _samples(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def test_metrics_exposes_requests_and_fleet_gauges(api: Api, fleet: Fleet) -> None:
    fleet.start("w1", kind="coder")

    async def registered() -> bool:
        return (await api.get("/api/agents")).json["items"] != []

    await wait_for(registered, what="the agent")
    await api.post("/api/tasks", json={"type": "t", "queue": "default"})
    for _ in range(3):
        assert (await api.get("/api/tasks/task_nope")).status == 404
    r = await api.get("/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = r.body.decode()
    # every sample line is "name{labels} value" and every family is typed
    for line in text.splitlines():
        assert line.startswith("#") or re.fullmatch(r"[a-z_]+(\{[^}]*\})? [-0-9.e+]+", line), line
    samples = _samples(text)
    assert samples['ezdash_agents{status="idle"}'] + samples['ezdash_agents{status="busy"}'] == 1
    assert 'ezdash_queue_depth{queue="default"}' in samples
    # the route pattern labels requests, never the raw path with its id
    key = 'ezdash_http_requests_total{route="/api/tasks/([^/]+)",method="GET",status="404"}'
    assert samples[key] == 3
    assert "task_nope" not in text
    count = 'ezdash_http_request_duration_seconds_count{route="/api/tasks/([^/]+)",method="GET"}'
    inf = (
        'ezdash_http_request_duration_seconds_bucket{route="/api/tasks/([^/]+)",'
        'method="GET",le="+Inf"}'
    )
    assert samples[count] == samples[inf] == 3


async def test_metrics_needs_read(api: Api) -> None:
    assert (await api.get("/metrics", headers={"Authorization": ""})).status == 401


async def test_docs_page_lists_every_endpoint_without_scripts(api: Api) -> None:
    r = await api.get("/api/docs", headers={"Authorization": ""})
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
    page = r.body.decode()
    doc = (await api.get("/api/openapi.json")).json
    for path in doc["paths"]:
        assert f"<code>{path}</code>" in page.replace("&#x27;", "'"), path
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "script-src" not in r.headers["Content-Security-Policy"]
