"""The analyst page: history, forecast, trends, anomalies and cost predictions.

One ``AnalystPage`` per browser session. ``refresh()`` loads the complete buckets
for the chosen view, then runs the fits in the worker pool and fills each part of
the page as its answer arrives, with a progress bar, so a person sees the history
at once and never waits on the slowest fit for the rest. A newer refresh (a changed
control, the minute timer) supersedes one in flight: its late answers are dropped.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pandas as pd
import panel as pn
from bokeh.models import ColumnDataSource, HoverTool
from bokeh.palettes import Category10_10
from bokeh.plotting import figure
from redis.exceptions import RedisError

from analytics.files import tidy

from ..analysis.jobs import JobInputError
from ..analysis.loader import METRICS
from ..metrics import catalog
from ..metrics.query import QueryError, fmt_step
from ..timeutil import format_ms
from .data import DAY, HOUR, AnalystData, Loaded, Query

log = logging.getLogger(__name__)

WINDOWS = {"24 hours": DAY, "7 days": 7 * DAY, "30 days": 30 * DAY, "90 days": 90 * DAY}
STEPS = {"5 minutes": 5 * 60_000, "1 hour": HOUR, "1 day": DAY}
HORIZONS = {"1 day": DAY, "2 days": 2 * DAY, "7 days": 7 * DAY, "30 days": 30 * DAY}
GROUPS = ("none", *catalog.NAMES)
FILTER_DIMS = catalog.NAMES
MAX_LINES = 8  # more groups than this is a table's job, not a chart's
REFRESH_MS = 60_000


def _label(ms: int, table: dict[str, int]) -> str:
    return next(k for k, v in table.items() if v == ms)


def _money(x: Any) -> str:
    return "n/a" if x is None else f"${float(x):,.2f}"


def _day(ts: Any) -> str:
    return "n/a" if ts is None else str(ts)[:10]


def _quiet(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a late failure of a superseded refresh is moot


def _card(title: str, value: str) -> pn.indicators.String:
    return pn.indicators.String(
        label=title, value=value, font_size="22pt", title_size="11pt", margin=(5, 25, 5, 10)
    )


class AnalystPage:
    def __init__(self, data: AnalystData, user: str | None = None) -> None:
        self.data = data
        self.user = user
        self._generation = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.loaded: Loaded | None = None

        self.metric = pn.widgets.Select(label="Metric", options=list(METRICS), value="cost_usd")
        self.window = pn.widgets.Select(label="Window", options=list(WINDOWS), value="7 days")
        self.step = pn.widgets.Select(label="Step", options=list(STEPS), value="1 hour")
        self.group_by = pn.widgets.Select(label="Group by", options=list(GROUPS), value="none")
        self.horizon = pn.widgets.Select(label="Forecast", options=list(HORIZONS), value="2 days")
        self.filter_dim = pn.widgets.Select(
            label="Only", options=["none", *FILTER_DIMS], value="none", width=110
        )
        self.filter_value = pn.widgets.Select(label="equal to", options=[], width=200)
        self.refresh_button = pn.widgets.Button(label="Refresh", color="primary")
        self.auto = pn.widgets.Checkbox(label="Refresh every minute", value=True)
        self.download = pn.widgets.FileDownload(
            callback=self._csv, filename="cost_usd.csv", label="Export CSV", embed=False
        )
        self.download_parquet = pn.widgets.FileDownload(
            callback=self._parquet,
            filename="cost_usd.parquet",
            label="Export Parquet",
            embed=False,
        )
        self.progress = pn.indicators.Progress(value=0, max=6, width=220, bar_color="primary")
        self.status = pn.pane.Markdown("Loading…", margin=(0, 10))
        self.kpis = pn.Row()
        self.chart = pn.pane.Bokeh(self._empty_figure(), sizing_mode="stretch_width")
        self.model_note = pn.pane.Markdown("")
        self.trends_table = pn.widgets.Tabulator(
            pd.DataFrame(), disabled=True, show_index=False, sizing_mode="stretch_width"
        )
        self.anomalies_table = pn.widgets.Tabulator(
            pd.DataFrame(), disabled=True, show_index=False, sizing_mode="stretch_width"
        )
        self.alerts_table = pn.widgets.Tabulator(
            pd.DataFrame(), disabled=True, show_index=False, sizing_mode="stretch_width"
        )
        self.queues_table = pn.widgets.Tabulator(
            pd.DataFrame(), disabled=True, show_index=False, sizing_mode="stretch_width"
        )
        for widget in (
            self.metric,
            self.window,
            self.step,
            self.group_by,
            self.horizon,
            self.filter_value,
        ):
            widget.param.watch(self._changed, "value")
        self.filter_dim.param.watch(self._dimension_changed, "value")
        self.refresh_button.on_click(self._clicked)

    # -- layout -------------------------------------------------------------------
    def view(self) -> pn.viewable.Viewable:
        who = f"Signed in with API key `{self.user}` · [sign out](./logout)" if self.user else ""
        controls = pn.Row(
            self.metric,
            self.window,
            self.step,
            self.group_by,
            self.horizon,
            self.filter_dim,
            self.filter_value,
            pn.Column(self.refresh_button, self.auto),
            pn.Column(self.download, self.download_parquet),
        )
        return pn.Column(
            pn.Row(pn.pane.Markdown("## EzAugent analytics"), pn.Spacer(), pn.pane.Markdown(who)),
            controls,
            pn.Row(self.progress, self.status),
            self.kpis,
            self.chart,
            self.model_note,
            pn.Tabs(
                ("Trends", self.trends_table),
                ("Anomalies", self.anomalies_table),
                ("Queues", self.queues_table),
                ("Alerts", self.alerts_table),
            ),
            sizing_mode="stretch_width",
        )

    def serve_hooks(self) -> None:
        """Inside a server session: refresh once the page has loaded, then every minute."""
        pn.state.onload(self._on_load)
        pn.state.add_periodic_callback(self._tick, period=REFRESH_MS)
        pn.state.on_session_destroyed(lambda _context: self.spawn_close())

    def spawn_close(self) -> None:
        asyncio.get_running_loop().create_task(self.close())

    # -- events -------------------------------------------------------------------
    def _changed(self, _event: Any) -> None:
        self.spawn_refresh()

    def _clicked(self, _event: Any) -> None:
        self.spawn_refresh()

    def _tick(self) -> None:
        if self.auto.value:
            self.spawn_refresh()

    def _on_load(self) -> None:
        self.spawn_refresh()

    def spawn_refresh(self) -> asyncio.Task[None]:
        """Start a refresh the page keeps hold of, so closing the session stops it."""
        task = asyncio.get_running_loop().create_task(self.refresh())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Stop refreshes in flight (the session ended or the server is stopping)."""
        self._generation += 1
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _dimension_changed(self, _event: Any) -> None:
        task = asyncio.get_running_loop().create_task(self.load_filter_values())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def load_filter_values(self) -> None:
        """The values seen in the window for the chosen dimension, busiest first; the
        view refreshes when one is picked (or at once when the filter is cleared)."""
        dim = str(self.filter_dim.value)
        if dim == "none":
            self.filter_value.options = []
            self.filter_value.value = None
            self.spawn_refresh()
            return
        q = self.current_query()
        try:
            values = await self.data.group_values(dim, q, await self.data.now_ms())
        except (QueryError, RedisError, OSError) as e:
            self.status.object = f"Cannot list {dim} values: {e}"
            return
        self.filter_value.options = values
        self.filter_value.value = values[0] if values else None

    def current_query(self) -> Query:
        dim, value = str(self.filter_dim.value), self.filter_value.value
        return Query(
            metric=str(self.metric.value),
            window_ms=WINDOWS[str(self.window.value)],
            step_ms=STEPS[str(self.step.value)],
            group_by=str(self.group_by.value),
            horizon_ms=HORIZONS[str(self.horizon.value)],
            filters=((dim, str(value)),) if dim != "none" and value else (),
        )

    # -- the work -----------------------------------------------------------------
    async def refresh(self) -> None:
        self._generation += 1
        generation = self._generation
        q = self.current_query()
        self.progress.value = 0
        self.status.object = f"Loading {q.metric} over {_label(q.window_ms, WINDOWS)}…"
        try:
            now = await self.data.now_ms()
            loaded = await self.data.load(q, now)
        except QueryError as e:
            self._fail(generation, f"Cannot show this view: {e} (change *{e.field}*).")
            return
        except (RedisError, OSError) as e:
            self._fail(generation, f"Redis is unreachable ({e}); showing the last data.")
            return
        if generation != self._generation:
            return
        self.loaded = loaded
        self.download.filename = f"{q.metric}.csv"
        self.download_parquet.filename = f"{q.metric}.parquet"
        self.chart.object = self._figure(q, loaded, None, [])
        self.progress.value = 1
        self.status.object = "Fitting forecast, trends, anomalies and predictions…"

        forecast: dict[str, Any] | None = None
        anomalies: list[dict[str, Any]] = []
        steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("forecast", lambda: self.data.forecast(loaded, q)),
            ("anomalies", lambda: self.data.anomalies(loaded, q)),
            ("trends", lambda: self.data.trends(q, now)),
            ("predictions", lambda: self.data.predictions(now, q)),
            ("alerts", self.data.alerts),
        ]
        # All at once: the worker pool bounds how many fits run together.
        pending = {asyncio.ensure_future(make()): name for name, make in steps}
        problems: list[str] = []
        try:
            waiting = set(pending)
            while waiting:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if generation != self._generation:
                    return
                for task in done:
                    name = pending[task]
                    try:
                        result = task.result()
                    except (JobInputError, QueryError) as e:
                        problems.append(f"{name}: {e}")
                        continue
                    except (RedisError, OSError) as e:
                        problems.append(f"{name}: Redis: {e}")
                        continue
                    except Exception:
                        # A bug must not take the page down with it: say so, keep the rest.
                        log.exception("analyst page: %s failed", name)
                        problems.append(f"{name}: failed (see the server log)")
                        continue
                    self.progress.value = min(self.progress.max, self.progress.value + 1)
                    if name == "forecast":
                        forecast = result
                        self._show_forecast(result)
                    elif name == "anomalies":
                        anomalies = result
                        self._show_anomalies(result)
                    elif name == "trends":
                        self._show_trends(result)
                    elif name == "alerts":
                        self._show_alerts(result)
                    else:
                        self._show_predictions(result)
                self.chart.object = self._figure(q, loaded, forecast, anomalies)
        finally:
            # A superseded refresh lets its fits finish: the worker computes them
            # anyway, the cache keeps them for the next refresh, and a newer refresh
            # of the same view may be waiting on the very same computation.
            for task in pending:
                task.add_done_callback(_quiet)
        if generation != self._generation:
            return
        as_of = format_ms(loaded.end_ms)
        done_note = f"Complete buckets up to {as_of}."
        if loaded.plan.step_ms != q.step_ms:
            done_note += (
                f" {_label(q.step_ms, STEPS)} steps are finer than the rollups keep over "
                f"{_label(q.window_ms, WINDOWS)}: showing {fmt_step(loaded.plan.step_ms)} steps."
            )
        self.status.object = done_note + (" " + " ".join(problems) if problems else "")

    def _fail(self, generation: int, message: str) -> None:
        if generation == self._generation:
            self.status.object = message
            self.progress.value = 0

    # -- parts of the page --------------------------------------------------------
    def _show_forecast(self, result: dict[str, Any]) -> None:
        bt = result["backtest"]
        if bt["origins"]:
            score = (
                f"backtest over {bt['origins']} origins: MASE {bt['mase']:.3f} "
                f"(below 1 beats the seasonal naive), sMAPE {bt['smape']:.1f}%"
            )
        else:
            score = "too little history to backtest; a baseline is used"
        self.model_note.object = (
            f"**Forecast** of the fleet line: `{result['model']}`, {score}. "
            f"Shaded: 80% and 95% intervals."
        )

    def _show_anomalies(self, items: list[dict[str, Any]]) -> None:
        self.anomalies_table.value = pd.DataFrame(
            items, columns=["ts", "value", "expected", "score", "direction", "kind"]
        )

    def _show_alerts(self, items: list[dict[str, Any]]) -> None:
        columns = ["fired_at", "rule_name", "subject", "message"]
        self.alerts_table.value = pd.DataFrame(
            [{c: a.get(c) for c in columns} for a in items], columns=columns
        )

    def _show_trends(self, items: list[dict[str, Any]]) -> None:
        frame = pd.DataFrame(
            items,
            columns=[
                "group",
                "direction",
                "slope_per_day",
                "pct_change",
                "p_value",
                "seasonality_strength",
                "n",
            ],
        )
        self.trends_table.value = frame

    def _show_predictions(self, result: dict[str, Any]) -> None:
        month = result["month_end_cost"]
        cards: list[pn.viewable.Viewable] = [
            _card("Month to date", _money(month["spent"])),
            _card(
                f"Month end ({month['level']:g}% interval)",
                f"{_money(month['projected'])} "
                f"({_money(month['lower'])} to {_money(month['upper'])})",
            ),
        ]
        budget = result.get("budget")
        if budget:
            if budget["exhausted"]:
                when = "already spent"
            elif budget["date"] is None:
                when = "not this month"
            else:
                when = _day(budget["date"])
            cards.append(_card(f"Budget {_money(budget['budget_usd'])} runs out", when))
        self.kpis.objects = cards
        self.queues_table.value = pd.DataFrame(
            [
                {
                    "queue": q["name"],
                    "depth": q["depth"],
                    "arrivals_per_min": q["arrivals_per_min"],
                    "throughput_per_min": q["throughput_per_min"],
                    "drain_eta_s": q["drain_eta_s"],
                }
                for q in result["queues"]
            ],
            columns=["queue", "depth", "arrivals_per_min", "throughput_per_min", "drain_eta_s"],
        )

    def _csv(self) -> io.StringIO:
        """The loaded frame in the long form ``analytics.files.read_file`` reads back."""
        out = io.StringIO()
        if self.loaded is not None:
            tidy(self.loaded.frame).to_csv(out, index=False)
        out.seek(0)
        return out

    def _parquet(self) -> io.BytesIO:
        out = io.BytesIO()
        if self.loaded is not None:
            tidy(self.loaded.frame).to_parquet(out, index=False)
        out.seek(0)
        return out

    # -- chart ----------------------------------------------------------------------
    @staticmethod
    def _empty_figure() -> Any:
        return figure(x_axis_type="datetime", height=380, sizing_mode="stretch_width")

    def _figure(
        self,
        q: Query,
        loaded: Loaded,
        forecast: dict[str, Any] | None,
        anomalies: list[dict[str, Any]],
    ) -> Any:
        fig = figure(
            x_axis_type="datetime",
            height=380,
            sizing_mode="stretch_width",
            title=f"{q.metric}, {_label(q.step_ms, STEPS)} buckets",
        )
        fig.add_tools(
            HoverTool(
                tooltips=[("", "$name"), ("t", "$x{%F %H:%M}"), ("value", "$y")],
                formatters={"$x": "datetime"},
            )
        )
        index = pd.DatetimeIndex(loaded.frame.index).tz_convert(None).to_numpy()
        if q.group_by != "none":
            ranked = loaded.frame.sum(skipna=True).sort_values(ascending=False)
            for i, col in enumerate(ranked.index[:MAX_LINES]):
                fig.line(
                    index,
                    loaded.frame[col].to_numpy(dtype=float),
                    color=Category10_10[i % 10],
                    legend_label=str(col)[:40],
                    name=str(col),
                )
        fig.line(
            pd.DatetimeIndex(loaded.total.index).tz_convert(None).to_numpy(),
            loaded.total.to_numpy(dtype=float),
            color="black",
            line_width=2,
            legend_label="fleet",
            name="fleet",
        )
        if forecast is not None:
            t = pd.to_datetime(forecast["t"], utc=True).tz_convert(None)

            def col(name: str) -> np.ndarray[Any, Any]:
                return np.array([np.nan if v is None else v for v in forecast[name]], dtype=float)

            for level, alpha in (("95", 0.15), ("80", 0.3)):
                fig.varea(
                    x=t,
                    y1=col(f"lower_{level}"),
                    y2=col(f"upper_{level}"),
                    fill_color="#1f6feb",
                    fill_alpha=alpha,
                    legend_label=f"{level}% interval",
                )
            fig.line(
                t,
                col("mean"),
                color="#1f6feb",
                line_dash="dashed",
                line_width=2,
                legend_label="forecast",
                name="forecast",
            )
        if anomalies:
            source = ColumnDataSource(
                {
                    "t": pd.to_datetime([a["ts"] for a in anomalies], utc=True).tz_convert(None),
                    "value": [math.nan if a["value"] is None else a["value"] for a in anomalies],
                }
            )
            fig.scatter(
                "t",
                "value",
                source=source,
                size=9,
                color="#d1242f",
                legend_label="anomaly",
                name="anomaly",
            )
        # Beside the plot, not over the data; click an entry to hide its line.
        legend = fig.legend[0]
        legend.click_policy = "hide"
        fig.add_layout(legend, "right")
        return fig
