"""Operations: Prometheus ``/metrics`` and the human-readable ``/api/docs``.

Request counts and latencies are this instance's own (label them by instance in
Prometheus); the fleet gauges are read from Redis and so are the same whichever
instance is scraped.
"""

from __future__ import annotations

import html
import time
from functools import cache
from typing import Any

from .. import __version__
from ..keys import AGENT_STATUSES
from .base import APIHandler
from .opdocs import Op, ok_text
from .openapi import openapi_document
from .stats import labels_text


def _metric(
    name: str, help_text: str, rows: list[tuple[dict[str, str], float]], kind: str = "gauge"
) -> list[str]:
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in rows:
        out.append(f"{name}{labels_text(**labels) if labels else ''} {value:g}")
    return out


class MetricsHandler(APIHandler):
    """Prometheus text format. Needs ``read`` like every other read (a scraper sends
    a key as a bearer token): agent and queue names are not for anyone passing by."""

    scopes = {"GET": "read"}
    docs = {
        "GET": Op(
            "Prometheus text exposition: this instance's request counts and latencies, "
            "the fleet's agents by status and queue gauges",
            {"200": ok_text("Prometheus text format 0.0.4", "text/plain")},
        )
    }

    async def get(self) -> None:
        svc = self.services
        started = time.perf_counter()
        await svc.redis.ping()
        redis_s = time.perf_counter() - started
        now = await svc.redis_now_ms()
        by_status = await svc.agents.count_by_status()
        queues = await svc.tasks.queue_stats(now)
        lines = _metric(
            "ezdash_build_info", "Version of this instance.", [({"version": __version__}, 1)]
        )
        lines += _metric(
            "ezdash_uptime_seconds",
            "Seconds since this instance started.",
            [({}, round(time.time() - svc.started, 3))],
        )
        lines += _metric(
            "ezdash_redis_ping_seconds", "Round trip to Redis at scrape time.", [({}, redis_s)]
        )
        lines += _metric(
            "ezdash_agents",
            "Agents by status (the whole fleet).",
            [({"status": s}, by_status.get(s, 0)) for s in AGENT_STATUSES],
        )
        for field, help_text in (
            ("depth", "Tasks waiting per queue."),
            ("running", "Tasks running per queue."),
            ("oldest_age_s", "Age of the oldest waiting task per queue, seconds."),
            ("throughput_per_min", "Tasks finished per minute per queue (last 5 min)."),
        ):
            name = "ezdash_queue_" + field.replace("_s", "_seconds").replace(
                "per_min", "per_minute"
            )
            lines += _metric(name, help_text, [({"queue": q["name"]}, q[field]) for q in queues])
        lines += _metric(
            "ezdash_log_stream_readers",
            "Live log stream readers on this instance.",
            [({}, len(svc.log_tail.readers))],
        )
        lines += _metric(
            "ezdash_analytics_cache_hits_total",
            "Analytics answers served from cache by this instance (since start).",
            [({}, svc.cache.hits)],
            "counter",
        )
        lines += _metric(
            "ezdash_analytics_cache_misses_total",
            "Analytics answers computed by this instance (since start).",
            [({}, svc.cache.misses)],
            "counter",
        )
        lines += _metric(
            "ezdash_audit_buffered",
            "Audit records waiting in this instance for Redis.",
            [({}, svc.audit.buffered)],
        )
        lines += _metric(
            "ezdash_audit_dropped_total",
            "Audit records this instance could not keep (its buffer was full).",
            [({}, svc.audit.dropped)],
            "counter",
        )
        lines += _metric(
            "ezdash_redis_outages_total",
            "Times this instance found Redis unavailable.",
            [({}, svc.redis_watch.outages)],
            "counter",
        )
        lines += svc.request_stats.lines()
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish("\n".join(lines) + "\n")


class DocsHandler(APIHandler):
    """The OpenAPI document as a page: every endpoint, its scope and parameters.

    Rendered here, without scripts or outside assets, so it works offline and under
    the same strict Content-Security-Policy as the API (plus inline styles)."""

    scopes = {"GET": None}
    docs = {
        "GET": Op("This document as a human-readable page", {"200": ok_text("HTML", "text/html")})
    }

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        )
        self.finish(docs_page())


@cache
def docs_page() -> str:
    """The page never changes while the process runs: render it once."""
    return render_docs(openapi_document())


def render_docs(doc: dict[str, Any]) -> str:
    e = html.escape
    rows: list[str] = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            params = "".join(
                f"<li><code>{e(p['name'])}</code> ({e(p['in'])}): {e(p.get('description', ''))}"
                "</li>"
                for p in op.get("parameters", [])
            )
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            ref = body.get("schema", {}).get("$ref", "")
            body_html = f"<p>Body: <code>{e(ref.rsplit('/', 1)[-1])}</code></p>" if ref else ""
            answers = ", ".join(e(code) for code in op.get("responses", {}))
            rows.append(
                f'<section id="{e(method)}-{e(path)}"><h3><span class="m">{e(method.upper())}'
                f"</span> <code>{e(path)}</code></h3><p>{e(op.get('summary', ''))}</p>"
                f"<p>Scope: <code>{e(str(op.get('x-scope') or 'none'))}</code> · "
                f"answers: {answers}</p>{body_html}"
                + (f"<ul>{params}</ul>" if params else "")
                + "</section>"
            )
    title = e(doc["info"]["title"])
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{title} API</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "section{border-top:1px solid #ddd;padding:.5rem 0}.m{display:inline-block;"
        "min-width:4rem;font-weight:bold}code{background:#f4f4f4;padding:0 .2rem}</style>"
        f"</head><body><h1>{title} {e(doc['info']['version'])}</h1>"
        "<p>Machine-readable: <a href='/api/openapi.json'>/api/openapi.json</a> (OpenAPI "
        "3.1). Send <code>Authorization: Bearer &lt;API key or JWT&gt;</code>; errors are "
        "RFC 9457 problem JSON naming the field.</p>" + "".join(rows) + "</body></html>"
    )


default_handlers = [
    (r"/metrics", MetricsHandler),
    (r"/api/docs", DocsHandler),
]
