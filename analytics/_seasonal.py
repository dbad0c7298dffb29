"""Seasonal periods implied by a step, and the STL/MSTL decomposition behind them.

Agent fleets follow people and cron: a daily cycle and a weekly one. Which of those a
series can show depends on its step and length, so the periods are derived here once
and shared by trends, forecasts and anomaly detection.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from statsmodels.tsa.seasonal import MSTL, STL

HOUR = pd.Timedelta(hours=1)
DAY = pd.Timedelta(days=1)
WEEK = pd.Timedelta(days=7)

# STL's cost grows with the period and a 1440-step daily cycle of minute data is both
# slow and rarely what a minute-level question is about; longer cycles are better
# studied on data downsampled to hourly.
MAX_PERIOD = 400

FloatArray = np.ndarray[Any, np.dtype[np.floating[Any]]]


def candidate_periods(step: pd.Timedelta) -> tuple[int, ...]:
    """Daily and weekly cycles in steps, or an hourly one for fine steps.

    The hourly cycle is the fallback for minute-level data, where scheduled jobs
    firing on the hour are the pattern that fits inside a usable period.
    """
    found: list[int] = []
    for cycle in (DAY, WEEK):
        if cycle.value % step.value == 0:
            period = cycle.value // step.value
            if 2 <= period <= MAX_PERIOD:
                found.append(int(period))
    if not found and step < HOUR and HOUR.value % step.value == 0:
        period = HOUR.value // step.value
        if period >= 4:
            found.append(int(period))
    return tuple(sorted(set(found)))


def usable_periods(periods: tuple[int, ...], n: int, min_cycles: int = 2) -> tuple[int, ...]:
    """STL needs more than two full cycles to separate a season from noise."""
    return tuple(p for p in periods if p >= 2 and n > min_cycles * p)


@dataclass(frozen=True)
class Decomposition:
    trend: FloatArray
    seasonals: tuple[FloatArray, ...]
    resid: FloatArray
    periods: tuple[int, ...]

    @property
    def seasonal(self) -> FloatArray:
        if not self.seasonals:
            return np.zeros_like(self.trend)
        out: FloatArray = np.sum(self.seasonals, axis=0)
        return out


def _seasonal_window(period: int) -> int:
    # A wider seasonal smoother than STL's default 7 keeps the repeated cycle stable,
    # which is what both forecasting (repeating the last cycle) and anomaly scoring want.
    return 13 if period < 100 else 11


# A backtest fits up to 8 folds plus the final history, each with up to two cycle
# subsets, and runs candidate by candidate across folds: the cache must hold a whole
# pass for the second model on the same decomposition to find it.
_CACHE_SIZE = 24
_cache: OrderedDict[tuple[bytes, tuple[int, ...], bool], Decomposition] = OrderedDict()
_cache_lock = threading.Lock()


def decompose(y: FloatArray, periods: tuple[int, ...], *, robust: bool = False) -> Decomposition:
    """STL for one period, MSTL for several; no periods leaves everything in the trend.

    ``y`` must not contain NaN: callers interpolate missing buckets first.

    Results are memoised on the exact values: a backtest fits several models on
    each fold's history (ETS and AR on the same adjusted series), and MSTL is the
    most expensive step of each. The arrays handed out are read-only so that a
    caller cannot corrupt a cached entry.
    """
    if not periods:
        return _decompose(y, (), robust)
    y = np.ascontiguousarray(y, dtype=np.float64)
    key = (y.tobytes(), tuple(periods), robust)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    dec = _decompose(y, tuple(periods), robust)
    for arr in (dec.trend, dec.resid, *dec.seasonals):
        arr.setflags(write=False)
    with _cache_lock:
        _cache[key] = dec
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return dec


def _decompose(y: FloatArray, periods: tuple[int, ...], robust: bool) -> Decomposition:
    if not periods:
        return Decomposition(y.copy(), (), np.zeros_like(y), ())
    if len(periods) == 1:
        period = periods[0]
        res = STL(y, period=period, seasonal=_seasonal_window(period), robust=robust).fit()
        seasonals: tuple[FloatArray, ...] = (np.asarray(res.seasonal, dtype=np.float64),)
        trend = np.asarray(res.trend, dtype=np.float64)
    else:
        windows = [_seasonal_window(p) for p in periods]
        res = MSTL(
            y, periods=list(periods), windows=windows, iterate=1, stl_kwargs={"robust": robust}
        ).fit()
        seasonal = np.asarray(res.seasonal, dtype=np.float64).reshape(len(y), -1)
        seasonals = tuple(seasonal[:, i].copy() for i in range(seasonal.shape[1]))
        trend = np.asarray(res.trend, dtype=np.float64)
    resid = y - trend - np.sum(seasonals, axis=0)
    return Decomposition(trend, seasonals, resid, periods)


def fill_gaps(values: FloatArray) -> FloatArray:
    """Linear interpolation inside, nearest value at the ends.

    Decompositions and smoothers cannot take NaN; interpolating a missing bucket is
    the least surprising stand-in, and callers keep the mask to score only real data.
    """
    mask = np.isnan(values)
    if not mask.any():
        return values
    idx = np.arange(len(values))
    good = ~mask
    if not good.any():
        return np.zeros_like(values)
    out = values.copy()
    out[mask] = np.interp(idx[mask], idx[good], values[good])
    return out
