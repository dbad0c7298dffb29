"""Logs: search, export, a Server-Sent Events stream that resumes without gaps, ingest.

Entries come from agents (``ezdash.agent`` writes them to Redis itself) or through
``POST /api/ingest/logs``. Every read here walks the log stream in bounded chunks;
see ``ezdash.store.logs`` for why that keeps each request's cost flat.
"""

from __future__ import annotations

import asyncio
import csv
import io
import zlib
from typing import Any

import orjson
from tornado.iostream import StreamClosedError

from ..store.logs import (
    ALIASES,
    LEVELS,
    Doc,
    LogFilter,
    level_name,
    public,
    stream_id,
    validate,
)
from ..store.tasks import fingerprint
from ..timeutil import format_ms, parse_time
from .base import APIHandler
from .listing import entry_id, list_page
from .models import LogEntryIn
from .opdocs import Op, batch, ok, ok_text, problem, ref
from .params import (
    ENTRY_ID,
    IDEMPOTENCY_KEY,
    PAGE,
    STREAM_ID,
    Boolean,
    Choice,
    Header,
    Since,
    Text,
    Time,
)

DAY = 86_400_000
CSV_COLUMNS = ("id", "ts", "level", "agent_id", "task_id", "message", "fields")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\0")
"""A spreadsheet reads a cell starting with one of these as a formula (OWASP, CSV
injection): such a cell is written with a leading single quote, unless the client
asks ``escape_formulas=false``."""


LOG_FILTERS = (
    Text("agent", "Only this agent", max_len=128),
    Text("task", "Only this task", max_len=128),
    Choice(
        "level",
        f"Minimum level ({', '.join(f'{a} = {b}' for a, b in ALIASES.items())})",
        values=(*LEVELS, *ALIASES),
    ),
    Text("q", "Case-insensitive substring of the message", max_len=200),
)
LOG_RANGE = (
    Time("from", "Recorded at or after (default now-24h)"),
    Time("to", "Recorded before (default now; a to before from selects nothing)"),
)

SSE_EVENT = {
    "type": "object",
    "description": "One event (comments are not events)",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": STREAM_ID},
        "event": {"const": "log"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": ref("LogEntry"),
        },
        "retry": {"type": "integer"},
    },
}
"""The schema of one event of ``/api/logs/stream``."""


class LogsHandler(APIHandler):
    scopes = {"GET": "read"}

    def log_filter(self) -> LogFilter:
        level = self.q_str("level")
        return LogFilter(
            agent=self.q_str("agent"),
            task=self.q_str("task"),
            min_level=level_name(level) or "debug" if level else "debug",
            q=self.q_str("q"),
        )

    def time_range(self, now: int) -> tuple[int, int]:
        """``from``/``to`` select by the time the server recorded an entry (its id),
        resolved at ``now``; the default is the last 24 h, as everywhere in the API."""
        start = self.q_time("from", now)
        end = self.q_time("to", now)
        end = now + 1 if end is None else end
        start = end - DAY if start is None else start
        start = max(0, start)
        return start, max(start + 1, end)  # a to before from: an empty range


class SearchHandler(LogsHandler):
    docs = {
        "GET": Op(
            "Log entries, newest first; a page may be short with a cursor when the "
            "filter is sparse (each page examines a bounded number of entries)",
            {"200": ok("LogPage")},
        )
    }
    query = {"GET": (*LOG_FILTERS, *LOG_RANGE, *PAGE)}

    async def get(self) -> None:
        flt = self.log_filter()
        page = await list_page(self, entry_id, timed=True)
        start, end = self.time_range(page.now)
        found, last = await self.services.logs.search(
            flt, start_ms=start, end_ms=end, before=page.after, limit=page.limit
        )
        self.write_json(
            {
                "items": [public(i, d) for i, d in found],
                "next_cursor": page.next_cursor(last),
            }
        )


class ExportHandler(LogsHandler):
    """Oldest first, written and flushed chunk by chunk: memory stays flat whatever
    the range, and the client sees bytes at once. gzip when the client accepts it
    (compressed here, in stream, since the generic transform skips these types)."""

    docs = {
        "GET": Op(
            "The matching entries, oldest first, streamed as an attachment (gzip when accepted)",
            {
                "200": ok_text(
                    "NDJSON (one LogEntry per line) or CSV", "application/x-ndjson", "text/csv"
                )
            },
        )
    }
    query = {
        "GET": (
            *LOG_FILTERS,
            *LOG_RANGE,
            Choice("format", "ndjson (default) or csv", values=("ndjson", "csv")),
            Boolean(
                "escape_formulas",
                "CSV only: prefix cells a spreadsheet would run as formulas with ' (default true)",
            ),
        )
    }

    async def get(self) -> None:
        fmt = self.q_str("format") or "ndjson"
        escape = bool(self.args.get("escape_formulas", True))
        flt = self.log_filter()
        start, end = self.time_range(await self.services.redis_now_ms())
        await self.settle()  # nothing may be sent before the credential check passed
        gzip = "gzip" in self.request.headers.get("Accept-Encoding", "")
        stamp = [str(format_ms(t))[:19].replace(":", "") for t in (start, end)]
        name = f"logs-{stamp[0]}-{stamp[1]}.{fmt}"
        self.set_header(
            "Content-Type",
            "application/x-ndjson" if fmt == "ndjson" else "text/csv; charset=utf-8",
        )
        self.set_header("Content-Disposition", f'attachment; filename="{name}"')
        if gzip:
            self.set_header("Content-Encoding", "gzip")
        self.add_header("Vary", "Accept-Encoding")
        packer = zlib.compressobj(6, zlib.DEFLATED, 31) if gzip else None
        if fmt == "csv":
            self._emit(packer, _csv_rows([CSV_COLUMNS]))
        rows = 0
        async for chunk in self.services.logs.forward(
            flt, after=f"{start - 1}-18446744073709551615" if start else "-", end=str(end - 1)
        ):
            if not chunk:
                continue
            rows += len(chunk)
            if fmt == "ndjson":
                data = b"".join(orjson.dumps(public(i, d)) + b"\n" for i, d in chunk)
            else:
                data = _csv_rows(_csv_record(i, d, escape) for i, d in chunk)
            self._emit(packer, data)
            try:
                await self.flush()
            except StreamClosedError:
                return  # the client went away; stop reading Redis for nobody
        if packer is not None:
            self.write(packer.flush())
        self.audit_detail = f"rows={rows}"
        self.finish()

    def _emit(self, packer: Any, data: bytes) -> None:
        self.write(packer.compress(data) if packer is not None else data)


def _csv_record(entry_id: str, doc: Doc, escape: bool) -> tuple[str, ...]:
    p = public(entry_id, doc)
    cells = (
        p["id"],
        p["ts"],
        p["level"],
        p["agent_id"],
        p["task_id"] or "",
        p["message"],
        orjson.dumps(p["fields"]).decode(),
    )
    if not escape:
        return cells
    # every cell: most come from whoever sent the entry, and the rest cost nothing
    return tuple("'" + c if c.startswith(FORMULA_START) else c for c in cells)


def _csv_rows(rows: Any) -> bytes:
    """RFC 4180 rows, ending CRLF: the writer quotes a cell holding any character of
    the line end, so a bare carriage return cannot start a row of its own."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode()


class StreamHandler(LogsHandler):
    """``text/event-stream``: missed entries first (after ``Last-Event-ID`` or
    ``since``), then live ones, each id strictly after the one before."""

    docs = {
        "GET": Op(
            "Server-Sent Events: `id`, `event: log`, `data: LogEntry`; resumes after "
            "Last-Event-ID (or ?since=) with nothing lost and nothing twice; a comment "
            "line at least every 15 s",
            {
                "200": {
                    "description": "An event stream: one event per log entry",
                    "content": {"text/event-stream": {"schema": SSE_EVENT}},
                }
            },
        )
    }
    query_token = True
    _closed = False
    query = {"GET": (*LOG_FILTERS, Since("since", "An entry id or a time to resume after"))}
    headers_in = {
        "GET": (
            Header(
                "Last-Event-ID",
                "The id of the last event received; wins over since",
                max_len=41,
                pattern=ENTRY_ID,
                hint="must be an id this stream sent",
            ),
        )
    }

    def on_connection_close(self) -> None:
        self._closed = True

    async def get(self) -> None:
        flt = self.log_filter()
        svc = self.services
        since = await self._since()
        await self.settle()
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Accel-Buffering", "no")  # nginx: do not buffer the stream
        queue = await svc.log_tail.subscribe()
        try:
            self.write(b"retry: 2000\n\n")
            if since is None:
                last = await svc.logs.last_id()
            else:
                last = since
                async for chunk in svc.logs.forward(flt, after=since):
                    for entry_id, doc in chunk:
                        self._event(entry_id, doc)
                        last = entry_id
                    if not await self._flush():
                        return
            await self._flush()
            await self._live(queue, flt, last)
        finally:
            svc.log_tail.unsubscribe(queue)
            if not self._closed:
                self.finish()

    async def _live(self, queue: Any, flt: LogFilter, last: str) -> None:
        """Live entries. The keep-alive deadline runs from the last bytes flushed, not
        from the last entry read: entries the filter drops are silence on the wire."""
        keepalive = self.services.settings.log_keepalive
        clock = asyncio.get_running_loop().time
        floor = stream_id(last)
        pending = False  # events written since the last flush
        due = clock() + keepalive
        while not self._closed and not self.services.draining:
            if (pending and queue.empty()) or clock() >= due:
                if not pending:
                    self.write(b": keepalive\n\n")
                if not await self._flush():
                    return
                pending = False
                due = clock() + keepalive
            try:
                item = await asyncio.wait_for(queue.get(), max(0.0, due - clock()))
            except TimeoutError:
                continue
            if item is None:
                return  # fell too far behind: the client resumes with Last-Event-ID
            entry_id, doc = item
            if stream_id(entry_id) <= floor:
                continue  # already sent while catching up
            floor = stream_id(entry_id)
            if flt.match(doc):
                self._event(entry_id, doc)
                pending = True

    def _event(self, entry_id: str, doc: Doc) -> None:
        self.write(
            b"id: "
            + entry_id.encode()
            + b"\nevent: log\ndata: "
            + orjson.dumps(public(entry_id, doc))
            + b"\n\n"
        )

    async def _flush(self) -> bool:
        if self._closed:
            return False
        try:
            await self.flush()
        except StreamClosedError:
            self._closed = True
            return False
        return True

    async def _since(self) -> str | None:
        """Resume point: ``Last-Event-ID`` wins over ``?since=`` (an id or a time)."""
        header = self.args.get("Last-Event-ID")
        if header is not None:
            return str(header)
        since = self.args.get("since")
        if since is None:
            return None
        kind, raw = since
        if kind == "id":
            return str(raw)
        ms = parse_time(raw, now=await self.services.redis_now_ms())
        return f"{max(0, ms - 1)}-18446744073709551615"


class IngestLogsHandler(APIHandler):
    """A batch of entries from agents that do not write to Redis themselves.

    All or nothing, like usage ingest: one invalid entry refuses the batch with
    every problem named by index; an Idempotency-Key makes a resend harmless."""

    scopes = {"POST": "write"}
    docs = {
        "POST": Op(
            'Log entries (a JSON array of LogEntryIn or {"entries": [...]}); all or nothing',
            {"202": ok("Accepted", "Accepted"), "413": problem("Too many entries")},
            body=batch(LogEntryIn, "entries"),
        )
    }
    actions = {"POST": "ingest.logs"}
    headers_in = {"POST": (IDEMPOTENCY_KEY,)}

    async def post(self) -> None:
        svc = self.services
        items = self.batch_items("entries")
        now = await svc.redis_now_ms()
        docs: list[Doc] = []
        bad: list[dict[str, Any]] = []
        for i, raw in enumerate(items):
            doc, problems = validate(raw, now)
            if doc is None:
                bad.append({"index": i, "errors": problems})
            else:
                docs.append(doc)
        if bad:
            raise self.refuse_batch("entries", len(items), bad)
        ids = await svc.logs.append(
            docs,
            now_ms=now,
            batch_id=self.batch_id(),
            fingerprint=fingerprint(items),
            dedupe_ttl_ms=int(svc.settings.idempotency_ttl * 1000),
        )
        if ids is None:
            self.set_header("Idempotent-Replayed", "true")
        self.audit_detail = f"entries={len(docs)}"
        self.write_json({"accepted": len(docs)}, 202)


default_handlers = [
    (r"/api/ingest/logs", IngestLogsHandler),
    (r"/api/logs/search", SearchHandler),
    (r"/api/logs/export", ExportHandler),
    (r"/api/logs/stream", StreamHandler),
]
