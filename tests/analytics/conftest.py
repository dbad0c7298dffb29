"""Synthetic metric series with known structure, shared by the analytics tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

SeriesFactory = Callable[..., pd.Series]


def hourly_series(
    seed: int = 0,
    n: int = 720,
    *,
    level: float = 200.0,
    slope_per_hour: float = 0.0,
    daily: float = 30.0,
    weekly: float = 15.0,
    noise: float = 5.0,
    start: str = "2024-01-01",
    name: str | None = "tokens",
) -> pd.Series:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    y = (
        level
        + slope_per_hour * t
        + daily * np.sin(2 * np.pi * t / 24)
        + weekly * np.sin(2 * np.pi * t / 168 + 1.0)
        + rng.normal(0.0, noise, n)
    )
    index = pd.date_range(start, periods=n, freq="h", tz="UTC")
    return pd.Series(y, index=index, name=name)


@pytest.fixture(scope="session")
def make_hourly() -> SeriesFactory:
    return hourly_series
