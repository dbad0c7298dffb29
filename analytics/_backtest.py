"""Rolling-origin backtests and the scale-free errors used to pick a model.

Model choice is by out-of-sample error, not in-sample fit: a seasonal ETS can fit
the history beautifully and still lose to "same hour last week". MASE is the ranking
metric because it is comparable across series of any scale; sMAPE is reported
alongside because it is what people read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from analytics._models import Fitted
from analytics._seasonal import FloatArray, fill_gaps


@dataclass(frozen=True)
class CandidateScore:
    """Backtest errors of one candidate, averaged over the folds it could run."""

    model: str
    mase: float
    smape: float
    folds: int


@dataclass(frozen=True)
class Backtest:
    """How the forecasting model was chosen.

    ``mase`` and ``smape`` are those of the chosen model (NaN when the series was
    too short to hold anything out); ``scores`` lists every candidate tried.
    """

    horizon: int
    origins: int
    mase: float
    smape: float
    scores: dict[str, CandidateScore] = field(default_factory=dict)
    interval_scale: float = 1.0


@dataclass(frozen=True)
class Candidate:
    key: str
    min_train: int
    fit: Callable[[FloatArray], Fitted]


def mase_scale(train: FloatArray, period: int) -> float:
    """In-sample MAE of the seasonal naive forecast (naive when too short)."""
    lag = period if len(train) > period else 1
    if len(train) <= lag:
        return float("nan")
    diffs = np.abs(train[lag:] - train[:-lag])
    diffs = diffs[~np.isnan(diffs)]
    return float(np.mean(diffs)) if diffs.size else float("nan")


def mase(actual: FloatArray, predicted: FloatArray, scale: float) -> float:
    mae = float(np.mean(np.abs(actual - predicted)))
    if mae == 0.0:
        return 0.0
    if not np.isfinite(scale) or scale <= 0.0:
        return float("inf")
    return mae / scale


def smape(actual: FloatArray, predicted: FloatArray) -> float:
    """Symmetric MAPE in percent (0..200); buckets where both are zero count as exact."""
    denom = np.abs(actual) + np.abs(predicted)
    num = 2.0 * np.abs(actual - predicted)
    ratio = np.divide(num, denom, out=np.zeros_like(num), where=denom > 0)
    return float(100.0 * np.mean(ratio))


def _usable_scales(scales: list[float]) -> list[float]:
    """Give folds whose history was flat the scale of the most varied history.

    A metric that starts at zero (a new deployment, a new model) has early folds
    whose seasonal naive error is 0, which makes every candidate's MASE infinite
    there and leaves nothing to choose by. Later histories contain the earlier
    ones, so their scale is the natural stand-in.
    """
    good = [s for s in scales if np.isfinite(s) and s > 0.0]
    if not good:
        return scales
    fallback = max(good)
    return [s if np.isfinite(s) and s > 0.0 else fallback for s in scales]


def origins_for(n: int, horizon: int, folds: int, min_train: int) -> list[int]:
    """Fold origins from the end backwards, half a horizon apart.

    Overlapping test windows let a 720-point series keep 3 folds with enough history
    for a weekly cycle in each, which non-overlapping windows could not.
    """
    stride = max(1, horizon // 2)
    out = [n - horizon - k * stride for k in range(folds)]
    return [o for o in out if o >= min_train]


@dataclass
class BacktestRun:
    """Everything a backtest measured, kept so combinations can be scored without refits.

    ``preds`` and ``sds`` hold each candidate's point path (clipped when
    nonnegative) and unscaled standard deviation at every origin, aligned with
    ``actuals`` and ``scales`` (the MASE scale of each origin's history).
    """

    scores: dict[str, CandidateScore]
    zscores: dict[str, list[FloatArray]]
    origins: int
    names: dict[str, str] = field(default_factory=dict)
    preds: dict[str, list[FloatArray]] = field(default_factory=dict)
    sds: dict[str, list[FloatArray]] = field(default_factory=dict)
    actuals: list[FloatArray] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)

    def score(self, key: str, preds: list[FloatArray], sds: list[FloatArray], name: str) -> None:
        """Score a forecast given at every origin (e.g. a combination) and record it."""
        mases: list[float] = []
        smapes: list[float] = []
        zs: list[FloatArray] = []
        for actual, scale, pred, sd_all in zip(self.actuals, self.scales, preds, sds, strict=True):
            ok = ~np.isnan(actual)
            if not ok.any():
                continue
            mases.append(mase(actual[ok], pred[ok], scale))
            smapes.append(smape(actual[ok], pred[ok]))
            sd = sd_all[ok]
            err = actual[ok] - pred[ok]
            zs.append(np.divide(err, sd, out=np.zeros_like(err), where=sd > 0))
        if not mases:
            return
        self.scores[key] = CandidateScore(
            name, float(np.mean(mases)), float(np.mean(smapes)), len(mases)
        )
        self.zscores[key] = zs
        self.names[key] = name
        self.preds[key] = preds
        self.sds[key] = sds


def run_backtest(
    raw: FloatArray,
    candidates: list[Candidate],
    horizon: int,
    folds: int,
    scale_period: int,
    nonnegative: bool,
) -> BacktestRun:
    """Score each candidate on every origin it has enough history for.

    Returns the scores, each candidate's standardised errors (for interval
    calibration), the number of origins used and the per-origin forecasts. A
    candidate that cannot run on every origin is left out, so all scores compare
    like with like.
    """
    min_train = max(3, min(c.min_train for c in candidates))
    origins = origins_for(len(raw), horizon, folds, min_train)
    run = BacktestRun({}, {}, len(origins))
    if not origins:
        return run
    trains = [fill_gaps(raw[:origin]) for origin in origins]
    run.actuals = [raw[origin : origin + horizon] for origin in origins]
    run.scales = _usable_scales([mase_scale(train, scale_period) for train in trains])
    for cand in candidates:
        if any(o < cand.min_train for o in origins):
            continue
        preds: list[FloatArray] = []
        sds: list[FloatArray] = []
        name = cand.key
        for train in trains:
            fitted = cand.fit(train)
            name = fitted.name
            pred = fitted.mean(horizon)
            if nonnegative:
                pred = np.maximum(pred, 0.0)
            preds.append(pred)
            sds.append(fitted.sd(horizon))
        run.score(cand.key, preds, sds, name)
    return run
