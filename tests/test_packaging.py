"""The project's own files describe one environment: pyproject.toml and environment.yml
agree, the console command exists, and the Makefile/CI wiring is what the README says."""

from __future__ import annotations

import re
import tomllib

from .conftest import REPO


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower().replace("_", "-")


def _environment_pip() -> list[str]:
    lines = (REPO / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    return [line.strip()[2:] for line in lines[start + 1 :] if line.strip().startswith("- ")]


def test_environment_yml_matches_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_name(r): r for r in project["dependencies"]}
    pip = [r for r in _environment_pip() if not r.startswith("-e")]
    assert {_name(r): r for r in pip} == declared
    assert "-e .[dev]" in _environment_pip()
    env_text = (REPO / "environment.yml").read_text()
    assert re.search(r"^\s+- python>=3\.11$", env_text, re.M)
    assert project["requires-python"] == ">=3.11"
    assert re.search(r"^\s+- redis-server", env_text, re.M)


def test_console_command_and_ci_wiring() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["ezdash"] == "ezdash.cli:main"
    assert "make test" in (REPO / ".ci" / "run").read_text()
    makefile = (REPO / "Makefile").read_text()
    for target in ("run:", "test:", "bench:"):
        assert re.search(rf"^{target}", makefile, re.M), target
