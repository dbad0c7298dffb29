import numpy as np
import pandas as pd
import pytest

from analytics import AnalyticsInputError, budget_runout, project_month_end, queue_drain_eta


def _hourly_cost(start: str, end: str, rate: float = 2.0, seed: int = 0) -> pd.Series:
    idx = pd.date_range(start, end, freq="h", tz="UTC", inclusive="left")
    rng = np.random.default_rng(seed)
    daily = 1 + 0.5 * np.sin(2 * np.pi * np.arange(len(idx)) / 24)
    return pd.Series(rate * daily + rng.normal(0, 0.1, len(idx)), idx, name="cost_usd")


def test_month_end_projection_brackets_the_truth():
    full = _hourly_cost("2024-05-20", "2024-07-01")
    so_far = full[full.index < pd.Timestamp("2024-06-15", tz="UTC")]
    proj = project_month_end(so_far, level=90)
    truth = full[full.index >= pd.Timestamp("2024-06-01", tz="UTC")].sum()
    assert proj.month_start == pd.Timestamp("2024-06-01", tz="UTC")
    assert proj.month_end == pd.Timestamp("2024-07-01", tz="UTC")
    assert proj.remaining_steps == 16 * 24
    assert proj.spent == pytest.approx(so_far[so_far.index >= proj.month_start].sum())
    assert proj.lower <= truth <= proj.upper
    assert proj.projected_total == pytest.approx(truth, rel=0.03)
    assert proj.lower >= proj.spent


@pytest.mark.parametrize("kind", ["series", "frame_column"])
def test_month_end_on_daily_data_at_month_end(kind):
    idx = pd.date_range("2024-01-01", "2024-01-31", freq="D", tz="UTC")
    s = pd.Series(10.0, idx, name="c")
    data = s if kind == "series" else s.to_frame()["c"]
    proj = project_month_end(data)
    assert proj.remaining_steps == 0
    assert proj.projected_total == proj.lower == proj.upper == 310.0


def test_budget_runout_date():
    cost = _hourly_cost("2024-06-01", "2024-06-08")  # about 48 USD a day
    spent = cost.sum()
    out = budget_runout(cost, budget=spent + 48 * 3)
    assert not out.exhausted
    assert out.date is not None
    assert abs(out.date - pd.Timestamp("2024-06-11", tz="UTC")) <= pd.Timedelta("6h")
    assert out.earliest is not None and out.latest is not None
    assert out.earliest <= out.date <= out.latest


def test_budget_not_reached_within_horizon_is_none():
    cost = _hourly_cost("2024-06-01", "2024-06-08")
    out = budget_runout(cost, budget=1e9, within="7D")
    assert out.date is None and out.earliest is None and not out.exhausted
    assert out.horizon_end == pd.Timestamp("2024-06-14 23:00", tz="UTC")


def test_budget_already_exhausted_reports_when():
    cost = _hourly_cost("2024-06-01", "2024-06-03")
    out = budget_runout(cost, budget=cost.iloc[:10].sum())
    assert out.exhausted and out.date == cost.index[9]


def test_explicit_spent_overrides_series_sum():
    cost = _hourly_cost("2024-06-01", "2024-06-08")
    out = budget_runout(cost, budget=100.0, spent=52.0)
    assert out.date is not None and out.date - cost.index[-1] <= pd.Timedelta("1D")


def test_queue_drain_eta():
    idx = pd.date_range("2024-06-01", periods=60, freq="min", tz="UTC")
    arrivals = pd.Series(10.0, idx)
    service = pd.Series(15.0, idx)
    assert queue_drain_eta(100, arrivals, service) == pytest.approx(100 / 5 * 60)
    assert queue_drain_eta(100, 10.0, 15.0) == pytest.approx(1200.0)
    assert queue_drain_eta(100, service, arrivals) is None
    assert queue_drain_eta(100, 5.0, 5.0) is None
    assert queue_drain_eta(0, 20.0, 5.0) == 0.0


def test_queue_uses_recent_window_only():
    idx = pd.date_range("2024-06-01", periods=60, freq="min", tz="UTC")
    arrivals = pd.Series(np.where(np.arange(60) < 45, 100.0, 10.0), idx)
    assert queue_drain_eta(60, arrivals, 20.0, window="15min") == pytest.approx(360.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"arrivals": pd.Series(dtype=float), "service": 1.0}, "arrivals"),
        ({"arrivals": 1.0, "service": -1.0}, "service"),
        ({"arrivals": 1.0, "service": 2.0, "window": "soon"}, "window"),
    ],
)
def test_queue_errors(kwargs, field):
    if isinstance(kwargs.get("arrivals"), pd.Series):
        kwargs["arrivals"].index = pd.DatetimeIndex([], tz="UTC")
    with pytest.raises(AnalyticsInputError) as info:
        queue_drain_eta(5, **kwargs)
    assert info.value.field == field


def test_cost_errors_name_cost():
    idx = pd.date_range("2024-06-01", periods=1, freq="h", tz="UTC")
    with pytest.raises(AnalyticsInputError) as info:
        project_month_end(pd.Series([1.0], idx), step="1h")
    assert info.value.field == "cost"
