"""Mann-Kendall trend test with tie correction and Hamed-Rao autocorrelation fix.

Metrics of an agent fleet are strongly autocorrelated (a busy hour is followed by a
busy hour), which makes the plain test call almost every series "trending". The
Hamed & Rao (1998) correction inflates Var(S) by the effective-sample-size factor
estimated from the autocorrelation of the ranks of the detrended series, keeping
only lags whose autocorrelation is significant, as in their paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata, theilslopes

from analytics._seasonal import FloatArray

_CHUNK = 2_000_000  # pairwise comparisons per block: bounded memory for long windows


@dataclass(frozen=True)
class MannKendall:
    s: float
    var_s: float
    z: float
    p_value: float


def mk_statistic(x: FloatArray) -> float:
    """S = sum over i<j of sign(x_j - x_i), blockwise to keep memory flat."""
    n = len(x)
    total = 0.0
    rows = max(1, _CHUNK // max(n, 1))
    for lo in range(0, n - 1, rows):
        hi = min(n - 1, lo + rows)
        block = np.sign(x[None, :] - x[lo:hi, None])
        # Keep only j > i for each row i in the block.
        mask = np.arange(n)[None, :] > np.arange(lo, hi)[:, None]
        total += float(np.sum(block[mask]))
    return total


def mk_variance(x: FloatArray) -> float:
    """Var(S) under H0 with the correction for tied groups."""
    n = len(x)
    _, counts = np.unique(x, return_counts=True)
    ties = counts[counts > 1].astype(np.float64)
    return float((n * (n - 1) * (2 * n + 5) - np.sum(ties * (ties - 1) * (2 * ties + 5))) / 18.0)


def _hamed_rao_factor(x: FloatArray) -> float:
    """n/n* from significant autocorrelations of the detrended ranks."""
    n = len(x)
    t = np.arange(n, dtype=np.float64)
    slope = float(theilslopes(x, t)[0])
    ranks = rankdata(x - slope * t)
    ranks = ranks - ranks.mean()
    denom = float(np.sum(ranks**2))
    if denom == 0.0:
        return 1.0
    # Autocorrelation via FFT: O(n log n) even for long minute-level windows.
    size = 1 << (2 * n - 1).bit_length()
    spec = np.fft.rfft(ranks, size)
    acf = np.fft.irfft(spec * np.conj(spec), size)[:n] / denom
    lags = np.arange(1, n - 2)
    r = acf[1 : n - 2]
    bound = norm.ppf(0.975) / np.sqrt(n)
    keep = np.abs(r) > bound
    if not keep.any():
        return 1.0
    k, rk = lags[keep], r[keep]
    factor = 1.0 + 2.0 / (n * (n - 1) * (n - 2)) * float(
        np.sum((n - k) * (n - k - 1) * (n - k - 2) * rk)
    )
    # A negative or tiny factor means the estimate broke down; never shrink below
    # the plain test's variance, which would manufacture significance.
    return max(factor, 1.0)


def mann_kendall(x: FloatArray, *, autocorrelation: bool = True) -> MannKendall:
    """Two-sided test of a monotonic trend in ``x`` (no NaN, n >= 3)."""
    n = len(x)
    s = mk_statistic(x)
    var_s = mk_variance(x)
    if autocorrelation and n > 3:
        var_s *= _hamed_rao_factor(x)
    if var_s <= 0.0:
        return MannKendall(s, var_s, 0.0, 1.0)
    if s > 0:
        z = (s - 1.0) / np.sqrt(var_s)
    elif s < 0:
        z = (s + 1.0) / np.sqrt(var_s)
    else:
        z = 0.0
    p = float(2.0 * norm.sf(abs(z)))
    return MannKendall(s, var_s, float(z), min(1.0, p))
