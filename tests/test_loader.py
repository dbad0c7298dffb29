"""The loading layer gives the analytics core the same numbers the metrics API shows,
from Redis or from an exported file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pandas as pd

from analytics.files import read_file, to_file
from ezdash.analysis.loader import RedisSource, load_metric

from .conftest import Api
from .test_metrics_api import ingest, make_events, put_agents


async def test_loader_matches_api_and_round_trips_files(api: Api, tmp_path: Path) -> None:
    await put_agents(api)
    now = await api.services.redis_now_ms()
    # Leave one hour empty so the loader must show the gap (p95 of nothing is NaN)
    # whatever the time of day the random events fall around.
    hour = 3_600_000
    empty = now // hour * hour - 5 * hour
    events = [e for e in make_events(now, n=150, seed=2) if not empty <= e["_ms"] < empty + hour]
    await ingest(api, events)
    svc = api.services
    frame, p = await load_metric(
        svc.metrics,
        svc.tiers,
        metric="cost_usd",
        start_ms=now - 30 * 3_600_000,
        end_ms=now,
        now_ms=now,
        step_ms=3_600_000,
        group_by="agent",
    )
    api_costs = (
        await api.get(
            f"/api/metrics/costs?from={(now - 30 * 3_600_000) // 1000}"
            f"&to={now // 1000}&step=1h&group_by=agent"
        )
    ).json
    assert list(frame.columns) == [s["group"]["agent"] for s in api_costs["series"]]
    for series in api_costs["series"]:
        assert np.allclose(
            frame[series["group"]["agent"]].to_numpy(), series["values"]["cost_usd"], atol=1e-9
        )
    assert isinstance(frame.index, pd.DatetimeIndex)
    assert str(frame.index.tz) == "UTC" and frame.index.freq == pd.Timedelta(hours=1)
    assert frame.index[0] == pd.Timestamp(p.start_ms, unit="ms", tz="UTC")

    p95, _ = await load_metric(
        svc.metrics,
        svc.tiers,
        metric="latency_p95_ms",
        start_ms=now - 30 * 3_600_000,
        end_ms=now,
        now_ms=now,
        step_ms=3_600_000,
    )
    assert list(p95.columns) == ["all"] and p95["all"].max() > 0
    assert np.isnan(p95["all"].loc[pd.Timestamp(empty, unit="ms", tz="UTC")])

    for name in ("cost.csv", "cost.parquet"):
        back = read_file(to_file(frame, tmp_path / name))
        pd.testing.assert_frame_equal(
            back, frame, check_freq=False, check_names=False, check_dtype=False
        )

    source = RedisSource(svc.settings.redis_url or "")
    via_sync = await asyncio.to_thread(source.load, "requests", start="now-30h", group_by="model")
    perf = (await api.get("/api/metrics/performance?from=now-30h&group_by=model")).json
    assert int(via_sync.to_numpy().sum()) == perf["totals"]["requests"] > 0
    assert sorted(via_sync.columns) == ["claude-sonnet-4", "gpt-4o", "mystery-1"]
