"""Accuracy of :class:`Forecaster` on public seasonal series that ship with statsmodels.

``python -m analytics._accuracy`` regenerates docs/forecast-accuracy.md. The data
come from the installed statsmodels wheel (its datasets and test fixtures), so the
check needs no network and is reproducible on any machine with the project's venv.
Each series is scored at several non-overlapping hold-out origins against the
seasonal naive forecast fitted on the same history, with MASE scaled by the
in-sample seasonal naive error.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from analytics._backtest import mase, mase_scale, smape
from analytics._forecast import Forecaster
from analytics._seasonal import FloatArray


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    load: Callable[[], pd.Series[float]]
    period: int
    horizon: int
    periods: tuple[int, ...] | None  # None: derive from the step


@dataclass(frozen=True)
class Row:
    name: str
    length: int
    period: int
    horizon: int
    origins: int
    models: tuple[str, ...]
    mase: float
    smape: float
    naive_mase: float
    naive_smape: float
    coverage_80: float
    coverage_95: float
    seconds: float


def _regular(values: FloatArray, freq: str = "D") -> pd.Series[float]:
    """Calendar data (months, years) laid on a fixed step; the cycle is then given
    explicitly through ``periods``, which is what the index cannot express."""
    index = pd.date_range("2000-01-01", periods=len(values), freq=freq, tz="UTC")
    return pd.Series(values, index=index, dtype=np.float64)


def _csv(package: str, name: str) -> pd.DataFrame:
    with resources.files(package).joinpath(name).open("r") as fh:
        return pd.read_csv(fh)


def _co2() -> pd.Series[float]:
    frame = _csv("statsmodels.datasets.co2", "co2.csv")
    index = pd.to_datetime(frame["date"].astype(str), format="%Y%m%d").dt.tz_localize("UTC")
    return pd.Series(frame["co2"].to_numpy(np.float64), index=pd.DatetimeIndex(index))


def _elnino() -> pd.Series[float]:
    frame = _csv("statsmodels.datasets.elnino", "elnino.csv")
    return _regular(frame.drop(columns="YEAR").to_numpy(np.float64).ravel())


def _elec_equip() -> pd.Series[float]:
    frame = _csv("statsmodels.datasets.elec_equip", "elec_equip.csv")
    return _regular(frame.iloc[:, 1].to_numpy(np.float64))


def _housing() -> pd.Series[float]:
    frame = _csv("statsmodels.tsa.holtwinters.tests.results", "housing-data.csv")
    return _regular(frame["HOUSTNSA"].to_numpy(np.float64))


def _sunspots() -> pd.Series[float]:
    frame = _csv("statsmodels.datasets.sunspots", "sunspots.csv")
    return _regular(frame["SUNACTIVITY"].to_numpy(np.float64))


def _elec_vic() -> pd.Series[float]:
    frame = _csv("statsmodels.tsa.stl.tests.results", "mstl_elec_vic.csv")
    index = pd.DatetimeIndex(pd.to_datetime(frame["ds"])).tz_localize("UTC")
    return pd.Series(frame["y"].to_numpy(np.float64), index=index)


DATASETS: tuple[Dataset, ...] = (
    Dataset("co2", "Mauna Loa CO2, weekly, 1958-2001 (gaps)", _co2, 52, 52, (52,)),
    Dataset("elnino", "El Nino sea temperature, monthly, 1950-2010", _elnino, 12, 24, (12,)),
    Dataset(
        "elec_equip", "Euro area electrical equipment index, monthly", _elec_equip, 12, 24, (12,)
    ),
    Dataset(
        "housing_starts", "US housing starts (NSA), monthly, 1959-2018", _housing, 12, 24, (12,)
    ),
    Dataset("sunspots", "Yearly sunspots, 1700-2008 (~11-year cycle)", _sunspots, 11, 22, (11,)),
    Dataset("elec_vic", "Victoria electricity demand, hourly, 150 days", _elec_vic, 24, 168, None),
)


def evaluate(data: Dataset, origins: int = 3) -> Row:
    series = data.load()
    values = series.to_numpy(np.float64)
    n, h = len(values), data.horizon
    ours_mase: list[float] = []
    ours_smape: list[float] = []
    naive_mase: list[float] = []
    naive_smape: list[float] = []
    covered = {80: 0, 95: 0}
    total = 0
    models: list[str] = []
    seconds: list[float] = []
    for k in range(origins):
        origin = n - h * (k + 1)
        train = series.iloc[:origin]
        actual = values[origin : origin + h]
        started = time.perf_counter()
        result = Forecaster(train, horizon=h, periods=data.periods).fit()
        frame = result.forecast(h)
        seconds.append(time.perf_counter() - started)
        models.append(result.model)
        history = train.to_numpy(np.float64)
        history = history[~np.isnan(history)]
        last_cycle = history[-data.period :]
        naive = last_cycle[np.arange(h) % data.period]
        ok = ~np.isnan(actual)
        scale = mase_scale(history, data.period)
        pred = frame["mean"].to_numpy()
        ours_mase.append(mase(actual[ok], pred[ok], scale))
        ours_smape.append(smape(actual[ok], pred[ok]))
        naive_mase.append(mase(actual[ok], naive[ok], scale))
        naive_smape.append(smape(actual[ok], naive[ok]))
        for level in covered:
            lo = frame[f"lower_{level}"].to_numpy()[ok]
            hi = frame[f"upper_{level}"].to_numpy()[ok]
            covered[level] += int(np.sum((actual[ok] >= lo) & (actual[ok] <= hi)))
        total += int(ok.sum())
    return Row(
        name=data.name,
        length=n,
        period=data.period,
        horizon=h,
        origins=origins,
        models=tuple(dict.fromkeys(models)),
        mase=float(np.mean(ours_mase)),
        smape=float(np.mean(ours_smape)),
        naive_mase=float(np.mean(naive_mase)),
        naive_smape=float(np.mean(naive_smape)),
        coverage_80=100.0 * covered[80] / total,
        coverage_95=100.0 * covered[95] / total,
        seconds=float(np.mean(seconds)),
    )


def render(rows: list[Row]) -> str:
    lines = [
        "# Forecast accuracy on public seasonal series",
        "",
        "Generated by `python -m analytics._accuracy`; do not edit by hand.",
        "",
        "Each series is cut at 3 non-overlapping hold-out origins (the last 3 horizons).",
        "At each origin `Forecaster(history, horizon=h).fit()` picks its model by its own",
        "rolling-origin backtest on the history only, then forecasts `h` steps. The",
        "baseline is the seasonal naive forecast at the series' period from the same",
        "history. MASE is scaled by the in-sample seasonal naive MAE (below 1 beats that",
        "baseline in sample; compare the two MASE columns for out of sample). sMAPE is",
        "in percent. Coverage is the share of held-out points inside the 80% / 95%",
        "intervals. Time is one `fit()` + `forecast()` (backtest included), averaged.",
        "Equal MASE columns would mean the backtest chose the seasonal naive itself,",
        "the designed fallback when nothing beats it on the history. `mean(a, b, ...)`",
        "is the equal-weight mean of the 2, 3 or 4 best single models of the backtest",
        "(up to 8 origins on long histories, 3 otherwise), chosen when it scored best.",
        "`ar(p)` is an autoregression chosen by AICc and `stl_ar(p;...)` the same on",
        "the seasonally adjusted series; `stl_ets(...)` is ETS on that series.",
        "",
        "Calendar data (monthly, yearly) is laid on a regular daily index with the",
        "period passed as `periods=(12,)` etc.; weekly co2 and hourly electricity use",
        "their real timestamps (co2 has missing weeks, filled only for fitting).",
        "",
        "| series | length | period | horizon | model(s) chosen | MASE ours | MASE snaive "
        "| sMAPE ours | sMAPE snaive | cover 80 | cover 95 | time (s) |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.length} | {r.period} | {r.horizon} | {'<br>'.join(r.models)} "
            f"| {r.mase:.3f} | {r.naive_mase:.3f} | {r.smape:.2f} | {r.naive_smape:.2f} "
            f"| {r.coverage_80:.0f}% | {r.coverage_95:.0f}% | {r.seconds:.2f} |"
        )
    lines += ["", "Series descriptions:", ""]
    lines += [f"- `{d.name}`: {d.description}" for d in DATASETS]
    return "\n".join(lines) + "\n"


def _synthetic_hourly(seed: int, n: int = 720) -> pd.Series[float]:
    """Daily and weekly cycles, a small trend and noise: a typical fleet metric."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    y = (
        200
        + 0.02 * (seed % 3 - 1) * t
        + 30 * np.sin(2 * np.pi * t / 24)
        + 15 * np.sin(2 * np.pi * t / 168 + 1)
        + rng.normal(0, 5, n)
    )
    index = pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC")
    return pd.Series(y, index=index)


def speed(series_count: int = 20) -> list[float]:
    """Seconds per series for fit + 168-step forecast of 720 hourly points."""
    out: list[float] = []
    for seed in range(series_count):
        series = _synthetic_hourly(seed)
        started = time.perf_counter()
        Forecaster(series, horizon=168).fit().forecast(168)
        out.append(time.perf_counter() - started)
    return out


def render_speed(seconds: list[float]) -> str:
    arr = np.asarray(seconds)
    return "\n".join(
        [
            "## Speed",
            "",
            "Fit (3-origin backtest of 9 candidates and 3 means included) + 168-step",
            f"forecast of a 720-point hourly series, {len(arr)} synthetic series, one process",
            "with one BLAS thread (as the server's fit workers run):",
            f"median {np.median(arr):.2f} s, p90 {np.percentile(arr, 90):.2f} s, "
            f"max {arr.max():.2f} s per series.",
            "",
        ]
    )


_ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def main() -> None:
    if any(os.environ.get(k) != v for k, v in _ONE_THREAD.items()):
        # Time fits as the server's workers run them: BLAS threads are fixed when numpy
        # loads, so restart the interpreter with them set rather than measure a
        # configuration that fights the event loop for the cores in production.
        os.execve(
            sys.executable,
            [sys.executable, "-m", "analytics._accuracy"],
            {**os.environ, **_ONE_THREAD},
        )
    rows = [evaluate(d) for d in DATASETS]
    text = render(rows) + "\n" + render_speed(speed())
    target = Path(__file__).resolve().parent.parent / "docs" / "forecast-accuracy.md"
    target.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
