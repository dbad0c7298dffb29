"""Notebooks are stored without outputs and executed here, against real rollups."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import REPO, Api
from .test_analytics_endpoints import hourly_events

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_notebooks_have_no_outputs() -> None:
    assert NOTEBOOKS
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path.name


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
async def test_notebook_runs(
    api: Api, path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    now = await api.services.redis_now_ms()
    events = hourly_events(now, 24 * 10, growth=0.02)
    for i in range(0, len(events), 2000):
        assert (await api.post("/api/ingest/usage", json=events[i : i + 2000])).status == 202
    monkeypatch.setenv("REDIS_URL", api.services.settings.redis_url or "")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    await client.async_execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    text = "".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        for o in c.get("outputs", [])
    )
    assert "projected" in text and "cost_by_model.csv" in text
    assert os.environ["REDIS_URL"]
