"""Forecasting candidates: three textbook baselines, decomposition + ETS, and AR.

Every candidate is reduced to the same linear-innovations form: a point path, the
one-step error scale ``sigma`` and the weights ``psi`` with which past shocks carry
into later steps. That single form yields marginal intervals for any horizon and the
variance of a *sum* of future steps (month-end totals, budget run-out) without
simulation, which keeps a fit well inside the per-series time budget.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.signal import lfilter, lfiltic
from statsmodels.tools.sm_exceptions import ConvergenceWarning
from statsmodels.tsa.exponential_smoothing.ets import ETSModel

from analytics._seasonal import FloatArray, decompose


@dataclass(frozen=True)
class Fitted:
    """A fitted candidate: ``mean(steps)`` and its innovations structure."""

    name: str
    sigma: float
    path: Callable[[int], FloatArray]
    weights: Callable[[int], FloatArray]
    extra: Callable[[int], FloatArray] | None = field(default=None)
    parts: tuple[Fitted, ...] = field(default=())

    def mean(self, steps: int) -> FloatArray:
        return self.path(steps)

    def psi(self, steps: int) -> FloatArray:
        """Weights c_1..c_steps of past shocks; c_0 = 1 is implicit."""
        return self.weights(steps)

    def sd(self, steps: int) -> FloatArray:
        """Forecast standard deviation for steps 1..steps (unscaled)."""
        if self.parts:
            sd: FloatArray = np.mean([p.sd(steps) for p in self.parts], axis=0)
            return sd
        psi = self.psi(steps)
        var = self.sigma**2 * (1.0 + np.concatenate(([0.0], np.cumsum(psi[: steps - 1] ** 2))))
        if self.extra is not None:
            var = var + self.extra(steps)
        return np.sqrt(var)

    def cumulative_sd(self, steps: int) -> FloatArray:
        """Standard deviation of the sum of steps 1..k, for every k up to ``steps``.

        With e_h = sum_j c_j * eps_{h-j}, the sum up to k weighs eps_i by
        1 + C_{k-i} where C is the running sum of c; summing squares over i gives
        the variance. Quadratic in ``steps``, which is fine for a few thousand.
        """
        if self.parts:
            cum: FloatArray = np.mean([p.cumulative_sd(steps) for p in self.parts], axis=0)
            return cum
        psi = self.psi(steps)
        big_c = np.concatenate(([0.0], np.cumsum(psi[: steps - 1])))  # C_0..C_{steps-1}
        # var_k = sigma^2 * sum_{m=0}^{k-1} (1 + C_m)^2
        var = self.sigma**2 * np.cumsum((1.0 + big_c) ** 2)
        if self.extra is not None:
            # Drift's slope uncertainty is fully correlated across steps.
            var = var + np.cumsum(np.sqrt(self.extra(steps))) ** 2
        return np.sqrt(var)


def combine(parts: Sequence[Fitted]) -> Fitted:
    """Equal-weight mean of several forecasts.

    The standard deviation is the mean of the parts' (for the marginal and for the
    running total), an upper bound on that of the mean whatever the correlation of
    their errors, so the combination's intervals err on the wide side before the
    backtest calibration rescales them.
    """
    parts = tuple(parts)
    name = f"mean({', '.join(p.name for p in parts)})"

    def path(steps: int) -> FloatArray:
        out: FloatArray = np.mean([p.mean(steps) for p in parts], axis=0)
        return out

    sigma = float(np.mean([p.sigma for p in parts]))
    return Fitted(name, sigma, path, lambda steps: np.zeros(steps), parts=parts)


def _rms(values: FloatArray) -> float:
    if values.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(values**2)))


def fit_naive(y: FloatArray) -> Fitted:
    last = float(y[-1])
    sigma = _rms(np.diff(y))
    return Fitted(
        "naive",
        sigma,
        lambda steps: np.full(steps, last),
        lambda steps: np.ones(steps),
    )


def fit_seasonal_naive(y: FloatArray, period: int) -> Fitted:
    last_cycle = y[-period:].copy()
    sigma = _rms(y[period:] - y[:-period])

    def path(steps: int) -> FloatArray:
        return last_cycle[np.arange(steps) % period]

    def weights(steps: int) -> FloatArray:
        out: FloatArray = (np.arange(1, steps + 1) % period == 0).astype(np.float64)
        return out

    return Fitted(f"seasonal_naive({period})", sigma, path, weights)


def fit_drift(y: FloatArray) -> Fitted:
    n = len(y)
    slope = float((y[-1] - y[0]) / (n - 1))
    last = float(y[-1])
    sigma = _rms(np.diff(y) - slope)

    def extra(steps: int) -> FloatArray:
        h = np.arange(1, steps + 1, dtype=np.float64)
        return sigma**2 * h**2 / (n - 1)

    return Fitted(
        "drift",
        sigma,
        lambda steps: last + slope * np.arange(1, steps + 1),
        lambda steps: np.ones(steps),
        extra,
    )


@dataclass(frozen=True)
class _Adjusted:
    """A series with its cycles removed, standardised, and the way back.

    Both decomposition models are location/scale equivariant; fitting on a
    standardised series keeps optimiser tolerances and AICc arithmetic meaningful
    for token counts in the billions. The cycles are continued by repeating their
    last estimated period.
    """

    z: FloatArray
    center: float
    scale: float
    tails: tuple[tuple[FloatArray, int], ...]

    def restore(self, z_future: FloatArray) -> FloatArray:
        steps = len(z_future)
        out: FloatArray = np.asarray(z_future, dtype=np.float64) * self.scale + self.center
        for tail, period in self.tails:
            out = out + tail[np.arange(steps) % period]
        return out


def _adjust(y: FloatArray, periods: tuple[int, ...]) -> _Adjusted:
    dec = decompose(y, periods)
    adjusted = y - dec.seasonal
    center = float(np.mean(adjusted))
    scale = float(np.std(adjusted))
    if not np.isfinite(scale) or scale <= 0.0:
        scale = 1.0
    tails = tuple((s[-p:].copy(), p) for s, p in zip(dec.seasonals, dec.periods, strict=True))
    return _Adjusted((adjusted - center) / scale, center, scale, tails)


def _ets_fit(z: FloatArray, damped: bool) -> Any:
    model = ETSModel(z, error="add", trend="add" if damped else None, damped_trend=damped)
    with warnings.catch_warnings():
        # Flat or near-deterministic adjusted series make the likelihood flat; the
        # optimiser then stops early with parameters that are still usable.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(disp=False)


def fit_decomposed_ets(y: FloatArray, periods: tuple[int, ...]) -> Fitted:
    """STL/MSTL removes the cycles; ETS (ANN or AAdN by AICc) models what is left.

    The cycles are continued by repeating their last estimated period, so the
    adjusted series only needs a cheap non-seasonal ETS, far faster than a seasonal
    state-space model of period 24 or 168.
    """
    adj = _adjust(y, periods)
    z = adj.z
    if np.ptp(z) == 0.0:
        # Nothing but the cycle (a backtest fold of a metric that had not started
        # yet): the likelihood is degenerate, and the cycle alone is the forecast.
        flat = f"stl_ets(A,N,N;{','.join(map(str, periods))})" if periods else "ets(A,N,N)"
        return Fitted(flat, 0.0, lambda steps: adj.restore(np.zeros(steps)), np.ones)
    fits = [_ets_fit(z, damped=False)]
    if len(z) >= 10:
        fits.append(_ets_fit(z, damped=True))
    best = min(fits, key=lambda r: r.aicc if np.isfinite(r.aicc) else np.inf)
    params = dict(zip(best.model.param_names, np.asarray(best.params), strict=True))
    alpha = float(params["smoothing_level"])
    beta = float(params.get("smoothing_trend", 0.0))
    phi = float(params.get("damping_trend", 1.0))
    sigma = _rms(np.asarray(best.resid, dtype=np.float64)) * adj.scale
    tag = "A,Ad,N" if "damping_trend" in params else "A,N,N"
    name = f"stl_ets({tag};{','.join(map(str, periods))})" if periods else f"ets({tag})"

    def path(steps: int) -> FloatArray:
        return adj.restore(np.asarray(best.forecast(steps), dtype=np.float64))

    def weights(steps: int) -> FloatArray:
        j = np.arange(1, steps + 1, dtype=np.float64)
        if beta == 0.0:
            return np.full(steps, alpha)
        damp = j if phi == 1.0 else phi * (1.0 - phi**j) / (1.0 - phi)
        return alpha + beta * damp

    return Fitted(name, sigma, path, weights)


AR_MAX_LAGS = 24


def _ar_order(z: FloatArray, max_lags: int) -> int:
    """Order of the AR(p) with intercept that minimises AICc, among stationary fits.

    Every order is scored on the same sample (the last ``n - max_lags`` points), so
    the criteria compare like with like; one QR of the largest design gives the
    residual sum of squares of every nested model at once. An order whose fit is
    explosive or has a unit root is skipped: its forecast would run away over a
    long horizon, and the month-end and run-out figures extend far past the
    backtest.
    """
    n = len(z)
    design = np.column_stack(
        [np.ones(n - max_lags)] + [z[max_lags - i : n - i] for i in range(1, max_lags + 1)]
    )
    target = z[max_lags:]
    q, r = np.linalg.qr(design)
    proj = q.T @ target
    total = float(target @ target)
    m = len(target)
    best, best_score = 0, np.inf
    for p in range(max_lags + 1):
        k = p + 2  # coefficients, intercept and the error variance
        if m - k - 1 <= 0:
            break
        rss = max(total - float(np.sum(proj[: p + 1] ** 2)), 1e-12 * max(total, 1e-300))
        score = m * np.log(rss / m) + 2 * k + 2 * k * (k + 1) / (m - k - 1)
        if score >= best_score:
            continue
        if p > 0:
            coef = np.linalg.solve(r[: p + 1, : p + 1], proj[: p + 1])
            if not _stationary(coef[1:]):
                continue
        best, best_score = p, score
    return best


def _stationary(phi: FloatArray) -> bool:
    roots = np.roots(np.concatenate(([1.0], -phi)))
    return bool(np.all(np.abs(roots) < 0.999))


def _ar_fit(z: FloatArray, p: int) -> tuple[float, FloatArray, float]:
    """Intercept, lag coefficients and residual RMS of an AR(p) by least squares."""
    n = len(z)
    design = np.column_stack([np.ones(n - p)] + [z[p - i : n - i] for i in range(1, p + 1)])
    coef, *_ = np.linalg.lstsq(design, z[p:], rcond=None)
    resid = z[p:] - design @ coef
    phi = np.asarray(coef[1:], dtype=np.float64)
    if p and not _stationary(phi):
        # The full-sample refit can cross the boundary the selection sample did not.
        return float(np.mean(z)), np.zeros(0), float(np.std(z))
    return float(coef[0]), phi, _rms(resid)


def fit_decomposed_ar(y: FloatArray, periods: tuple[int, ...]) -> Fitted:
    """STL/MSTL removes the cycles; an autoregression by AICc models what is left.

    ETS carries the last level forward, which is right for a wandering series and
    wrong for one that swings back: El Nino anomalies, the sunspot cycle, a queue
    that drains. A stationary AR(p) reverts to its mean at the pace the data show,
    and with no periods it can learn an irregular cycle (about 11 years for
    sunspots) that no fixed seasonal period fits. Least squares on at most
    ``AR_MAX_LAGS`` lags costs a few milliseconds, and the decomposition is shared
    with the ETS candidate through the cache of :func:`decompose`.
    """
    adj = _adjust(y, periods)
    z = adj.z
    max_lags = min(AR_MAX_LAGS, max(0, len(z) // 10))
    p = _ar_order(z, max_lags) if max_lags else 0
    intercept, phi, rms = _ar_fit(z, p)
    p = len(phi)
    denominator = np.concatenate(([1.0], -phi))
    # Past values in lfilter's state form, so a forecast of any length is one call.
    state = lfiltic([1.0], denominator, z[::-1][:p]) if p else None
    name = f"stl_ar({p};{','.join(map(str, periods))})" if periods else f"ar({p})"

    def path(steps: int) -> FloatArray:
        drive = np.full(steps, intercept)
        if p:
            z_future, _ = lfilter([1.0], denominator, drive, zi=state)
        else:
            z_future = drive
        return adj.restore(z_future)

    def weights(steps: int) -> FloatArray:
        impulse = np.zeros(steps + 1)
        impulse[0] = 1.0
        psi: FloatArray = np.asarray(lfilter([1.0], denominator, impulse), dtype=np.float64)
        return psi[1:]

    return Fitted(name, rms * adj.scale, path, weights)
