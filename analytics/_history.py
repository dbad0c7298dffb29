"""Downsampling any metric to any step with the gaps left visible.

A chart that silently joins the points around a missing hour lies about an outage,
so empty buckets are always present: as NaN ("we do not know") or as 0 ("nothing
happened"), chosen by the caller who knows which is true for the metric.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import numpy as np
import pandas as pd

from analytics._validate import StepLike, clean_frame, clean_series, parse_step
from analytics.errors import AnalyticsInputError

How = Literal["sum", "mean", "max", "min", "median", "count", "first", "last"]
Fill = Literal["nan", "zero"]
HOWS: tuple[str, ...] = ("sum", "mean", "max", "min", "median", "count", "first", "last")


def _bound(value: Any, field: str) -> pd.Timestamp | None:
    if value is None:
        return None
    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        raise AnalyticsInputError(field, "must be timezone-aware, e.g. pd.Timestamp(..., tz='UTC')")
    return ts.tz_convert("UTC")


@overload
def resample(
    data: pd.Series[Any],
    step: StepLike,
    how: How = ...,
    *,
    fill: Fill = ...,
    start: Any = ...,
    end: Any = ...,
) -> pd.Series[float]: ...


@overload
def resample(
    data: pd.DataFrame,
    step: StepLike,
    how: How = ...,
    *,
    fill: Fill = ...,
    start: Any = ...,
    end: Any = ...,
) -> pd.DataFrame: ...


def resample(
    data: pd.Series[Any] | pd.DataFrame,
    step: StepLike,
    how: How = "sum",
    *,
    fill: Fill = "nan",
    start: Any = None,
    end: Any = None,
) -> pd.Series[float] | pd.DataFrame:
    """Aggregate ``data`` into buckets of ``step`` aligned to the Unix epoch.

    Epoch alignment makes the same hour the same bucket in every call, whatever
    the first timestamp was. Unsorted input is sorted and duplicated timestamps are
    combined by ``how`` like any other pair of points in a bucket. ``start``/``end``
    widen the grid so buckets missing at the edges of a window show up too.
    A bucket with no data is NaN (``fill='nan'``) or 0 (``fill='zero'``); ``count``
    is always 0 there.
    """
    step_td = parse_step(step)
    if how not in HOWS:
        raise AnalyticsInputError("how", f"expected one of {', '.join(HOWS)}, got {how!r}")
    if fill not in ("nan", "zero"):
        raise AnalyticsInputError("fill", f"expected 'nan' or 'zero', got {fill!r}")
    lo, hi = _bound(start, "start"), _bound(end, "end")
    if lo is not None and hi is not None and hi < lo:
        raise AnalyticsInputError("end", f"is before start ({hi} < {lo})")
    frame = clean_series(data).to_frame("__value__") if isinstance(data, pd.Series) else None
    if frame is None:
        frame = clean_frame(data, "series")
    if lo is not None:
        frame = frame[frame.index >= lo]
    if hi is not None:
        frame = frame[frame.index <= hi]
    grouped = frame.resample(step_td, origin="epoch", label="left", closed="left")
    # min_count=1 keeps an empty bucket NaN instead of a misleading 0.
    out = grouped.sum(min_count=1) if how == "sum" else getattr(grouped, how)()
    grid_lo = lo if lo is not None else (out.index[0] if len(out) else None)
    grid_hi = hi if hi is not None else (out.index[-1] if len(out) else None)
    if grid_lo is not None and grid_hi is not None:
        first = grid_lo.floor(step_td) if lo is not None else grid_lo
        grid = pd.date_range(first, grid_hi, freq=step_td, unit="ns")
        out = out.reindex(grid)
    if how == "count" or fill == "zero":
        out = out.fillna(0.0)
    out = out.astype(np.float64)
    if isinstance(data, pd.Series):
        result = out["__value__"]
        result.name = data.name
        return result
    return out
