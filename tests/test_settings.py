"""Configuration comes from one object; bad values fail loudly, naming the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from ezdash.agent import Agent, AgentConfig
from ezdash.cli import main, parser, settings_from
from ezdash.invariants import (
    ALERT_INTERVAL,
    ANALYST_PORT,
    HEARTBEAT_TIMEOUT,
    LEASE,
    SERVER_RULES,
    Rule,
)
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


def serve(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``ezdash serve`` in its own process, with only ``env`` set."""
    return subprocess.run(
        [sys.executable, "-m", "ezdash.cli", "serve"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def test_cli_reports_bad_configuration(tmp_path: Path) -> None:
    proc = serve({"EZ_PORT": "eighty"}, tmp_path)
    assert proc.returncode == 2
    assert "EZ_PORT" in proc.stderr and "Traceback" not in proc.stderr


# Each rule between settings: values that break it (and the words naming them), and
# the nearest values that keep it.
RULE_CASES = [
    (
        LEASE,
        {"EZ_VISIBILITY_TIMEOUT": "10s", "EZ_HEARTBEAT_INTERVAL": "5s"},
        "EZ_VISIBILITY_TIMEOUT (10s) must exceed twice EZ_HEARTBEAT_INTERVAL (5s)",
        {"EZ_VISIBILITY_TIMEOUT": "10001ms", "EZ_HEARTBEAT_INTERVAL": "5s"},
    ),
    (
        HEARTBEAT_TIMEOUT,
        {"EZ_HEARTBEAT_TIMEOUT": "5s", "EZ_HEARTBEAT_INTERVAL": "5s"},
        "EZ_HEARTBEAT_TIMEOUT (5s) must exceed EZ_HEARTBEAT_INTERVAL (5s)",
        {"EZ_HEARTBEAT_TIMEOUT": "5001ms", "EZ_HEARTBEAT_INTERVAL": "5s"},
    ),
    (
        ALERT_INTERVAL,
        {"EZ_ALERT_INTERVAL": "61s"},
        "EZ_ALERT_INTERVAL (61s) must not exceed the shortest alert window (1m)",
        {"EZ_ALERT_INTERVAL": "1m"},
    ),
    (
        ANALYST_PORT,
        {"EZ_PORT": "8889", "EZ_ANALYST_PORT": "8889"},
        "EZ_ANALYST_PORT (8889) must differ from EZ_PORT (8889)",
        {"EZ_PORT": "8889", "EZ_ANALYST_PORT": "8889", "EZ_ANALYST": "false"},
    ),
]


def test_every_rule_is_tested() -> None:
    assert [case[0] for case in RULE_CASES] == list(SERVER_RULES)


@pytest.mark.parametrize(
    ("rule", "bad", "words", "good"), RULE_CASES, ids=[c[2].split()[0] for c in RULE_CASES]
)
def test_settings_are_checked_as_a_whole(
    monkeypatch: pytest.MonkeyPatch,
    rule: Rule,
    bad: dict[str, str],
    words: str,
    good: dict[str, str],
) -> None:
    for var, value in bad.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    (error,) = caught.value.errors()
    assert error["loc"] == ()  # the combination is wrong, not one value
    assert str(error["ctx"]["error"]).startswith(words)
    for var, value in good.items():
        monkeypatch.setenv(var, value)
    Settings()  # just inside the rule


def test_every_broken_rule_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    for _, bad, _, _ in RULE_CASES:
        for var, value in bad.items():
            monkeypatch.setenv(var, value)
    monkeypatch.setenv("EZ_HEARTBEAT_INTERVAL", "5s")
    with pytest.raises(ValidationError) as caught:
        Settings()
    lines = str(caught.value.errors()[0]["ctx"]["error"]).splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "EZ_VISIBILITY_TIMEOUT",
        "EZ_HEARTBEAT_TIMEOUT",
        "EZ_ALERT_INTERVAL",
        "EZ_ANALYST_PORT",
    ]


def test_agents_obey_the_same_rule() -> None:
    with pytest.raises(ValidationError) as server:
        Settings(visibility_timeout=10, heartbeat_interval=5)
    with pytest.raises(ValueError, match="twice") as agent:
        AgentConfig(visibility_timeout=10, heartbeat_interval=5)
    said = str(agent.value)
    assert said.startswith("visibility_timeout (10s) must exceed twice heartbeat_interval (5s)")
    # the same sentence, only the names differ
    assert str(server.value.errors()[0]["ctx"]["error"]).replace("EZ_", "").lower() == said.lower()
    config = AgentConfig(visibility_timeout=11, heartbeat_interval=5)
    config.visibility_timeout = 10  # changed after it was checked: the agent checks again
    with pytest.raises(ValueError, match="twice"):
        Agent("a1", _never, redis_url="redis://127.0.0.1:9", config=config)


async def _never(ctx: object) -> None:
    raise AssertionError("never runs")


def test_cli_refuses_a_bad_combination_before_starting_anything(tmp_path: Path) -> None:
    proc = serve({"EZ_VISIBILITY_TIMEOUT": "5s"}, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "ezdash: configuration: EZ_VISIBILITY_TIMEOUT (5s) must exceed twice "
        "EZ_HEARTBEAT_INTERVAL (5s): a running task's lease is renewed at each heartbeat, "
        "and one late heartbeat must not hand the task to another agent"
    ]
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []  # no data directory: Redis never started


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
