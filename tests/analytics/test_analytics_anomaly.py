import numpy as np
import pandas as pd
import pytest

from analytics import AnalyticsInputError, Anomaly, detect_anomalies


def _hours(anomalies: list[Anomaly], start: pd.Timestamp) -> dict[int, Anomaly]:
    return {int((a.timestamp - start) / pd.Timedelta("1h")): a for a in anomalies}


@pytest.mark.parametrize("seed", range(6))
def test_planted_spikes_and_shift_are_found(make_hourly, seed):
    s = make_hourly(seed=seed, slope_per_hour=0.05)
    s.iloc[100] += 60
    s.iloc[400] -= 50
    s.iloc[500:] += 40
    found = _hours(detect_anomalies(s), s.index[0])
    assert found[100].kind == "spike" and found[100].direction == "up"
    assert found[400].kind == "spike" and found[400].direction == "down"
    assert found[100].expected == pytest.approx(s.iloc[100] - 60, abs=15)
    shifts = [h for h, a in found.items() if a.kind == "level_shift"]
    assert len(shifts) == 1 and abs(shifts[0] - 500) <= 6
    assert found[shifts[0]].direction == "up"
    assert len(found) <= 5  # the planted three plus at most a couple of borderline points


def test_clean_seasonal_data_does_not_flood(make_hourly):
    total = sum(len(detect_anomalies(make_hourly(seed=seed))) for seed in range(10))
    assert total <= 3  # 7,200 clean points


@pytest.mark.parametrize("kind", ["series", "frame_column"])
def test_gaps_and_frame_columns(make_hourly, kind):
    s = make_hourly(seed=2)
    s.iloc[200:220] = np.nan
    s.iloc[300] += 80
    data = s if kind == "series" else s.to_frame()["tokens"]
    found = _hours(detect_anomalies(data), s.index[0])
    assert 300 in found
    assert not any(200 <= h < 220 for h in found)
    assert found[300].to_dict()["direction"] == "up"


def test_daily_data_without_enough_cycles_uses_running_median():
    idx = pd.date_range("2024-01-01", periods=12, freq="D", tz="UTC")
    y = np.array([10, 11, 10, 12, 11, 10, 50, 11, 10, 12, 11, 10], dtype=float)
    found = detect_anomalies(pd.Series(y, idx))
    assert [a.timestamp for a in found] == [idx[6]]


@pytest.mark.parametrize(
    "values",
    [np.zeros(50), np.full(50, 3.0), np.full(50, 1e300), np.array([1.0]), np.full(50, np.nan)],
    ids=["zeros", "constant", "huge", "single", "all-nan"],
)
def test_degenerate_inputs_give_no_anomalies(values):
    idx = pd.date_range("2024-01-01", periods=len(values), freq="h", tz="UTC")
    assert detect_anomalies(pd.Series(values, idx), step="1h") == []


def test_blip_on_constant_is_found():
    idx = pd.date_range("2024-01-01", periods=100, freq="h", tz="UTC")
    y = np.zeros(100)
    y[40] = 5.0
    found = detect_anomalies(pd.Series(y, idx))
    assert [a.timestamp for a in found] == [idx[40]]


def test_log_scoring_tames_heavy_tails():
    idx = pd.date_range("2024-01-01", periods=1000, freq="h", tz="UTC")
    rng = np.random.default_rng(4)
    y = rng.lognormal(5.0, 1.0, 1000)  # e.g. cost per hour in cents
    y[500] = y.max() * 50
    s = pd.Series(y, idx)
    linear = detect_anomalies(s, limit=None)
    logged = detect_anomalies(s, log=True)
    assert len(linear) > 30  # the normal upper tail looks anomalous on a linear scale
    assert len(logged) <= 3 and idx[500] in {a.timestamp for a in logged}
    big = next(a for a in logged if a.timestamp == idx[500])
    assert big.value == pytest.approx(y[500]) and big.expected < y[500] / 100
    with pytest.raises(AnalyticsInputError) as info:
        detect_anomalies(s - 10, log=True)
    assert info.value.field == "log"


def test_limit_keeps_the_strongest():
    idx = pd.date_range("2024-01-01", periods=500, freq="h", tz="UTC")
    rng = np.random.default_rng(9)
    s = pd.Series(rng.normal(0, 1, 500).cumsum(), idx)  # a random walk has no pattern
    everything = detect_anomalies(s, limit=None)
    top = detect_anomalies(s, limit=3)
    assert len(top) == min(3, len(everything))
    assert {a.score for a in top} == set(sorted((a.score for a in everything), reverse=True)[:3])
    assert [a.timestamp for a in top] == sorted(a.timestamp for a in top)
    with pytest.raises(AnalyticsInputError):
        detect_anomalies(s, limit=0)


def test_sparse_events_flag_only_the_outsized_one():
    idx = pd.date_range("2024-01-01", periods=720, freq="h", tz="UTC")
    rng = np.random.default_rng(12)
    y = np.where(rng.random(720) < 0.1, rng.exponential(10, 720), 0.0)
    y[333] = 400.0
    found = detect_anomalies(pd.Series(y, idx))
    assert idx[333] in {a.timestamp for a in found}
    assert len(found) <= 8
