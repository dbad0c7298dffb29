"""``Forecaster(series).fit()``: backtested model choice with honest intervals.

The shape follows statsmodels (model object, ``fit()``, results with ``forecast``
and ``summary``) so notebook users need no new habits, but the model is picked by a
rolling-origin backtest among cheap candidates rather than fixed up front.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from analytics._backtest import Backtest, BacktestRun, Candidate, run_backtest
from analytics._models import (
    Fitted,
    combine,
    fit_decomposed_ar,
    fit_decomposed_ets,
    fit_drift,
    fit_naive,
    fit_seasonal_naive,
)
from analytics._seasonal import FloatArray, candidate_periods, fill_gaps, usable_periods
from analytics._validate import StepLike, regular_series
from analytics.errors import AnalyticsInputError

MAX_HORIZON = 10_000


def _check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    try:
        out = tuple(float(x) for x in levels)
    except (TypeError, ValueError):
        raise AnalyticsInputError("levels", "expected numbers such as (80, 95)") from None
    if not out or any(not (0.0 < x < 100.0) for x in out):
        raise AnalyticsInputError(
            "levels", f"each level is a percentage strictly between 0 and 100, got {levels!r}"
        )
    return tuple(sorted(set(out)))


def _check_steps(steps: Any, field: str) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer):
        raise AnalyticsInputError(field, f"expected a whole number of steps, got {steps!r}")
    if not 1 <= int(steps) <= MAX_HORIZON:
        raise AnalyticsInputError(field, f"must be between 1 and {MAX_HORIZON}, got {steps}")
    return int(steps)


def _level_label(level: float) -> str:
    return f"{level:g}".replace(".", "_")


def _calibration(latest_fold: FloatArray, train_share: float) -> float:
    """Rescale the model's intervals to the errors it made out of sample.

    In-sample residuals understate the error of a decomposition forecast: STL
    spends degrees of freedom on the cycles, and the repeated last cycle is itself
    an estimate. So the standardised errors of the latest backtest fold set a
    factor matching their 80th percentile to the normal one. Only the latest fold
    is used because its history is closest in length to the final fit; the part of
    the excess variance that comes from estimation is shrunk by ``train_share``
    (fold history / full history), since it falls roughly as 1/n. The factor is
    bounded because a single fold is thin evidence.
    """
    z = latest_fold[np.isfinite(latest_fold)]
    if z.size < 10:
        return 1.0
    factor = float(np.quantile(np.abs(z), 0.8) / norm.ppf(0.9))
    adjusted = np.sqrt(max(0.0, 1.0 + (factor**2 - 1.0) * train_share))
    return float(np.clip(adjusted, 0.5, 4.0))


MAX_COMBINED = 4


def _add_combinations(run: BacktestRun, order: dict[str, int]) -> dict[str, tuple[str, ...]]:
    """Score the equal-weight means of the 2, 3 and 4 best single models.

    Picking one winner from a handful of backtest origins is noisy when the
    leaders are close, and their errors are far from perfectly correlated (a
    smoothed cycle, the raw last cycle and a mean-reverting AR miss in different
    ways), so averaging the leaders usually beats each of them. How many to
    average is itself decided by the backtest, from the stored per-origin
    forecasts and with no extra fits; scoring only this nested family (rather
    than every subset) keeps the choice from overfitting the origins. Returns the
    key of each mean scored and its members, best first.
    """
    ranked = sorted(
        (k for k in run.scores if np.isfinite(run.scores[k].mase)),
        key=lambda k: (run.scores[k].mase, order[k]),
    )
    out: dict[str, tuple[str, ...]] = {}
    for count in range(2, min(MAX_COMBINED, len(ranked)) + 1):
        members = tuple(ranked[:count])
        name = f"mean({', '.join(run.names[k] for k in members)})"
        preds = [np.mean(ps, axis=0) for ps in zip(*(run.preds[k] for k in members), strict=True)]
        sds = [np.mean(ss, axis=0) for ss in zip(*(run.sds[k] for k in members), strict=True)]
        key = f"mean({', '.join(members)})"
        run.score(key, preds, sds, name)
        out[key] = members
    return out


EXTRA_FOLDS_UP_TO = 8


def _fold_count(n: int, horizon: int, folds: int, min_train: int) -> int:
    """More backtest origins when the history is long relative to the horizon.

    Three origins are thin evidence for choosing among close candidates; when
    the earliest of up to ``EXTRA_FOLDS_UP_TO`` origins (half a horizon apart)
    still leaves three horizons and every candidate's minimum history, use them.
    """
    stride = max(1, horizon // 2)
    floor = max(3 * horizon, min_train)
    fit = (n - horizon - floor) // stride + 1
    return max(folds, min(EXTRA_FOLDS_UP_TO, fit))


@dataclass(frozen=True)
class ForecastResult:
    """A fitted forecast; ``forecast(steps)`` extends it to any horizon."""

    model: str
    step: pd.Timedelta
    periods: tuple[int, ...]
    levels: tuple[float, ...]
    nonnegative: bool
    backtest: Backtest
    last_timestamp: pd.Timestamp
    horizon: int
    name: str | None
    _fitted: Fitted = field(repr=False, compare=False)

    def _index(self, steps: int) -> pd.DatetimeIndex:
        return pd.date_range(self.last_timestamp + self.step, periods=steps, freq=self.step)

    def forecast(self, steps: int | None = None) -> pd.DataFrame:
        """Mean and lower_L/upper_L columns for each level, on the future index."""
        steps = self.horizon if steps is None else _check_steps(steps, "steps")
        mean = self._fitted.mean(steps)
        sd = self._fitted.sd(steps) * self.backtest.interval_scale
        cols: dict[str, FloatArray] = {"mean": mean}
        for level in self.levels:
            q = float(norm.ppf(0.5 + level / 200.0))
            cols[f"lower_{_level_label(level)}"] = mean - q * sd
            cols[f"upper_{_level_label(level)}"] = mean + q * sd
        frame = pd.DataFrame(cols, index=self._index(steps))
        if self.nonnegative:
            frame = frame.clip(lower=0.0)
        return frame

    @property
    def mean(self) -> pd.Series[float]:
        out = self.forecast()["mean"]
        out.name = self.name
        return out

    @property
    def intervals(self) -> pd.DataFrame:
        return self.forecast().drop(columns="mean")

    def cumulative(self, steps: int, level: float = 80.0) -> pd.DataFrame:
        """Running total of the next ``steps`` buckets with an interval at ``level``.

        Uses the variance of the *sum* (errors are correlated across steps), which
        is what month-end projections and budget run-out dates need; summing the
        per-step bounds would be far too wide, ignoring correlation far too narrow.
        """
        steps = _check_steps(steps, "steps")
        (level,) = _check_levels([level])
        mean = self._fitted.mean(steps)
        if self.nonnegative:
            mean = np.maximum(mean, 0.0)
        total = np.cumsum(mean)
        sd = self._fitted.cumulative_sd(steps) * self.backtest.interval_scale
        q = float(norm.ppf(0.5 + level / 200.0))
        lower, upper = total - q * sd, total + q * sd
        if self.nonnegative:
            # Spend cannot be negative, so its running total cannot fall.
            lower = np.maximum.accumulate(np.maximum(lower, 0.0))
            upper = np.maximum.accumulate(np.maximum(upper, 0.0))
        return pd.DataFrame(
            {"mean": total, "lower": lower, "upper": upper}, index=self._index(steps)
        )

    def summary(self) -> str:
        bt = self.backtest
        lines = [
            f"Forecast of {self.name or 'series'}: model {self.model}",
            f"step {self.step}, seasonal periods {list(self.periods) or 'none'}, "
            f"levels {[f'{x:g}' for x in self.levels]}",
            f"backtest: {bt.origins} origin(s) x {bt.horizon} steps, "
            f"MASE {bt.mase:.3f}, sMAPE {bt.smape:.2f}%, interval scale {bt.interval_scale:.2f}",
        ]
        for key, score in sorted(bt.scores.items(), key=lambda kv: kv[1].mase):
            lines.append(
                f"  {key:<28} MASE {score.mase:8.3f}  sMAPE {score.smape:7.2f}%  "
                f"folds {score.folds}"
            )
        return "\n".join(lines)


class Forecaster:
    """Choose among baselines, STL/MSTL + ETS and autoregressions by backtest.

    Candidates (naive, seasonal naive per cycle, drift, ETS and an AR on the
    series adjusted for the daily and for both cycles, and an AR on the raw
    series) are scored by MASE over a rolling-origin backtest (``folds`` origins
    half a horizon apart, up to 8 when the history is long enough to leave three
    horizons before the earliest). The equal-weight means of the 2, 3 and 4 best
    are scored too, from the stored backtest forecasts; the lowest MASE wins,
    ties going to the simpler model (``model`` then reads e.g.
    ``"mean(stl_ar(7;12), stl_ets(A,Ad,N;12), seasonal_naive(12))"``).
    Intervals are normal, from each model's own variance formula (a mean's uses
    the mean of its members' standard deviations), rescaled by how far off the
    latest backtest fold actually was.

    ``horizon`` is the number of steps the backtest scores (default: the longest
    usable season, so an hourly series is judged on a week ahead); ``forecast``
    can later go further. ``periods`` overrides the cycles derived from the step,
    which is how data at calendar steps (months) is handled: lay it on any regular
    index and say ``periods=(12,)``.
    """

    def __init__(
        self,
        series: pd.Series[Any],
        *,
        step: StepLike | None = None,
        horizon: int | None = None,
        levels: Sequence[float] = (80, 95),
        nonnegative: bool = True,
        periods: Sequence[int] | None = None,
        folds: int = 3,
    ) -> None:
        data, self.step = regular_series(series, step)
        valid = np.flatnonzero(~np.isnan(data.to_numpy()))
        if valid.size < 2:
            raise AnalyticsInputError("series", "need at least two non-missing values to forecast")
        # Leading and trailing gaps are trimmed: the forecast continues from the last
        # observed bucket, so buckets that have not arrived yet get forecast too.
        self.data = data.iloc[valid[0] : valid[-1] + 1]
        self.levels = _check_levels(levels)
        self.horizon = None if horizon is None else _check_steps(horizon, "horizon")
        self.nonnegative = bool(nonnegative)
        if periods is None:
            self.periods = candidate_periods(self.step)
        else:
            if any(
                isinstance(p, bool) or not isinstance(p, int | np.integer) or p < 2 for p in periods
            ):
                raise AnalyticsInputError(
                    "periods", f"expected whole numbers >= 2, got {periods!r}"
                )
            self.periods = tuple(sorted({int(p) for p in periods}))
        if isinstance(folds, bool) or not isinstance(folds, int) or not 1 <= folds <= 10:
            raise AnalyticsInputError("folds", f"expected 1..10 backtest origins, got {folds!r}")
        self.folds = folds

    def _candidates(self, raw: FloatArray, usable: tuple[int, ...]) -> list[Candidate]:
        cands = [Candidate("naive", 2, fit_naive)]
        finite = raw[~np.isnan(raw)]
        if np.ptp(finite) == 0.0:
            return cands  # a constant is forecast exactly by the last value
        cands.extend(
            Candidate(f"seasonal_naive({p})", p + 1, partial(fit_seasonal_naive, period=p))
            for p in usable
        )
        cands.append(Candidate("drift", 3, fit_drift))
        subsets = tuple(dict.fromkeys((usable[:1], usable)))
        for subset in subsets:
            min_train = max(10, 2 * max(subset, default=0))
            key = f"stl_ets({','.join(map(str, subset))})" if subset else "ets"
            cands.append(Candidate(key, min_train, partial(fit_decomposed_ets, periods=subset)))
        for subset in dict.fromkeys(((), *subsets)):
            min_train = max(10, 2 * max(subset, default=0))
            key = f"stl_ar({','.join(map(str, subset))})" if subset else "ar"
            cands.append(Candidate(key, min_train, partial(fit_decomposed_ar, periods=subset)))
        return cands

    def fit(self) -> ForecastResult:
        raw = self.data.to_numpy(dtype=np.float64)
        n = len(raw)
        usable = usable_periods(self.periods, n)
        horizon = self.horizon or (max(usable) if usable else 10)
        bt_horizon = min(horizon, max(1, n // 3))
        cands = self._candidates(raw, usable)
        scale_period = min(usable) if usable else 1
        folds = _fold_count(n, bt_horizon, self.folds, max(c.min_train for c in cands))
        run = run_backtest(raw, cands, bt_horizon, folds, scale_period, self.nonnegative)
        by_key = {c.key: c for c in cands}
        scores = run.scores
        if scores:
            # Ties go to the simpler model: candidates are listed simplest first,
            # combinations after all single models.
            order = {c.key: i for i, c in enumerate(cands)}
            members = _add_combinations(run, order)
            order.update({k: len(order) + i for i, k in enumerate(members)})
            key = min(scores, key=lambda k: (scores[k].mase, order[k]))
            chosen = scores[key]
            scale = _calibration(run.zscores[key][0], (n - bt_horizon) / n)
            bt = Backtest(bt_horizon, run.origins, chosen.mase, chosen.smape, scores, scale)
        else:
            # Too short to hold anything out: the seasonal naive if a cycle fits,
            # which is the forecast a person would sketch by hand.
            key = f"seasonal_naive({scale_period})"
            key = key if key in by_key else "naive"
            members = {}
            bt = Backtest(bt_horizon, 0, float("nan"), float("nan"), {}, 1.0)
        filled = fill_gaps(raw)
        if key in members:
            fitted = combine([by_key[k].fit(filled) for k in members[key]])
        else:
            fitted = by_key[key].fit(filled)
        return ForecastResult(
            model=fitted.name,
            step=self.step,
            periods=usable,
            levels=self.levels,
            nonnegative=self.nonnegative,
            backtest=bt,
            last_timestamp=pd.Timestamp(self.data.index[-1]),
            horizon=horizon,
            name=None if self.data.name is None else str(self.data.name),
            _fitted=fitted,
        )
