"""The one settings object: environment (``EZ_*``, ``REDIS_URL``) overridden by CLI flags.

Every knob of the service is a field here so that the README, the CLI and the
code cannot disagree.  Durations accept seconds (``30``) or suffixed strings
(``30s``, ``5m``, ``1h``, ``7d``) and a malformed value stops start-up with a
message naming the variable, rather than surfacing later as odd behaviour.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .invariants import SERVER_RULES, problems
from .timeutil import parse_duration


def env_name(field: str) -> str:
    """The environment variable of a settings field: ``heartbeat_interval`` ->
    ``EZ_HEARTBEAT_INTERVAL``."""
    return "EZ_" + field.upper()


def _duration(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError("expected seconds or a duration such as 30s, 5m, 1h")


Duration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]


def _comma_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    raise ValueError("expected a comma-separated list")


def _rate(value: Any) -> str:
    parse_rate(str(value))
    return str(value)


def parse_rate(text: str) -> tuple[int, float]:
    """``600/1m`` -> (600 requests, 60.0 seconds)."""
    count, _, window = text.partition("/")
    if not count.strip().isdigit() or int(count) < 1 or not window:
        raise ValueError(f"not a rate: {text!r} (use e.g. 600/1m)")
    seconds = parse_duration(window if window[0].isdigit() else "1" + window)
    if seconds <= 0:
        raise ValueError(f"not a rate: {text!r}")
    return int(count), seconds


def _tiers(value: Any) -> str:
    from .metrics.rollup import parse_tiers

    parse_tiers(str(value))
    return str(value)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(value: Any) -> tuple[Network, ...]:
    """``EZ_TRUST_PROXY``: the proxies whose ``X-Forwarded-For`` is believed."""
    if isinstance(value, tuple) and all(isinstance(v, Network) for v in value):
        return value
    items = _comma_list(value)
    if [i.lower() for i in items] in ([], ["false"], ["no"], ["0"]):
        return ()
    if [i.lower() for i in items] in (["true"], ["yes"], ["1"]):
        raise ValueError(
            "name the proxies whose X-Forwarded-For is trusted, as addresses or "
            "networks (e.g. 127.0.0.1,10.0.0.0/8); 'true' would trust any client"
        )
    out = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an address or network") from None
    return tuple(out)


TierSpec = Annotated[str, BeforeValidator(_tiers)]
Networks = Annotated[tuple[Network, ...], NoDecode, BeforeValidator(_networks)]
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_comma_list)]
RateSpec = Annotated[str, BeforeValidator(_rate)]


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
    agent_max_wait: Duration = Field(
        30.0,
        gt=0,
        le=30,
        description="Longest a gateway take waits (an agent's wait_s above it is cut to it).",
    )
    command_ttl: Duration = 60.0
    maintenance_interval: Duration = 1.0
    task_retention: Duration = 7 * 86400.0
    agent_retention: Duration = 7 * 86400.0
    idempotency_ttl: Duration = 86400.0
    events_maxlen: int = Field(100_000, ge=1000)

    # -- security (see README "Security") --------------------------------------------
    auth: bool = Field(True, description="Require credentials; off only on loopback.")
    admin_key: SecretStr | None = Field(None, description="An admin API key (>= 32 chars).")
    key_secret: SecretStr | None = Field(
        None, description="HMAC key for API key hashes; generated in EZ_DATA_DIR if unset."
    )
    jwt_secret: SecretStr | None = Field(
        None, description="HS256 secret; generated in EZ_DATA_DIR if unset."
    )
    jwt_algorithms: CommaList = Field(default_factory=lambda: ["HS256"])
    jwt_public_key: Path | None = Field(None, description="PEM public key for RS256/ES256.")
    jwt_jwks: Path | None = Field(None, description="JWKS file for RS256/ES256.")
    jwt_issuer: str = "ezdash"
    jwt_audience: str | None = None
    jwt_ttl: Duration = 900.0
    jwt_leeway: float = Field(30.0, ge=0, le=300)
    rate_limit: bool = True
    rate_read: RateSpec = "1200/1m"
    rate_write: RateSpec = "300/1m"
    rate_control: RateSpec = "60/1m"
    rate_public: RateSpec = "600/1m"
    rate_agent: RateSpec = Field(
        "12000/1m",
        description="Agent gateway calls per agent key (heartbeats, takes, batches of its agents).",
    )
    cors_origins: CommaList = Field(default_factory=list)
    trust_proxy: Networks = Field(
        default=(), description="Proxies (addresses, networks) whose X-Forwarded-For is read."
    )
    audit_maxlen: int = Field(1_000_000, ge=1000)

    # -- metrics ----------------------------------------------------------------------
    rollup_tiers: TierSpec = "1m:48h,1h:90d,1d:730d"
    prices_file: Path | None = Field(None, description="Price table overriding the shipped one.")
    ingest_max_events: int = Field(2000, ge=1, le=100_000)
    backfill_days: int = Field(21, ge=0, le=730, description="History made on a first run.")

    # -- logs -------------------------------------------------------------------------
    log_maxlen: int = Field(1_000_000, ge=1000, description="Approximate cap of the log stream.")
    log_retention: Duration = 7 * 86400.0
    log_keepalive: Duration = 15.0
    alert_interval: Duration = 15.0
    alert_retention: Duration = 7 * 86400.0
    webhook_attempts: int = Field(5, ge=1, le=20, description="Tries per webhook delivery.")
    webhook_backoff: Duration = 1.0
    webhook_timeout: Duration = 5.0
    ws_queue: int = Field(1000, ge=10, le=1_000_000, description="Frames a slow client may lag.")

    # -- analytics --------------------------------------------------------------------
    analytics_workers: int = Field(2, ge=1, le=64, description="Worker processes for fits.")
    monthly_budget_usd: float | None = Field(None, ge=0, description="For budget run-out.")
    summary_cache: Duration = 2.0
    analyst: bool = Field(True, description="Start the Panel analyst page with `ezdash serve`.")
    analyst_port: int = Field(8889, ge=0, le=65535, description="Analyst page port.")
    analyst_workers: int = Field(1, ge=1, le=16, description="Fit processes of the analyst page.")

    # -- the demo fleet over the agent gateway ----------------------------------------
    demo_http_share: float = Field(
        0.25, ge=0, le=1, description="Share of serve's demo fleet on its own agent gateway."
    )
    demo_url: str | None = Field(
        None, pattern=r"^https?://\S+$", description="`ezdash demo`: the server of its HTTP agents."
    )
    demo_key: SecretStr | None = Field(
        None, description="`ezdash demo`: the agent key of its HTTP agents (demo-http-*)."
    )

    max_body_bytes: int = Field(1 << 20, ge=1024)
    max_header_bytes: int = Field(64 << 10, ge=4096, le=1 << 20, description="431 above it.")
    http_idle_timeout: Duration = 20.0
    http_body_timeout: Duration = 60.0
    max_payload_bytes: int = Field(64 << 10, ge=1024)
    shutdown_grace: Duration = 10.0
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")

    @model_validator(mode="after")
    def _safe(self) -> Settings:
        if not self.auth and self.host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("EZ_AUTH=false is only allowed when listening on loopback")
        if self.admin_key is not None and len(self.admin_key.get_secret_value()) < 32:
            raise ValueError("EZ_ADMIN_KEY must be at least 32 characters")
        for alg in self.jwt_algorithms:
            if alg not in (
                "HS256",
                "HS384",
                "HS512",
                "RS256",
                "RS384",
                "RS512",
                "ES256",
                "ES384",
                "PS256",
            ):
                raise ValueError(f"EZ_JWT_ALGORITHMS: unsupported algorithm {alg!r}")
        asym = [a for a in self.jwt_algorithms if not a.startswith("HS")]
        if asym and self.jwt_public_key is None and self.jwt_jwks is None:
            raise ValueError(
                "EZ_JWT_ALGORITHMS names RS/ES algorithms: set EZ_JWT_PUBLIC_KEY or EZ_JWT_JWKS"
            )
        if "*" in self.cors_origins and len(self.cors_origins) > 1:
            raise ValueError("EZ_CORS_ORIGINS: '*' cannot be combined with explicit origins")
        found = problems(self, SERVER_RULES, env_name)  # one line each (see ezdash.invariants)
        if found:
            raise ValueError("\n".join(found))
        return self


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, with non-None CLI overrides on top."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)
