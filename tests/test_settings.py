"""Configuration comes from one object; bad values fail loudly, naming the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from ezdash.cli import main, parser, settings_from
from ezdash.settings import Settings
from ezdash.timeutil import format_ms, parse_duration, parse_time


def test_environment_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://example:6380/1")
    monkeypatch.setenv("EZ_PORT", "9000")
    monkeypatch.setenv("EZ_HEARTBEAT_TIMEOUT", "2m")
    monkeypatch.setenv("EZ_DEMO_AGENTS", "3")
    s = settings_from(parser().parse_args(["serve", "--port", "9100", "--log-level", "debug"]))
    assert s.redis_url == "redis://example:6380/1"
    assert s.port == 9100  # the flag wins over EZ_PORT
    assert s.heartbeat_timeout == 120.0
    assert s.demo_agents == 3 and s.log_level == "DEBUG"
    assert s.host == "127.0.0.1"  # safe default


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("EZ_PORT", "eighty"),
        ("EZ_PORT", "70000"),
        ("EZ_HEARTBEAT_TIMEOUT", "soon"),
        ("EZ_DEMO_AGENTS", "-1"),
        ("EZ_REDIS_PREFIX", "has space"),
        ("EZ_LOG_LEVEL", "LOUD"),
    ],
)
def test_bad_values_fail_loudly(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError):
        Settings()


def test_cli_reports_bad_configuration(tmp_path: Path) -> None:
    env = {"EZ_PORT": "eighty", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "ezdash.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "EZ_PORT" in proc.stderr and "Traceback" not in proc.stderr


def test_demo_needs_a_redis(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert main(["demo", "--agents", "1"]) == 2
    assert "REDIS_URL" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30.0), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("7d", 604800.0), ("250ms", 0.25)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_times() -> None:
    now = 1795860000000
    assert parse_time("now", now=now) == now
    assert parse_time("now-24h", now=now) == now - 86_400_000
    assert parse_time("1795860000", now=now) == now
    assert parse_time("2026-11-28T09:15:02.123Z") == 1795857302123
    assert parse_time("2026-11-28T10:15:02.123+01:00") == 1795857302123
    assert format_ms(1795857302123) == "2026-11-28T09:15:02.123Z"
    for bad in ("2026-11-28T09:15:02", "yesterday", "now-", "now+1h", ""):
        with pytest.raises(ValueError, match="time"):
            parse_time(bad, now=now)
