"""Pure analytics over metric rollups: history, trends, forecasts, anomalies.

Everything here takes pandas objects with a tz-aware UTC ``DatetimeIndex`` at a
regular step and returns plain dataclasses or pandas objects, with no I/O, so the
HTTP API, the Panel page and notebooks share one implementation. Bad input raises
:class:`AnalyticsInputError` naming the offending argument in ``field``.

No code here starts threads or processes. Fits are single-threaded apart from
BLAS, so a worker pool should set ``OPENBLAS_NUM_THREADS=1`` (or use threadpoolctl)
in its workers to avoid oversubscribing cores.
"""

from analytics._anomaly import Anomaly, detect_anomalies
from analytics._backtest import Backtest, CandidateScore
from analytics._forecast import Forecaster, ForecastResult
from analytics._history import resample
from analytics._mannkendall import MannKendall, mann_kendall
from analytics._predictive import (
    BudgetRunout,
    MonthEndProjection,
    budget_runout,
    project_month_end,
    queue_drain_eta,
)
from analytics._trend import TrendResult, trend, trends
from analytics.errors import AnalyticsInputError

__all__ = [
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
]
