import numpy as np
import pandas as pd
import pytest

from analytics import AnalyticsInputError, Forecaster, ForecastResult
from analytics._forecast import _fold_count
from analytics._models import combine, fit_decomposed_ar, fit_drift, fit_seasonal_naive
from analytics._seasonal import decompose


@pytest.fixture(scope="module")
def fitted(make_hourly) -> tuple[pd.Series, ForecastResult]:
    s = make_hourly(seed=1, n=720, slope_per_hour=0.05)
    return s, Forecaster(s, horizon=168).fit()


def test_result_shape(fitted):
    s, res = fitted
    assert res.model.startswith("stl_ets")
    assert len(res.mean) == 168
    assert res.mean.index[0] == s.index[-1] + pd.Timedelta("1h")
    assert str(res.mean.index.tz) == "UTC"
    assert list(res.intervals.columns) == ["lower_80", "upper_80", "lower_95", "upper_95"]
    iv = res.intervals
    assert (iv["lower_95"] <= iv["lower_80"]).all() and (iv["lower_80"] <= res.mean).all()
    assert (res.mean <= iv["upper_80"]).all() and (iv["upper_80"] <= iv["upper_95"]).all()
    longer = res.forecast(500)
    assert len(longer) == 500 and longer["mean"].iloc[:168].equals(res.mean.rename("mean"))


def test_backtest_report(fitted):
    _, res = fitted
    bt = res.backtest
    assert bt.origins == 3 and bt.horizon == 168
    assert {"naive", "drift", "seasonal_naive(24)", "seasonal_naive(168)"} <= set(bt.scores)
    chosen = min(bt.scores.values(), key=lambda c: c.mase)
    assert bt.mase == chosen.mase and chosen.model == res.model
    assert bt.mase < bt.scores["seasonal_naive(168)"].mase
    assert 0 < bt.smape < 10
    text = res.summary()
    assert res.model in text and "MASE" in text and "seasonal_naive(24)" in text


def test_cycles_are_forecast(fitted):
    s, res = fitted
    t = np.arange(720, 720 + 168)
    truth = 200 + 0.05 * t + 30 * np.sin(2 * np.pi * t / 24) + 15 * np.sin(2 * np.pi * t / 168 + 1)
    ours = np.mean(np.abs(res.mean.to_numpy() - truth))
    last_week = np.mean(np.abs(s.to_numpy()[-168:] - truth))
    assert ours < 0.8 * last_week


def test_interval_coverage_is_near_nominal(make_hourly):
    hits: dict[int, list[float]] = {80: [], 95: []}
    for seed in range(12):
        s = make_hourly(seed=100 + seed, n=720 + 168, slope_per_hour=0.03)
        train, test = s.iloc[:720], s.iloc[720:].to_numpy()
        frame = Forecaster(train, horizon=168).fit().forecast(168)
        for level in hits:
            lo, hi = frame[f"lower_{level}"].to_numpy(), frame[f"upper_{level}"].to_numpy()
            hits[level].append(np.mean((test >= lo) & (test <= hi)))
    assert np.mean(hits[80]) == pytest.approx(0.80, abs=0.05)
    assert np.mean(hits[95]) == pytest.approx(0.95, abs=0.03)


def test_nonnegative_by_default():
    idx = pd.date_range("2024-01-01", periods=300, freq="h", tz="UTC")
    rng = np.random.default_rng(3)
    y = np.clip(np.linspace(20, 0.5, 300) + rng.normal(0, 2, 300), 0, None)
    s = pd.Series(y, idx)
    frame = Forecaster(s, horizon=48).fit().forecast(200)
    assert (frame.to_numpy() >= 0).all()
    raw = Forecaster(s, horizon=48, nonnegative=False).fit().forecast(200)
    assert (raw["lower_95"] < 0).any()


@pytest.mark.parametrize("kind", ["series", "frame_column"])
def test_short_series_falls_back_to_a_baseline(kind):
    idx = pd.date_range("2024-01-01", periods=5, freq="h", tz="UTC")
    s = pd.Series([1.0, 2.0, 3.0, 2.0, 1.0], idx, name="x")
    data = s if kind == "series" else s.to_frame()["x"]
    res = Forecaster(data, horizon=3).fit()
    assert res.model in {"naive", "drift"}
    assert len(res.mean) == 3 and res.mean.notna().all()


def test_too_short_to_backtest_uses_naive():
    idx = pd.date_range("2024-01-01", periods=2, freq="D", tz="UTC")
    res = Forecaster(pd.Series([4.0, 5.0], idx)).fit()
    assert res.model == "naive" and np.isnan(res.backtest.mase)
    assert res.forecast(3)["mean"].tolist() == [5.0, 5.0, 5.0]


@pytest.mark.parametrize("value", [0.0, 7.5, 1e15])
def test_constant_series_is_forecast_exactly(value):
    idx = pd.date_range("2024-01-01", periods=200, freq="h", tz="UTC")
    res = Forecaster(pd.Series(value, idx), horizon=24).fit()
    frame = res.forecast(24)
    assert res.model == "naive"
    assert (frame.to_numpy() == value).all()
    assert res.backtest.mase == 0.0


def test_single_point_is_a_clear_error():
    idx = pd.date_range("2024-01-01", periods=1, freq="h", tz="UTC")
    with pytest.raises(AnalyticsInputError, match="two") as info:
        Forecaster(pd.Series([1.0], idx), step="1h")
    assert info.value.field == "series"


def test_huge_values_scale_equivariant(make_hourly):
    s = make_hourly(seed=4, n=400)
    small = Forecaster(s, horizon=48).fit()
    big = Forecaster(s * 1e12, horizon=48).fit()
    assert big.model == small.model
    np.testing.assert_allclose(big.mean.to_numpy() / 1e12, small.mean.to_numpy(), rtol=1e-3)


def test_nans_gaps_and_unsorted_input(make_hourly):
    s = make_hourly(seed=5, n=500)
    s.iloc[50:60] = np.nan
    s = s.drop(s.index[300:305])
    s.iloc[-3:] = np.nan  # buckets not arrived yet
    shuffled = s.sample(frac=1.0, random_state=1)
    res = Forecaster(shuffled, horizon=48).fit()
    # Trailing gaps are trimmed, so the forecast covers them.
    assert res.mean.index[0] == s.index[-3]
    assert res.mean.notna().all() and np.isfinite(res.backtest.mase)


def test_duplicates_are_refused_with_the_fix(make_hourly):
    s = make_hourly(n=100)
    with pytest.raises(AnalyticsInputError, match="resample"):
        Forecaster(pd.concat([s, s.iloc[:2]]))


def test_irregular_grid_is_refused():
    stamps = ["2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 02:00", "2024-01-01 02:20"]
    idx = pd.DatetimeIndex(stamps, tz="UTC")
    with pytest.raises(AnalyticsInputError, match="regular"):
        Forecaster(pd.Series([1.0, 2.0, 3.0, 4.0], idx))


def test_cumulative_total_variance_is_between_bounds(fitted):
    _, res = fitted
    cum = res.cumulative(168, level=80)
    assert cum["mean"].iloc[-1] == pytest.approx(res.mean.sum())
    width = cum["upper"].iloc[-1] - cum["lower"].iloc[-1]
    per_step = (res.intervals["upper_80"] - res.intervals["lower_80"]).to_numpy()
    assert np.sqrt(np.sum(per_step**2)) < width < per_step.sum()
    assert cum["lower"].is_monotonic_increasing


def test_daily_step_uses_weekly_cycle():
    idx = pd.date_range("2023-01-01", periods=200, freq="D", tz="UTC")
    rng = np.random.default_rng(8)
    y = 100 + np.where(idx.day_of_week >= 5, -40.0, 0.0) + rng.normal(0, 3, 200)
    res = Forecaster(pd.Series(y, idx)).fit()
    assert res.periods == (7,) and res.horizon == 7
    assert res.model != "naive"
    frame = res.forecast(14)
    weekend = frame["mean"][pd.DatetimeIndex(frame.index).day_of_week >= 5]
    assert (weekend < 80).all()


def test_means_of_the_best_single_models_are_scored(fitted):
    _, res = fitted
    scores = res.backtest.scores
    singles = sorted((k for k in scores if not k.startswith("mean(")), key=lambda k: scores[k].mase)
    for count in (2, 3, 4):
        key = f"mean({', '.join(singles[:count])})"
        assert key in scores and scores[key].folds == 3
        assert scores[key].model.startswith("mean(")
    assert sum(k.startswith("mean(") for k in scores) == 3
    assert res.backtest.mase == min(s.mase for s in scores.values())


def test_combine_averages_paths_and_is_conservative_on_spread():
    y = np.sin(np.arange(120) * 2 * np.pi / 12) + np.arange(120) * 0.1
    parts = [fit_seasonal_naive(y, period=12), fit_drift(y)]
    both = combine(parts)
    assert both.name == "mean(seasonal_naive(12), drift)"
    np.testing.assert_allclose(both.mean(30), (parts[0].mean(30) + parts[1].mean(30)) / 2)
    np.testing.assert_allclose(both.sd(30), (parts[0].sd(30) + parts[1].sd(30)) / 2)
    cum = both.cumulative_sd(30)
    np.testing.assert_allclose(cum, (parts[0].cumulative_sd(30) + parts[1].cumulative_sd(30)) / 2)


def test_long_histories_get_more_folds():
    assert _fold_count(720, 168, 3, 336) == 3  # hourly month: the speed budget case
    assert _fold_count(700, 24, 3, 24) == 8
    assert _fold_count(100, 24, 3, 24) == 3
    assert _fold_count(100, 24, 5, 24) == 5  # never fewer than asked


def test_monthly_combination_forecast_is_used_end_to_end():
    idx = pd.date_range("2000-01-01", periods=240, freq="D", tz="UTC")
    rng = np.random.default_rng(11)
    t = np.arange(240)
    y = 100 + 10 * np.sin(2 * np.pi * t / 12) + np.cumsum(rng.normal(0, 1.5, 240))
    res = Forecaster(pd.Series(y, idx), horizon=24, periods=(12,)).fit()
    assert res.backtest.origins == 8
    means = [k for k in res.backtest.scores if k.startswith("mean(")]
    assert len(means) == 3
    assert any(k.startswith("stl_ar(") or k == "ar" for k in res.backtest.scores)
    frame = res.forecast(24)
    assert frame["mean"].notna().all() and (frame["lower_95"] <= frame["upper_95"]).all()


def _ar2(n: int, seed: int, mean: float = 50.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = np.zeros(n + 200)
    for t in range(2, n + 200):
        z[t] = 1.2 * z[t - 1] - 0.5 * z[t - 2] + rng.normal()
    return mean + z[200:]


def test_ar_recovers_a_known_process_and_reverts_to_its_mean():
    y = _ar2(2000, seed=3)
    fit = fit_decomposed_ar(y, ())
    assert fit.name == "ar(2)"
    # psi_1 is phi_1 and psi_2 = phi_1^2 + phi_2 for an AR(2).
    psi = fit.psi(2)
    assert psi[0] == pytest.approx(1.2, abs=0.05)
    assert psi[1] == pytest.approx(1.2**2 - 0.5, abs=0.1)
    assert fit.sigma == pytest.approx(1.0, rel=0.08)
    far = fit.mean(500)
    assert far[-1] == pytest.approx(float(np.mean(y)), abs=0.3)
    assert np.all(np.isfinite(fit.sd(500))) and fit.sd(500)[-1] < 5 * fit.sigma


def test_ar_matches_statsmodels_autoreg_at_the_same_order():
    from statsmodels.tsa.ar_model import AutoReg

    y = _ar2(400, seed=8)
    fit = fit_decomposed_ar(y, ())
    ref = AutoReg(y, lags=2, trend="c").fit()
    np.testing.assert_allclose(fit.mean(12), ref.predict(start=400, end=411), rtol=1e-9)


def test_ar_never_explodes_on_a_trending_series():
    t = np.arange(300, dtype=np.float64)
    y = 5.0 + 0.3 * t + np.random.default_rng(0).normal(0, 0.5, 300)
    fit = fit_decomposed_ar(y, ())
    path = fit.mean(5000)
    assert np.all(np.isfinite(path)) and np.max(np.abs(path)) < 10 * np.max(np.abs(y))


def test_mean_reverting_series_prefers_the_autoregression():
    # Monthly-like cycle plus a slow AR anomaly (El Nino's shape): carrying the last
    # level forward (ETS) or the last cycle (seasonal naive) both lose to reverting.
    n = 480
    idx = pd.date_range("2000-01-01", periods=n, freq="D", tz="UTC")
    rng = np.random.default_rng(5)
    anomaly = np.zeros(n)
    for t in range(1, n):
        anomaly[t] = 0.9 * anomaly[t - 1] + rng.normal(0, 1.0)
    y = 25 + 2 * np.sin(2 * np.pi * np.arange(n) / 12) + anomaly
    res = Forecaster(pd.Series(y, idx), horizon=24, periods=(12,), nonnegative=False).fit()
    scores = res.backtest.scores
    best_ar = min(scores[k].mase for k in scores if k in ("ar", "stl_ar(12)"))
    assert best_ar < scores["seasonal_naive(12)"].mase
    assert best_ar < scores["stl_ets(12)"].mase
    assert "ar(" in res.model


def test_short_series_gets_a_small_autoregression():
    y = np.array([3.0, 5.0, 4.0, 6.0, 5.0, 7.0, 6.0, 8.0, 7.0, 9.0, 8.0, 10.0])
    fit = fit_decomposed_ar(y, ())
    assert fit.name in {"ar(0)", "ar(1)"}
    assert np.all(np.isfinite(fit.mean(20))) and np.all(np.isfinite(fit.sd(20)))


def test_decomposition_is_shared_between_models_and_read_only():
    y = np.sin(np.arange(240) * 2 * np.pi / 24) + np.arange(240) * 0.01
    first = decompose(y, (24,))
    again = decompose(y.copy(), (24,))
    assert again is first
    with pytest.raises(ValueError, match="read-only"):
        first.trend[0] = 1.0
    changed = y.copy()
    changed[5] += 1.0
    assert decompose(changed, (24,)) is not first


def test_a_series_that_starts_at_zero_still_ranks_models(make_hourly):
    # Four days of nothing, then three days of a daily cycle: the earliest backtest
    # folds see only zeros, yet the choice must rest on finite errors.
    s = make_hourly(seed=4, n=168)
    s.iloc[:96] = 0.0
    res = Forecaster(s, horizon=48).fit()
    assert res.backtest.origins == 3
    assert np.isfinite(res.backtest.mase)
    assert all(np.isfinite(score.mase) for score in res.backtest.scores.values())
    assert res.model != "naive"
