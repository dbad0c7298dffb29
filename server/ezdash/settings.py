"""The one settings object: environment (``EZ_*``, ``REDIS_URL``) overridden by CLI flags.

Every knob of the service is a field here so that the README, the CLI and the
code cannot disagree.  Durations accept seconds (``30``) or suffixed strings
(``30s``, ``5m``, ``1h``, ``7d``) and a malformed value stops start-up with a
message naming the variable, rather than surfacing later as odd behaviour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, BeforeValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .timeutil import parse_duration


def _duration(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError("expected seconds or a duration such as 30s, 5m, 1h")


Duration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]


class Settings(BaseSettings):
    """Configuration of the server, the embedded Redis and the demo fleet."""

    model_config = SettingsConfigDict(
        env_prefix="EZ_", extra="forbid", validate_default=True, frozen=True
    )

    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "EZ_REDIS_URL", "redis_url"),
        description="Redis to use; unset means launch the embedded redis-server.",
    )
    host: str = Field("127.0.0.1", description="Interface the API listens on.")
    port: int = Field(8888, ge=0, le=65535, description="API port (0 picks a free one).")
    data_dir: Path = Field(Path(".data"), description="Embedded Redis data (AOF) directory.")
    demo_agents: int = Field(12, ge=0, le=10_000, description="Simulated agents; 0 disables.")
    redis_prefix: str = Field("ez", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    redis_max_connections: int = Field(64, ge=4, le=10_000)

    heartbeat_interval: Duration = 5.0
    heartbeat_timeout: Duration = 30.0
    visibility_timeout: Duration = 60.0
    command_ttl: Duration = 60.0
    maintenance_interval: Duration = 1.0
    task_retention: Duration = 7 * 86400.0
    idempotency_ttl: Duration = 86400.0
    events_maxlen: int = Field(100_000, ge=1000)

    max_body_bytes: int = Field(1 << 20, ge=1024)
    max_payload_bytes: int = Field(64 << 10, ge=1024)
    shutdown_grace: Duration = 10.0
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, with non-None CLI overrides on top."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)
