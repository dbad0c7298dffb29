"""Request and response shapes.  Requests are validated with these models; the
OpenAPI document is generated from them, so the two cannot drift apart."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..keys import AGENT_STATUSES, COMMAND_ACTIONS, COMMAND_STATUSES, TASK_STATUSES

QUEUE_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
TYPE_PATTERN = r"^[A-Za-z0-9._:/-]{1,128}$"

TaskStatus = Literal[TASK_STATUSES]  # type: ignore[valid-type]
AgentStatus = Literal[AGENT_STATUSES]  # type: ignore[valid-type]
CommandStatus = Literal[COMMAND_STATUSES]  # type: ignore[valid-type]
CommandAction = Literal[COMMAND_ACTIONS]  # type: ignore[valid-type]
Time = str


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TaskCreate(Strict):
    """Body of POST /api/tasks."""

    type: str = Field(pattern=TYPE_PATTERN, description="What the task is, e.g. 'summarize'.")
    payload: dict[str, Any] = Field(default_factory=dict, description="At most 64 KiB as JSON.")
    queue: str = Field("default", pattern=QUEUE_PATTERN)
    priority: int = Field(0, ge=0, le=9, description="0 (normal) to 9 (most urgent).")
    max_attempts: int = Field(3, ge=1, le=100)


class TaskError(BaseModel):
    type: str
    message: str


class Attempt(BaseModel):
    attempt: int
    agent_id: str | None
    started_at: Time | None
    finished_at: Time | None
    status: str = Field(description="running, succeeded, failed, abandoned, lost or cancelled")
    error: TaskError | None = None


class Task(BaseModel):
    id: str
    type: str
    queue: str
    status: TaskStatus
    payload: dict[str, Any]
    priority: int
    agent_id: str | None
    attempts: int
    max_attempts: int
    created_at: Time
    started_at: Time | None
    finished_at: Time | None
    error: TaskError | None
    result: Any = None


class TaskWithHistory(Task):
    history: list[Attempt]


class Agent(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    name: str
    kind: str
    status: AgentStatus
    model: str | None
    host: str | None
    version: str | None
    current_task: str | None
    started_at: Time | None
    last_heartbeat: Time | None
    heartbeat_age_s: float | None
    restarts: int
    tags: dict[str, str]
    queues: list[str] = Field(default_factory=list)


class Command(BaseModel):
    id: str
    agent_id: str
    action: CommandAction
    force: bool
    status: CommandStatus
    created_at: Time
    acknowledged_at: Time | None
    completed_at: Time | None
    expires_at: Time | None
    requested_by: str | None
    error: str | None


class AgentStats(BaseModel):
    tasks_succeeded_1h: int
    tasks_failed_1h: int
    tokens_24h: int
    cost_usd_24h: float
    latency_p95_ms_1h: float | None


class AgentError(BaseModel):
    ts: Time
    task_id: str
    type: str
    message: str


class AgentDetail(Agent):
    stats: AgentStats
    recent_errors: list[AgentError]
    pending_commands: list[Command]


class Queue(BaseModel):
    name: str
    depth: int
    running: int
    oldest_age_s: float
    throughput_per_min: float
    arrivals_per_min: float
    drain_eta_s: float | None = Field(description="0 when empty; null when not draining")


class TaskEnvelope(BaseModel):
    task: Task


class CommandEnvelope(BaseModel):
    command: Command


class DryRun(BaseModel):
    dry_run: Literal[True]
    would: str = Field(description="What the request would have done.")
    target: dict[str, Any]


class TaskPage(BaseModel):
    items: list[Task]
    next_cursor: str | None


class AgentPage(BaseModel):
    items: list[Agent]
    next_cursor: str | None


class CommandPage(BaseModel):
    items: list[Command]
    next_cursor: str | None


class RedisHealth(BaseModel):
    ok: bool
    latency_ms: float | None
    error: str | None = None


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    redis: RedisHealth
    version: str


class Ready(BaseModel):
    status: Literal["ready", "draining"]


class KeyCreate(Strict):
    """Body of POST /api/auth/keys."""

    name: str = Field(min_length=1, max_length=128)
    scopes: list[Literal["read", "write", "control", "admin"]] = Field(min_length=1, max_length=4)


class ApiKey(BaseModel):
    id: str
    name: str
    scopes: list[str]
    created_at: Time
    last_used_at: Time | None
    revoked_at: Time | None
    created_by: str | None


class ApiKeyCreated(ApiKey):
    key: str = Field(description="The key itself; shown this once, stored only as a hash.")


class KeyPage(BaseModel):
    items: list[ApiKey]
    next_cursor: str | None


class Token(BaseModel):
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int


class AuditEntry(BaseModel):
    id: str
    ts: Time
    principal: str | None
    action: str | None
    target: str | None
    client: str | None
    status: int
    result: Literal["ok", "denied", "failed"] | None
    detail: str | None


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_cursor: str | None


class LogEntry(BaseModel):
    id: str = Field(description="Stream id 'ms-seq': monotonic, the resume point")
    ts: Time
    agent_id: str
    task_id: str | None
    level: Literal["debug", "info", "warning", "error", "critical"]
    message: str
    fields: dict[str, Any]


class LogPage(BaseModel):
    items: list[LogEntry]
    next_cursor: str | None


class LogEntryIn(BaseModel):
    """One entry for POST /api/ingest/logs (validated by ezdash.store.logs.validate)."""

    ts: float | str | None = Field(None, description="Unix seconds or RFC 3339; default now")
    agent_id: str = Field(min_length=1, max_length=128)
    task_id: str | None = Field(None, min_length=1, max_length=128)
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    message: str = Field(min_length=1, max_length=8192)
    fields: dict[str, Any] = Field(default_factory=dict)


class MetricsStats(BaseModel):
    exec_ms: float
    buckets: int
    tier: str


class MetricsSeries(BaseModel):
    group: dict[str, str] = Field(description="{} without group_by, else {dimension: value}")
    values: dict[str, list[float | int | None]]


class MetricsAnswer(BaseModel):
    """Columnar metrics: one timestamp list, one value list per series and metric."""

    model_config = ConfigDict(populate_by_name=True)

    from_: Time = Field(alias="from")
    to: Time
    step: str
    group_by: str
    t: list[Time]
    series: list[MetricsSeries]
    totals: dict[str, float | int | None]
    as_of: Time | None
    stats: MetricsStats
    price_table: dict[str, str] | None = None
    by_type: list[dict[str, str | int]] | None = None


class PriceModel(BaseModel):
    provider: str
    model: str
    effective_from: str
    input_per_mtok: float
    output_per_mtok: float
    cache_read_per_mtok: float
    cache_write_per_mtok: float


class PriceTableDoc(BaseModel):
    version: str
    source_date: str
    models: list[PriceModel]


class Accepted(BaseModel):
    accepted: int


class Backtest(BaseModel):
    mase: float | None
    smape: float | None
    origins: int


class ForecastAnswer(BaseModel):
    model_config = ConfigDict(extra="allow")  # lower_80, upper_80, ... per level

    metric: str
    step: str
    horizon: int
    model: str
    t: list[Time]
    mean: list[float | None]
    backtest: Backtest
    history: dict[str, list[Any]]
    as_of: Time | None
    stats: dict[str, Any]


class TrendItem(BaseModel):
    group: dict[str, str]
    slope_per_day: float | None
    pct_change: float | None
    direction: Literal["up", "down", "flat"]
    p_value: float | None
    seasonality_strength: float | None
    n: int


class TrendsAnswer(BaseModel):
    metric: str
    window: str
    group_by: str
    items: list[TrendItem]
    as_of: Time | None
    stats: dict[str, Any]


class AnomalyItem(BaseModel):
    ts: Time
    value: float | None
    expected: float | None
    score: float | None
    direction: Literal["up", "down"]
    kind: Literal["spike", "level_shift"]


class AnomaliesAnswer(BaseModel):
    metric: str
    window: str
    items: list[AnomalyItem]
    as_of: Time | None
    stats: dict[str, Any]


class PredictionsAnswer(BaseModel):
    month_end_cost: dict[str, Any]
    budget: dict[str, Any] | None
    queues: list[dict[str, Any]]
    as_of: Time | None
    stats: dict[str, Any]


class SummaryAnswer(BaseModel):
    agents: dict[str, int]
    queues: list[dict[str, Any]]
    tasks_24h: dict[str, int]
    tokens: dict[str, int]
    cost_usd: dict[str, Any]
    last_hour: dict[str, Any]
    alerts: list[Any]
    as_of: Time | None
    stats: dict[str, Any]


class HistoryAnswer(MetricsAnswer):
    metric: str


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


SCHEMAS: tuple[type[BaseModel], ...] = (
    LogEntry,
    LogPage,
    LogEntryIn,
    TaskCreate,
    Task,
    TaskWithHistory,
    Agent,
    AgentDetail,
    Command,
    Queue,
    TaskEnvelope,
    CommandEnvelope,
    DryRun,
    TaskPage,
    AgentPage,
    CommandPage,
    Health,
    Ready,
    Problem,
    KeyCreate,
    ApiKey,
    ApiKeyCreated,
    KeyPage,
    Token,
    AuditEntry,
    AuditPage,
    MetricsAnswer,
    PriceTableDoc,
    Accepted,
    ForecastAnswer,
    TrendsAnswer,
    AnomaliesAnswer,
    PredictionsAnswer,
    SummaryAnswer,
    HistoryAnswer,
)
