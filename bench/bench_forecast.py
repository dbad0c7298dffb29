"""Forecasting: 100 hourly series of 720 points, a 7-day hold-out, ``Forecaster`` (its
rolling-origin backtest and model choice included) against statsforecast's AutoETS
model search as a peer, on accuracy (MASE, sMAPE) and time, in the same run; plus the
real public seasonal series that docs/forecast-accuracy.md uses.

statsforecast pins pandas below 3, so it never enters the project's venv: the peer runs
from its own virtualenv (``.bench-venv-sf``, created here on first use) in a subprocess.
The project side also runs in a subprocess, so both get a fresh process with the same
environment: one process each, run one after the other, BLAS/OpenMP/numba threads
pinned to 1. Both read the same training CSV, get the same hold-outs and are scored
here by the same code. Each side first fits one extra series as a warm-up, timed and
reported separately (that is where statsforecast 1.x paid its numba JIT; 2.x's ETS is
compiled C++ and has little to warm up), and imports are not counted either.

``python -m bench --only forecast``; about 3-4 minutes on 2 cores, plus about a minute
the first time to build the peer's venv. If it cannot be built (no package registry),
the benchmark says so and runs the project side alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .common import REPO, report

SERIES = 100
LENGTH = 720  # 30 days hourly
HORIZON = 168  # 7 days
SEASON = 24
WARMUP_SEED = 10_000
REAL_ORIGINS = 3  # as in analytics/_accuracy.py: the last 3 non-overlapping horizons
TIME_TARGET = 1.5  # ours/peer total time, at most

PEER_VENV = REPO / ".bench-venv-sf"
PEER_PACKAGE = "statsforecast"
PIP_TIMEOUT = 1200.0
WORKER_TIMEOUT = 900.0

# Same for both sides; set before either process imports numpy.
THREADS = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}

FloatArray = np.ndarray[Any, np.dtype[np.floating[Any]]]


@dataclass(frozen=True)
class Task:
    id: str
    group: str  # "synthetic" (hold-out), "full" (timed only) or the real series' name
    train: pd.Series[float]
    actual: FloatArray
    season: int
    horizon: int
    periods: tuple[int, ...] | None  # ours only; None derives the cycles from the step


# --------------------------------------------------------------------------- data


def synthetic_series(seed: int) -> pd.Series[float]:
    """An hourly fleet metric: daily and weekly cycles, trend, noise, level shifts.

    Multiplicative cycles (a business-hours bump, quieter weekends), a linear trend of
    up to +-30% over the month, AR(1) noise, and in a third of the series one or two
    level shifts inside the history. One series in ten is a low count (a few per hour,
    Poisson), where the non-negative floor matters. Never negative.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(LENGTH)
    hour = t % 24
    weekday = (t // 24 + int(rng.integers(0, 7))) % 7
    low = seed % 10 == 9
    level = rng.uniform(2.0, 8.0) if low else float(rng.lognormal(np.log(200.0), 1.0))
    peak, width = rng.uniform(9.0, 17.0), rng.uniform(2.5, 5.0)
    dist = (hour - peak + 12.0) % 24.0 - 12.0
    bump = np.exp(-0.5 * (dist / width) ** 2)
    amp = rng.uniform(0.2, 0.8)
    daily = (1.0 - amp) + 2.0 * amp * bump
    weekly = np.where(weekday >= 5, rng.uniform(0.5, 0.95), 1.0)
    base = 1.0 + rng.uniform(-0.3, 0.3) * t / LENGTH
    if seed % 3 == 0:
        for _ in range(int(rng.integers(1, 3))):
            at = int(rng.integers(96, LENGTH - HORIZON - 24))
            base[at:] *= 1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.4)
    mean = level * base * daily * weekly
    if low:
        y = rng.poisson(mean).astype(np.float64)
    else:
        phi, sd = rng.uniform(0.0, 0.6), rng.uniform(0.03, 0.10)
        eps = rng.normal(0.0, sd, LENGTH)
        ar = np.zeros(LENGTH)
        for i in range(1, LENGTH):
            ar[i] = phi * ar[i - 1] + eps[i]
        y = np.maximum(mean * (1.0 + ar), 0.0)
    index = pd.date_range("2024-01-01", periods=LENGTH, freq="h", tz="UTC")
    return pd.Series(y, index=index, dtype=np.float64)


def synthetic_tasks() -> list[Task]:
    """Each series twice: fit on the first 552 points and scored on the last 168
    ("synthetic"), and fit on all 720 points to forecast the unseen next 7 days
    ("full", timed only: the production case the issue's timings describe)."""
    held: list[Task] = []
    full: list[Task] = []
    for seed in range(SERIES):
        s = synthetic_series(seed)
        y = s.to_numpy(np.float64)
        held.append(
            Task(
                f"syn-{seed:03d}",
                "synthetic",
                s.iloc[:-HORIZON],
                y[-HORIZON:],
                SEASON,
                HORIZON,
                None,
            )
        )
        unseen = np.full(HORIZON, np.nan)
        full.append(Task(f"full-{seed:03d}", "full", s, unseen, SEASON, HORIZON, None))
    return held + full


def real_tasks() -> list[Task]:
    """The series of docs/forecast-accuracy.md with its hold-outs: the last
    ``REAL_ORIGINS`` non-overlapping horizons, each fit on everything before it."""
    from analytics._accuracy import DATASETS

    out = []
    for data in DATASETS:
        series = data.load()
        values = series.to_numpy(np.float64)
        n, h = len(values), data.horizon
        for k in range(REAL_ORIGINS):
            origin = n - h * (k + 1)
            out.append(
                Task(
                    f"{data.name}#{k}",
                    data.name,
                    series.iloc[:origin],
                    values[origin : origin + h],
                    data.period,
                    h,
                    data.periods,
                )
            )
    return out


def write_inputs(workdir: Path, tasks: list[Task], warmup: pd.Series[float]) -> None:
    """One long CSV of training data (unique_id, ds, y; the hold-outs are not in it)
    and the task list; both sides read exactly these."""
    frames = [
        pd.DataFrame(
            {
                "unique_id": uid,
                "ds": pd.DatetimeIndex(s.index).strftime("%Y-%m-%dT%H:%M:%S"),
                "y": s,
            }
        )
        for uid, s in [("warmup", warmup), *((t.id, t.train) for t in tasks)]
    ]
    pd.concat(frames, ignore_index=True).to_csv(workdir / "train.csv", index=False)
    spec = [
        {
            "id": t.id,
            "season": t.season,
            "horizon": t.horizon,
            "periods": None if t.periods is None else list(t.periods),
        }
        for t in tasks
    ]
    warm = {"id": "warmup", "season": SEASON, "horizon": HORIZON, "periods": None}
    (workdir / "tasks.json").write_text(json.dumps({"warmup": warm, "tasks": spec}))


# ------------------------------------------------------------------------ workers


def _read_train(workdir: Path) -> dict[str, pd.Series[float]]:
    frame = pd.read_csv(workdir / "train.csv")
    out: dict[str, pd.Series[float]] = {}
    for uid, group in frame.groupby("unique_id", sort=False):
        index = pd.DatetimeIndex(pd.to_datetime(group["ds"])).tz_localize("UTC")
        out[str(uid)] = pd.Series(group["y"].to_numpy(np.float64), index=index)
    return out


def ours_worker(workdir: Path) -> None:
    """``python -m bench.bench_forecast ours DIR``: the project side, in the project venv."""
    started = time.perf_counter()
    from analytics import Forecaster

    import_s = time.perf_counter() - started
    spec = json.loads((workdir / "tasks.json").read_text())
    series = _read_train(workdir)

    def one(task: dict[str, Any]) -> dict[str, Any]:
        periods = task["periods"]
        t0 = time.perf_counter()
        try:
            result = Forecaster(
                series[task["id"]],
                horizon=task["horizon"],
                periods=None if periods is None else tuple(periods),
            ).fit()
            mean = result.forecast(task["horizon"])["mean"].to_numpy(np.float64)
        except Exception as exc:  # report, keep going, as the peer does
            seconds = time.perf_counter() - t0
            nan = [float("nan")] * task["horizon"]
            error = f"{type(exc).__name__}: {exc}"
            return {"mean": nan, "seconds": seconds, "model": "failed", "error": error}
        seconds = time.perf_counter() - t0
        return {"mean": mean.tolist(), "seconds": seconds, "model": result.model, "error": None}

    warm = one(spec["warmup"])
    out = {t["id"]: one(t) for t in spec["tasks"]}
    meta = {"import_s": import_s, "warmup_s": warm["seconds"], "version": "analytics"}
    (workdir / "ours.json").write_text(json.dumps({"meta": meta, "results": out}))


PEER_SCRIPT = r'''
"""Peer side, run from the statsforecast venv: AutoETS model search per series."""
import json
import sys
import time
from pathlib import Path

started = time.perf_counter()
import numpy as np
import pandas as pd
import statsforecast
from statsforecast.models import AutoETS

import_s = time.perf_counter() - started
workdir = Path(sys.argv[1])
spec = json.loads((workdir / "tasks.json").read_text())
frame = pd.read_csv(workdir / "train.csv")
series = {str(k): g["y"].to_numpy(np.float64) for k, g in frame.groupby("unique_id", sort=False)}


def fill(y):
    # AutoETS takes no NaN: linear interpolation inside, nearest value at the ends
    # (what the project does before fitting, analytics/_seasonal.py fill_gaps).
    bad = np.isnan(y)
    if not bad.any():
        return y
    idx = np.arange(len(y))
    out = y.copy()
    out[bad] = np.interp(idx[bad], idx[~bad], y[~bad])
    return out


def one(task):
    y = fill(series[task["id"]])
    t0 = time.perf_counter()
    try:
        model = AutoETS(season_length=task["season"]).fit(y)
        mean = np.asarray(model.predict(h=task["horizon"])["mean"], dtype=np.float64)
        seconds = time.perf_counter() - t0
        name = str(model.model_.get("method", "AutoETS"))
        error = None
    except Exception as exc:  # report, keep going
        seconds = time.perf_counter() - t0
        mean = np.full(task["horizon"], np.nan)
        name, error = "failed", f"{type(exc).__name__}: {exc}"
    return {"mean": mean.tolist(), "seconds": seconds, "model": name, "error": error}


warm = one(spec["warmup"])
out = {t["id"]: one(t) for t in spec["tasks"]}
meta = {"import_s": import_s, "warmup_s": warm["seconds"], "version": statsforecast.__version__}
(workdir / "peer.json").write_text(json.dumps({"meta": meta, "results": out}))
'''


def _run_worker(cmd: list[str], workdir: Path, name: str) -> dict[str, Any] | None:
    env = {**os.environ, **THREADS}
    print(f"forecast: running {name} ...", flush=True)
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        report(f"  {name}: timed out after {WORKER_TIMEOUT:.0f} s")
        return None
    print(f"forecast: {name} done in {time.perf_counter() - started:.1f} s", flush=True)
    out = workdir / f"{name}.json"
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        report(f"  {name}: worker failed (exit {proc.returncode}): " + " | ".join(tail))
        return None
    data: dict[str, Any] = json.loads(out.read_text())
    return data


# ---------------------------------------------------------------------- peer venv


def _peer_python() -> Path:
    return PEER_VENV / "bin" / "python"


def _peer_version() -> str | None:
    py = _peer_python()
    if not py.exists():
        return None
    probe = subprocess.run(
        [str(py), "-c", f"import {PEER_PACKAGE}; print({PEER_PACKAGE}.__version__)"],
        capture_output=True,
        text=True,
        env={**os.environ, **THREADS},
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def ensure_peer_venv() -> tuple[Path | None, str]:
    """The peer's virtualenv, created and filled when missing; (python, version) or
    (None, why not). Idempotent: a venv that already imports statsforecast is reused."""
    version = _peer_version()
    if version is not None:
        print(f"forecast: reusing peer venv {PEER_VENV} ({PEER_PACKAGE} {version})", flush=True)
        return _peer_python(), version
    if not _peer_python().exists():
        print(f"forecast: creating peer venv {PEER_VENV} ...", flush=True)
        made = subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(PEER_VENV)],
            capture_output=True,
            text=True,
        )
        if made.returncode != 0:
            return None, f"could not create {PEER_VENV}: {made.stderr.strip()[-300:]}"
    log = PEER_VENV / "pip-install.log"
    print(
        f"forecast: pip install {PEER_PACKAGE} into {PEER_VENV} (it pins pandas<3, hence "
        f"its own venv; a minute or more the first time; log in {log}) ...",
        flush=True,
    )
    try:
        with log.open("w") as fh:
            installed = subprocess.run(
                [
                    str(_peer_python()),
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    PEER_PACKAGE,
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=PIP_TIMEOUT,
            )
        code = installed.returncode
    except subprocess.TimeoutExpired:
        code = -1
    version = _peer_version()
    if code != 0 or version is None:
        tail = " | ".join(log.read_text().strip().splitlines()[-3:]) if log.exists() else ""
        return None, (
            f"pip install {PEER_PACKAGE} failed (exit {code}; no network to the package "
            f"registry?): {tail[-400:]}"
        )
    print(f"forecast: peer venv ready ({PEER_PACKAGE} {version})", flush=True)
    return _peer_python(), version


# ------------------------------------------------------------------------ scoring


@dataclass(frozen=True)
class Score:
    mase: float
    smape: float
    seconds: float
    model: str


def score(task: Task, result: dict[str, Any]) -> Score:
    """MASE scaled by the in-sample seasonal naive MAE at the task's season, sMAPE;
    both on the held-out points that are not missing, forecasts floored at zero
    (every series here is non-negative; ours already floors, the peer does not)."""
    from analytics._backtest import mase, mase_scale, smape

    pred = np.maximum(np.asarray(result["mean"], dtype=np.float64), 0.0)
    ok = ~np.isnan(task.actual)
    if not ok.any() or np.isnan(pred[ok]).any():
        return Score(float("nan"), float("nan"), float(result["seconds"]), str(result["model"]))
    scale = mase_scale(task.train.to_numpy(np.float64), task.season)
    return Score(
        mase(task.actual[ok], pred[ok], scale),
        smape(task.actual[ok], pred[ok]),
        float(result["seconds"]),
        str(result["model"]),
    )


def _scores(tasks: list[Task], run: dict[str, Any] | None) -> dict[str, Score] | None:
    if run is None:
        return None
    return {t.id: score(t, run["results"][t.id]) for t in tasks}


def _times(values: list[float]) -> str:
    arr = np.asarray(values)
    return (
        f"total {arr.sum():6.1f} s   per series median {np.median(arr):.3f} s  "
        f"mean {arr.mean():.3f} s  p90 {np.percentile(arr, 90):.3f} s  max {arr.max():.3f} s"
    )


def _top(models: list[str], k: int = 3) -> str:
    return ", ".join(f"{m} x{c}" for m, c in Counter(models).most_common(k))


def report_synthetic(
    tasks: list[Task],
    ours: dict[str, Score] | None,
    peer: dict[str, Score] | None,
    meta: tuple[dict[str, Any] | None, dict[str, Any] | None],
) -> None:
    ids = [t.id for t in tasks if t.group == "synthetic"]
    for label, scores, m in (("ours", ours, meta[0]), ("peer", peer, meta[1])):
        if scores is None or m is None:
            continue
        report(
            f"  {label}: {_times([scores[i].seconds for i in ids])}   "
            f"(import {m['import_s']:.1f} s, warm-up fit {m['warmup_s']:.2f} s, not counted)"
        )
    if ours is None:
        return
    o_mase = [ours[i].mase for i in ids]
    report(f"  ours chose: {_top([ours[i].model for i in ids])}")
    if peer is None:
        report(
            f"  ours MASE median {np.median(o_mase):.3f}  mean {np.mean(o_mase):.3f}  "
            f"sMAPE median {np.median([ours[i].smape for i in ids]):.2f}%"
        )
        return
    report(f"  peer chose: {_top([peer[i].model for i in ids])}")
    p_mase = [peer[i].mase for i in ids]
    failed = sum(1 for v in p_mase if not np.isfinite(v))
    both = [(o, p) for o, p in zip(o_mase, p_mase, strict=True) if np.isfinite(p)]
    wins = sum(1 for o, p in both if o < p)
    report(
        f"  MASE   median ours {np.median(o_mase):.3f}  peer {np.nanmedian(p_mase):.3f}   "
        f"mean ours {np.mean(o_mase):.3f}  peer {np.nanmean(p_mase):.3f}   "
        f"ours lower on {wins}/{len(both)} series"
        + (f", peer failed on {failed}" if failed else "")
    )
    report(
        f"  sMAPE  median ours {np.median([ours[i].smape for i in ids]):.2f}%  "
        f"peer {np.nanmedian([peer[i].smape for i in ids]):.2f}%"
    )
    o_t = sum(ours[i].seconds for i in ids)
    p_t = sum(peer[i].seconds for i in ids)
    ratio = o_t / p_t
    verdict = "met" if ratio <= TIME_TARGET else "NOT met"
    report(f"  ratio (ours/peer total time): {ratio:.2f}   target: <= {TIME_TARGET} -> {verdict}")


def report_full(
    tasks: list[Task], ours: dict[str, Score] | None, peer: dict[str, Score] | None
) -> None:
    ids = [t.id for t in tasks if t.group == "full"]
    report(
        f"Same {len(ids)} series fit on all {LENGTH} points, forecast the next {HORIZON} "
        "(timed only; ours' weekly STL/MSTL candidate is in its backtest at this length)"
    )
    if ours is None:
        return
    report(f"  ours: {_times([ours[i].seconds for i in ids])}")
    if peer is not None:
        report(f"  peer: {_times([peer[i].seconds for i in ids])}")
    report(f"  ours chose: {_top([ours[i].model for i in ids])}")
    if peer is None:
        return
    report(f"  peer chose: {_top([peer[i].model for i in ids])}")
    ratio = sum(ours[i].seconds for i in ids) / sum(peer[i].seconds for i in ids)
    verdict = "met" if ratio <= TIME_TARGET else "NOT met"
    report(f"  ratio (ours/peer total time): {ratio:.2f}   target: <= {TIME_TARGET} -> {verdict}")


def report_real(
    tasks: list[Task], ours: dict[str, Score] | None, peer: dict[str, Score] | None
) -> None:
    groups = list(dict.fromkeys(t.group for t in tasks if t.group not in ("synthetic", "full")))
    report(
        f"Real series of docs/forecast-accuracy.md: the last {REAL_ORIGINS} non-overlapping "
        "horizons of each, means over those origins; peer AutoETS(season_length=period)"
    )
    if ours is None:
        report("  ours: not run")
        return
    report(
        f"  {'series':<15}{'n':>5}{'per':>4}{'h':>5} | {'MASE ours':>9}{'peer':>7} | "
        f"{'sMAPE ours':>10}{'peer':>7} | {'s/fit ours':>10}{'peer':>6} | models (ours; peer)"
    )
    losses: list[str] = []
    times_o: list[float] = []
    times_p: list[float] = []
    for g in groups:
        gt = [t for t in tasks if t.group == g]
        n = len(gt[0].train) + gt[0].horizon  # gt[0] is the last hold-out
        om = float(np.mean([ours[t.id].mase for t in gt]))
        o_smape = float(np.mean([ours[t.id].smape for t in gt]))
        times_o += [ours[t.id].seconds for t in gt]
        models = "/".join(dict.fromkeys(ours[t.id].model for t in gt))
        pm = ps = pt = float("nan")
        if peer is not None:
            pm = float(np.mean([peer[t.id].mase for t in gt]))
            ps = float(np.mean([peer[t.id].smape for t in gt]))
            pt = float(np.mean([peer[t.id].seconds for t in gt]))
            times_p += [peer[t.id].seconds for t in gt]
            models += "; " + "/".join(dict.fromkeys(peer[t.id].model for t in gt))
            if not om <= pm:
                # Origins listed oldest first; each as ours/peer MASE and ours' model.
                folds = ", ".join(
                    f"{ours[t.id].mase:.2f}/{peer[t.id].mase:.2f} {ours[t.id].model}"
                    for t in reversed(gt)
                )
                losses.append(
                    f"{g}: MASE {om:.3f} vs {pm:.3f} ({100 * (om / pm - 1):+.0f}%); "
                    f"per origin, oldest first (ours/peer): {folds}"
                )
        report(
            f"  {g:<15}{n:>5}{gt[0].season:>4}{gt[0].horizon:>5} | {om:9.3f}{pm:7.3f} | "
            f"{o_smape:9.2f}%{ps:6.2f}% | {np.mean(times_o[-len(gt) :]):10.2f}{pt:6.2f} | "
            f"{models}"
        )
    if peer is None:
        return
    report(
        f"  real-series fit time: ours {sum(times_o):.1f} s, peer {sum(times_p):.1f} s "
        f"(ratio {sum(times_o) / sum(times_p):.2f})"
    )
    verdict = "met" if not losses else f"NOT met on {len(losses)}/{len(groups)}"
    report(f"  target (MASE ours <= peer on every real series): {verdict}")
    for loss in losses:
        report(f"    ours behind on {loss}")


# ---------------------------------------------------------------------------- run


def run() -> None:
    started = time.perf_counter()
    peer_python, peer_info = ensure_peer_venv()
    tasks = synthetic_tasks() + real_tasks()
    with tempfile.TemporaryDirectory(prefix="ezdash-forecast-") as tmp:
        workdir = Path(tmp)
        write_inputs(workdir, tasks, synthetic_series(WARMUP_SEED))
        script = workdir / "peer_autoets.py"
        script.write_text(PEER_SCRIPT)
        ours_run = _run_worker(
            [sys.executable, "-m", "bench.bench_forecast", "ours", str(workdir)], workdir, "ours"
        )
        peer_run = None
        if peer_python is not None:
            peer_run = _run_worker([str(peer_python), str(script), str(workdir)], workdir, "peer")
    report(
        f"Forecast {SERIES} synthetic hourly series x {LENGTH} points, hold-out {HORIZON} "
        f"(7 days), MASE at season {SEASON}; one process per side, run in turn, "
        "OPENBLAS/OMP/MKL/NUMBA threads = 1 on both"
    )
    report("  ours: Forecaster(train, horizon=168).fit() (3-fold backtest) + .forecast(168)")
    if peer_python is None:
        report(f"  peer: UNAVAILABLE - {peer_info}; project side only")
    else:
        report(f"  peer: statsforecast {peer_info} AutoETS(season_length=24) fit + predict(168)")
    for label, worker in (("ours", ours_run), ("peer", peer_run)):
        if worker is None:
            continue
        for key, value in worker["results"].items():
            if value.get("error"):
                report(f"  {label} failed on {key}: {value['error']}")
    ours = _scores(tasks, ours_run)
    peer = _scores(tasks, peer_run)
    report_synthetic(
        tasks,
        ours,
        peer,
        (
            None if ours_run is None else ours_run["meta"],
            None if peer_run is None else peer_run["meta"],
        ),
    )
    report_full(tasks, ours, peer)
    report_real(tasks, ours, peer)
    report(f"  whole forecast benchmark: {time.perf_counter() - started:.0f} s wall")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "ours":
        ours_worker(Path(sys.argv[2]))
    else:
        run()
