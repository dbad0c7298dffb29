"""Boundary checks shared by every entry point.

The loading layer promises tidy UTC series at a regular step, but notebooks and
ad-hoc API calls will not always keep that promise. Checking here, once, lets the
numerical code assume float64 values on a sorted, gap-explicit UTC grid, and lets
every mistake surface as an :class:`AnalyticsInputError` naming the argument.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset

from analytics.errors import AnalyticsInputError

StepLike = str | pd.Timedelta | timedelta


def parse_step(step: StepLike, field: str = "step") -> pd.Timedelta:
    """Turn '1h', '5min', '1D' or a timedelta into a positive fixed-width step."""
    if isinstance(step, pd.Timedelta | timedelta):
        value = pd.Timedelta(step)
    elif isinstance(step, str):
        try:
            value = pd.Timedelta(cast(Any, to_offset(step)))
        except (ValueError, TypeError):
            raise AnalyticsInputError(
                field,
                f"{step!r} is not a fixed-width step; use a pandas frequency such as "
                "'1min', '5min', '1h' or '1D' (calendar steps like 'MS' or 'W' vary in length)",
            ) from None
    else:
        raise AnalyticsInputError(
            field, f"expected a string like '1h' or a timedelta, got {type(step).__name__}"
        )
    if value <= pd.Timedelta(0):
        raise AnalyticsInputError(field, f"must be positive, got {value}")
    return value


def _utc_index(index: pd.Index[Any], field: str) -> pd.DatetimeIndex:
    if not isinstance(index, pd.DatetimeIndex):
        raise AnalyticsInputError(
            field,
            f"index must be a DatetimeIndex, got {type(index).__name__}; "
            "set the timestamps as the index, e.g. df.set_index('ts')",
        )
    if index.tz is None:
        raise AnalyticsInputError(
            field,
            "timestamps are naive; localise them first, e.g. series.tz_localize('UTC')",
        )
    # asi8 arithmetic below assumes nanoseconds; pandas 3 may hand us microseconds.
    return index.tz_convert("UTC").as_unit("ns")


def _float_values(values: Any, field: str, what: str) -> np.ndarray[Any, np.dtype[np.float64]]:
    arr = np.asarray(values)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise AnalyticsInputError(field, f"{what} must be numeric, got dtype {arr.dtype}")
    out = arr.astype(np.float64)
    if np.isinf(out).any():
        raise AnalyticsInputError(
            field, f"{what} contains infinite values; replace them with NaN if they mean missing"
        )
    return out


def clean_series(series: Any, field: str = "series") -> pd.Series[float]:
    """Validate a metric series: UTC, numeric, finite or NaN, sorted by time."""
    if isinstance(series, pd.DataFrame):
        raise AnalyticsInputError(
            field, "expected a Series, got a DataFrame; pass one column, e.g. frame['cost']"
        )
    if not isinstance(series, pd.Series):
        raise AnalyticsInputError(field, f"expected a pandas Series, got {type(series).__name__}")
    index = _utc_index(series.index, field)
    values = _float_values(series.to_numpy(), field, "values")
    out = pd.Series(values, index=index, name=series.name, dtype=np.float64)
    if not out.index.is_monotonic_increasing:
        out = out.sort_index(kind="stable")
    return out


def clean_frame(frame: Any, field: str = "frame") -> pd.DataFrame:
    """Validate a wide frame with one numeric column per group."""
    if not isinstance(frame, pd.DataFrame):
        raise AnalyticsInputError(field, f"expected a pandas DataFrame, got {type(frame).__name__}")
    index = _utc_index(frame.index, field)
    columns = {
        str(name): _float_values(frame[name].to_numpy(), field, f"column {name!r}")
        for name in frame.columns
    }
    out = pd.DataFrame(columns, index=index)
    if not out.index.is_monotonic_increasing:
        out = out.sort_index(kind="stable")
    return out


def infer_step(index: pd.DatetimeIndex, field: str = "step") -> pd.Timedelta:
    """The most common spacing: robust to gaps, which only add multiples of it."""
    unique = index.unique()
    if len(unique) < 2:
        raise AnalyticsInputError(
            field, "cannot infer the step from fewer than two timestamps; pass step='1h' etc."
        )
    diffs = np.diff(unique.asi8)
    values, counts = np.unique(diffs, return_counts=True)
    return pd.Timedelta(int(values[np.argmax(counts)]), unit="ns")


def regular_series(
    series: Any, step: StepLike | None = None, field: str = "series"
) -> tuple[pd.Series[float], pd.Timedelta]:
    """Validate and lay a series on its regular grid, with missing buckets as NaN.

    Duplicated timestamps are refused rather than combined because the right
    combination (sum for tokens, max for latency) is the caller's knowledge.
    """
    out = clean_series(series, field)
    if out.index.has_duplicates:
        raise AnalyticsInputError(
            field,
            "timestamps are duplicated; combine them first with "
            "analytics.resample(series, step, how='sum' or 'mean' or 'max')",
        )
    index = cast(pd.DatetimeIndex, out.index)
    step_td = parse_step(step) if step is not None else infer_step(index)
    if len(out) == 0:
        return out, step_td
    offsets = index.asi8 - index.asi8[0]
    if np.any(offsets % step_td.value):
        raise AnalyticsInputError(
            field,
            f"timestamps are not on a regular {step_td} grid; "
            f"call analytics.resample(series, {_step_label(step_td)!r}) first",
        )
    grid = pd.date_range(out.index[0], out.index[-1], freq=step_td)
    if len(grid) != len(out):
        out = out.reindex(grid)
    return out, step_td


def _step_label(step: pd.Timedelta) -> str:
    offset = to_offset(step)
    return offset.freqstr if offset is not None else str(step)
