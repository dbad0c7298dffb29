from typing import Any

import numpy as np
import pandas as pd
import pytest

from analytics import AnalyticsInputError, resample


def _minutes(values: Any, start: str = "2024-03-01 00:00", freq: str = "1min") -> pd.Series:
    idx = pd.date_range(start, periods=len(values), freq=freq, tz="UTC")
    return pd.Series(np.asarray(values, dtype=float), index=idx, name="requests")


@pytest.mark.parametrize("kind", ["series", "frame_column"])
def test_sum_to_hourly(kind):
    s = _minutes(np.ones(180))
    data = s if kind == "series" else s.to_frame()["requests"]
    out = resample(data, "1h")
    assert list(out) == [60.0, 60.0, 60.0]
    assert str(pd.DatetimeIndex(out.index).tz) == "UTC"
    assert out.name == "requests"


@pytest.mark.parametrize(
    ("how", "expected"),
    [("sum", 3.0), ("mean", 1.0), ("max", 2.0), ("min", 0.0), ("count", 3.0), ("last", 2.0)],
)
def test_aggregations(how, expected):
    s = _minutes([1.0, 0.0, 2.0])
    assert resample(s, "1h", how=how).iloc[0] == expected


def test_missing_buckets_are_explicit():
    s = _minutes([1.0, 1.0, 1.0], freq="1h")
    s = s.drop(s.index[1])
    nan_filled = resample(s, "1h")
    zero_filled = resample(s, "1h", fill="zero")
    assert len(nan_filled) == 3 and np.isnan(nan_filled.iloc[1])
    assert zero_filled.iloc[1] == 0.0
    assert resample(s, "1h", how="count").iloc[1] == 0.0


def test_start_and_end_widen_the_grid():
    s = _minutes([5.0], start="2024-03-01 10:30")
    out = resample(
        s,
        "1h",
        start=pd.Timestamp("2024-03-01 08:00", tz="UTC"),
        end=pd.Timestamp("2024-03-01 12:00", tz="UTC"),
    )
    assert list(pd.DatetimeIndex(out.index).hour) == [8, 9, 10, 11, 12]
    assert out.isna().sum() == 4 and out.iloc[2] == 5.0


def test_unsorted_and_duplicated_timestamps():
    idx = pd.DatetimeIndex(
        ["2024-03-01 01:10", "2024-03-01 00:05", "2024-03-01 01:10", "2024-03-01 00:50"],
        tz="UTC",
    )
    s = pd.Series([1.0, 2.0, 3.0, 4.0], index=idx)
    out = resample(s, "1h")
    assert list(out) == [6.0, 4.0]
    assert resample(s, "1h", how="max").tolist() == [4.0, 3.0]


def test_buckets_align_to_the_epoch_and_other_timezones_become_utc():
    idx = pd.date_range("2024-03-01 00:20", periods=4, freq="20min", tz="Europe/Paris")
    out = resample(pd.Series(1.0, index=idx), "1h")
    assert out.index[0] == pd.Timestamp("2024-02-29 23:00", tz="UTC")
    assert str(pd.DatetimeIndex(out.index).tz) == "UTC"


def test_dataframe_per_group():
    s = _minutes(np.arange(120.0))
    frame = pd.DataFrame({"agent-a": s, "agent-b": s * 2})
    out = resample(frame, "1h", how="max")
    assert list(out.columns) == ["agent-a", "agent-b"]
    assert out.loc[out.index[1], "agent-b"] == 238.0


def test_huge_values_and_empty_input():
    s = _minutes([1e300, 1e300])
    assert resample(s, "1h").iloc[0] == 2e300
    empty = pd.Series([], index=pd.DatetimeIndex([], tz="UTC"), dtype=float)
    assert resample(empty, "1h").empty


@pytest.mark.parametrize("bad", ["0h", "-1h"])
def test_non_positive_step(bad):
    with pytest.raises(AnalyticsInputError) as info:
        resample(_minutes([1.0]), bad)
    assert info.value.field == "step"


def test_infinite_values_are_refused():
    with pytest.raises(AnalyticsInputError, match="infinite"):
        resample(_minutes([1.0, np.inf]), "1h")
