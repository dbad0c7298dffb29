"""Exported loads as files: the tidy long form (ts, group, value) in CSV or Parquet.

What the analyst page's export writes and what a notebook reads to work offline,
without Redis or the server's packages (``ezdash.analysis.loader`` loads from Redis).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """A loaded frame in the long form (ts, group, value) that :func:`read_file` reads."""
    return (
        frame.rename_axis(index="ts", columns="group")
        .reset_index()
        .melt(id_vars="ts", var_name="group", value_name="value")
    )


def to_file(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a loaded frame in the tidy long form (ts, group, value): CSV, or Parquet
    when the name ends in .parquet."""
    path = Path(path)
    tidy_frame = tidy(frame)
    if path.suffix == ".parquet":
        tidy_frame.to_parquet(path, index=False)
    else:
        tidy_frame.to_csv(path, index=False)
    return path


def read_file(path: str | Path) -> pd.DataFrame:
    """Read a file written by :func:`to_file` back into the wide, UTC-indexed frame."""
    path = Path(path)
    long = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    missing = {"ts", "group", "value"} - set(long.columns)
    if missing:
        raise ValueError(f"{path}: expected columns ts, group, value (missing {sorted(missing)})")
    long["ts"] = pd.to_datetime(long["ts"], utc=True)
    long["group"] = long["group"].astype(str)
    frame = long.pivot_table(
        index="ts", columns="group", values="value", aggfunc="sum", dropna=False
    ).sort_index()
    frame.columns.name = "group"
    return frame


__all__ = ["read_file", "tidy", "to_file"]
