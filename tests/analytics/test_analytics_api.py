import pandas as pd
import pytest

import analytics
from analytics.errors import AnalyticsInputError

EXPECTED = {
    "AnalyticsInputError",
    "Anomaly",
    "Backtest",
    "BudgetRunout",
    "CandidateScore",
    "ForecastResult",
    "Forecaster",
    "MannKendall",
    "MonthEndProjection",
    "TrendResult",
    "budget_runout",
    "detect_anomalies",
    "mann_kendall",
    "project_month_end",
    "queue_drain_eta",
    "resample",
    "trend",
    "trends",
}


def test_all_is_exactly_the_public_api():
    assert set(analytics.__all__) == EXPECTED
    assert len(analytics.__all__) == len(EXPECTED)
    for name in analytics.__all__:
        assert getattr(analytics, name) is not None


def test_no_private_module_leaks_into_star_import():
    namespace: dict[str, object] = {}
    exec("from analytics import *", namespace)
    public = {k for k in namespace if not k.startswith("__")}
    assert public == EXPECTED


def test_input_error_is_a_value_error_with_field():
    err = AnalyticsInputError("horizon", "must be positive")
    assert isinstance(err, ValueError)
    assert err.field == "horizon"
    assert "horizon" in str(err)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda s: analytics.resample(s, "1 fortnight"), "step"),
        (lambda s: analytics.resample(s, "MS"), "step"),
        (
            lambda s: analytics.resample(s, "1h", how="p99"),  # type: ignore[call-overload]
            "how",
        ),
        (
            lambda s: analytics.resample(s, "1h", fill="ffill"),  # type: ignore[call-overload]
            "fill",
        ),
        (lambda s: analytics.Forecaster(s, horizon=0), "horizon"),
        (lambda s: analytics.Forecaster(s, levels=(80, 120)), "levels"),
        (lambda s: analytics.Forecaster(s, periods=(1,)), "periods"),
        (lambda s: analytics.trend(s, window="1h"), "window"),
        (lambda s: analytics.detect_anomalies(s, threshold=0), "threshold"),
        (lambda s: analytics.queue_drain_eta(-1, 1.0, 2.0), "depth"),
        (lambda s: analytics.budget_runout(s, float("nan")), "budget"),
    ],
)
def test_errors_name_the_field(make_hourly, call, field):
    with pytest.raises(AnalyticsInputError) as info:
        call(make_hourly(n=100))
    assert info.value.field == field


def test_naive_timestamps_are_refused_with_a_fix(make_hourly):
    s = make_hourly(n=48).tz_localize(None)
    with pytest.raises(AnalyticsInputError, match="tz_localize") as info:
        analytics.trend(s)
    assert info.value.field == "series"


def test_non_datetime_index_is_refused():
    with pytest.raises(AnalyticsInputError, match="DatetimeIndex"):
        analytics.resample(pd.Series([1.0, 2.0]), "1h")


def test_non_numeric_values_are_refused(make_hourly):
    s = make_hourly(n=10).astype(str)
    with pytest.raises(AnalyticsInputError, match="numeric"):
        analytics.Forecaster(s)


def test_dataframe_where_series_expected_says_so(make_hourly):
    frame = make_hourly(n=30).to_frame()
    with pytest.raises(AnalyticsInputError, match="one column"):
        analytics.Forecaster(frame)
