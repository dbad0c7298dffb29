"""Request and response shapes.  Requests are validated with these models; the
OpenAPI document is generated from them, so the two cannot drift apart."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from ..keys import AGENT_STATUSES, COMMAND_ACTIONS, COMMAND_STATUSES, TASK_STATUSES
from ..metrics.events import JsonInt, UsageEvent
from ..security.apikeys import AGENT_GLOB, GRANTED_QUEUE
from ..store.agents import Transport
from ..store.logs import ALIASES, LEVELS
from ..timeutil import RELATIVE_TIME, UNIX_TIME

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
    priority: JsonInt = Field(0, ge=0, le=9, description="0 (normal) to 9 (most urgent).")
    max_attempts: JsonInt = Field(3, ge=1, le=100)


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
    transport: Transport = Field(
        description="How it reaches the fleet: Redis itself, or the agent gateway"
    )


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
    status: Literal["ready", "not-ready"]
    reason: Literal["redis", "draining"] | None = Field(
        None, description="Why this instance should get no traffic now."
    )


class Live(BaseModel):
    status: Literal["ok"]


class AgentKeyBinding(Strict):
    """What an agent key may act as."""

    ids: str = Field(pattern=AGENT_GLOB, description="Agent ids, a glob such as 'ci-*'.")
    queues: list[Annotated[str, Field(pattern=GRANTED_QUEUE)]] = Field(
        min_length=1, max_length=64, description="Queues it may take from; ['*'] for all."
    )


_AGENT_KEY_RULE: dict[str, Any] = {
    "if": {"properties": {"scopes": {"contains": {"const": "agent"}}}, "required": ["scopes"]},
    "then": {
        "properties": {"scopes": {"maxItems": 1}, "agent": {"type": "object"}},
        "required": ["agent"],
    },
    "else": {"properties": {"agent": {"type": "null"}}},
}


class KeyCreate(Strict):
    """Body of POST /api/auth/keys.  An agent key has the scope ``agent`` alone and a
    binding (``agent``); no other key has a binding."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_AGENT_KEY_RULE)

    name: str = Field(min_length=1, max_length=128)
    scopes: list[Literal["read", "write", "control", "admin", "agent"]] = Field(
        min_length=1, max_length=5
    )
    agent: AgentKeyBinding | None = Field(None, validate_default=True)

    @field_validator("scopes")
    @classmethod
    def _agent_alone(cls, v: list[str]) -> list[str]:
        if "agent" in v and len(v) != 1:
            raise PydanticCustomError(
                "agent_alone", "an agent key has the scope 'agent' and no other"
            )
        return v

    @field_validator("agent")
    @classmethod
    def _bound(cls, v: AgentKeyBinding | None, info: ValidationInfo) -> AgentKeyBinding | None:
        scopes = info.data.get("scopes")
        if scopes is None:
            return v  # refused already
        if "agent" in scopes and v is None:
            raise PydanticCustomError(
                "agent_binding", "an agent key needs a binding: {ids, queues}"
            )
        if "agent" not in scopes and v is not None:
            raise PydanticCustomError("agent_binding", "only a key with the scope 'agent' has one")
        return v


class ApiKey(BaseModel):
    id: str
    name: str
    scopes: list[str]
    created_at: Time
    last_used_at: Time | None
    revoked_at: Time | None
    created_by: str | None
    agent: AgentKeyBinding | None = None


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


ALERT_KINDS = ("error_rate", "latency_p95", "agent_unresponsive", "queue_age", "cost_burn")


class Webhook(Strict):
    """A rule's webhook as PUT. Everything GET answered may be sent back as it was:
    ``signed`` is accepted and ignored, and a webhook without ``secret`` keeps the one
    it had when the rule id and URL are unchanged."""

    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2048)
    secret: str | None = Field(
        None,
        min_length=16,
        max_length=256,
        description="Signs each POST (HMAC-SHA256); never shown again after PUT.",
        json_schema_extra={"writeOnly": True},
    )
    signed: bool | None = Field(
        None,
        description="What GET shows; ignored here: only a secret signs deliveries.",
        json_schema_extra={"readOnly": True},
    )


class WebhookView(BaseModel):
    """A rule's webhook as GET shows it: never the secret, only whether there is one."""

    model_config = ConfigDict(extra="forbid")

    url: str
    signed: bool = Field(description="Deliveries carry X-EzDash-Signature (a secret is set).")


class AlertFilters(Strict):
    agent: str | None = Field(None, min_length=1, max_length=128)
    model: str | None = Field(None, min_length=1, max_length=200)
    kind: str | None = Field(None, min_length=1, max_length=128)
    queue: str | None = Field(None, pattern=QUEUE_PATTERN)


MINUTES_WINDOW = r"(0*([1-9][0-9]{0,2}|1[0-3][0-9]{2}|14[0-3][0-9]|1440))m"
HOURS_WINDOW = r"(0*([1-9]|1[0-9]|2[0-4]))h"
RULE_WINDOW = rf"^({MINUTES_WINDOW}|{HOURS_WINDOW})$"
"""Whole minutes or hours from 1m to 24h (a pattern, so the document states it)."""


class AlertRuleFields(Strict):
    """Every field of a rule but its webhook, which is shown otherwise than it is PUT."""

    id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    name: str = Field("", max_length=200)
    kind: Literal["error_rate", "latency_p95", "agent_unresponsive", "queue_age", "cost_burn"]
    threshold: float | None = None
    window: str = Field(
        "5m",
        pattern=RULE_WINDOW,
        description="error_rate, latency_p95: whole minutes or hours, 1m to 24h",
    )
    filters: AlertFilters = Field(default_factory=AlertFilters)
    min_requests: JsonInt = Field(10, ge=1, le=1_000_000, description="error_rate only")
    enabled: bool = True


class AlertRule(AlertRuleFields):
    """One rule. ``threshold`` means: error_rate a fraction (0-1] of requests;
    latency_p95 milliseconds; queue_age seconds of the oldest waiting task;
    cost_burn the interval level in percent (default 95) that spend over the window
    must exceed; agent_unresponsive takes none. Each kind is its own model below, so
    what each accepts is stated in the document, not only checked."""

    webhook: Webhook | None = None

    def stored(self) -> dict[str, Any]:
        """What is kept of the rule: ``signed`` is never stored, it is derived from
        the secret whenever the rule is shown."""
        return self.model_dump(mode="json", exclude={"webhook": {"signed"}})


class ErrorRateRule(AlertRule):
    kind: Literal["error_rate"]
    threshold: float = Field(gt=0, le=1, description="Fraction of requests that failed")


class LatencyRule(AlertRule):
    kind: Literal["latency_p95"]
    threshold: float = Field(gt=0, le=3_600_000, description="p95 latency, milliseconds")


class UnresponsiveRule(AlertRule):
    kind: Literal["agent_unresponsive"]
    threshold: None = Field(None, description="Takes none")


class QueueAgeRule(AlertRule):
    kind: Literal["queue_age"]
    threshold: float = Field(
        gt=0, le=30 * 86_400, description="Age of the oldest waiting task, seconds"
    )


class CostBurnRule(AlertRule):
    kind: Literal["cost_burn"]
    threshold: float | None = Field(
        None, ge=50, lt=100, description="Interval level in percent, default 95"
    )
    window: str = Field("1h", pattern=f"^{HOURS_WINDOW}$", description="Whole hours, 1h to 24h")


UNION_TAGS = frozenset(ALERT_KINDS)
"""Tags of the tagged unions in request bodies (see base.field_path)."""
AnyRule = Annotated[
    ErrorRateRule | LatencyRule | UnresponsiveRule | QueueAgeRule | CostBurnRule,
    Field(discriminator="kind"),
]


class AlertRuleView(AlertRuleFields):
    """One rule as GET shows it (its fields as in AlertRule)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    webhook: WebhookView | None


class AlertRulesAnswer(BaseModel):
    """The alert rules, as GET answers them and as PUT may take them back."""

    model_config = ConfigDict(extra="forbid")

    rules: list[AlertRuleView]


class AlertRules(Strict):
    """Body of PUT /api/alerts/rules: the whole set, replacing the previous one."""

    rules: list[AnyRule] = Field(max_length=200)

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: list[AlertRule]) -> list[AlertRule]:
        ids = [r.id for r in rules]
        if len(ids) != len(set(ids)):
            raise ValueError("rule ids must be unique")
        return rules


class Delivery(BaseModel):
    event: Literal["fired", "resolved"]
    attempts: int
    status: int | None
    error: str | None
    at: Time


class AlertState(BaseModel):
    """An alert as its events carry it (``alert.fired``/``alert.resolved``)."""

    id: str
    rule_id: str
    rule_name: str
    kind: str
    subject: str = Field(description="What fired: 'fleet', an agent id or a queue name")
    status: Literal["firing", "resolved"]
    value: float | None
    threshold: float | None
    message: str
    fired_at: Time
    resolved_at: Time | None


class Alert(AlertState):
    """An alert as the API answers it: with its webhook deliveries."""

    deliveries: list[Delivery]


class AlertsAnswer(BaseModel):
    active: list[Alert]
    recent: list[Alert]


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
    """One entry for POST /api/ingest/logs (validated by ezdash.store.logs.validate;
    this model only describes it, field for field)."""

    model_config = ConfigDict(extra="forbid")

    ts: float | str | None = Field(
        None,
        description="Unix seconds (or milliseconds, from 1e11), or a time as in queries "
        "(RFC 3339 with a zone, now-5m); default now; at most 5 minutes ahead",
        json_schema_extra={
            "anyOf": [
                {"type": "number", "minimum": 0},
                {
                    "type": "string",
                    "anyOf": [
                        {"format": "date-time"},
                        {"pattern": UNIX_TIME},
                        {"pattern": RELATIVE_TIME},
                    ],
                },
                {"type": "null"},
            ]
        },
    )
    agent_id: str = Field(min_length=1, max_length=128)
    task_id: str | None = Field(None, min_length=1, max_length=128)
    level: str = Field("info", json_schema_extra={"enum": [*LEVELS, *ALIASES]})
    message: str = Field(min_length=1, max_length=8192)
    fields: dict[str, Any] | None = Field(None, description="At most 16 KiB as JSON")


# -- the agent gateway (/api/agent/v1) ---------------------------------------------------

AGENT_FIELD = Field(
    "",
    pattern=r"^[A-Za-z0-9._:-]{1,128}$",
    description="Stamped from the path when absent; another agent's id refuses the batch.",
)


class GatewayUsageEvent(UsageEvent):
    """A usage event as an agent sends it to the gateway: ``agent_id`` may be left out."""

    agent_id: str = AGENT_FIELD


class GatewayLogEntry(LogEntryIn):
    """A log entry as an agent sends it to the gateway: ``agent_id`` may be left out."""

    agent_id: str = AGENT_FIELD


QueueName = Annotated[str, Field(pattern=QUEUE_PATTERN)]


class AgentRegister(Strict):
    """Body of PUT /api/agent/v1/agents/{id}."""

    name: str = Field("", max_length=128, description="Shown name; default the id")
    kind: str = Field("agent", pattern=r"^[A-Za-z0-9._:-]{1,64}$")
    model: str | None = Field(None, min_length=1, max_length=200)
    host: str = Field("", max_length=255, description="Default the client address")
    version: str = Field("", max_length=64)
    queues: list[QueueName] = Field(["default"], min_length=1, max_length=64)
    tags: dict[str, Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict, max_length=32
    )
    concurrency: JsonInt = Field(1, ge=1, le=64)


class HeldTask(Strict):
    task_id: str = Field(min_length=1, max_length=64)
    token: str = Field(min_length=1, max_length=1024)


class AgentHeartbeat(Strict):
    """Body of POST /api/agent/v1/agents/{id}/heartbeat."""

    status: Literal["idle", "busy", "error", "restarting", "stopping", "stopped"] | None = None
    current_task: str | None = Field(None, min_length=1, max_length=64)
    tasks: list[HeldTask] = Field(
        default_factory=list, max_length=64, description="Leases to renew with this beat"
    )


class TakeRequest(Strict):
    queues: list[QueueName] = Field(min_length=1, max_length=64)
    wait_s: float = Field(20.0, ge=0, le=30, description="How long to wait for a task")


class LeaseRenew(Strict):
    token: str = Field(min_length=1, max_length=1024)


class FinishError(Strict):
    type: str = Field("Error", min_length=1, max_length=200)
    message: str = Field("", max_length=2000)
    permanent: bool = Field(False, description="Do not retry: the task fails for good")


class TaskFinish(Strict):
    token: str = Field(min_length=1, max_length=1024)
    status: Literal["succeeded", "failed"]
    result: Any = None
    error: FinishError | None = None


class CommandReport(Strict):
    status: Literal["acknowledged", "completed", "failed"]
    error: str | None = Field(None, max_length=2000)


class GatewaySettings(BaseModel):
    heartbeat_interval_s: float
    visibility_timeout_s: float


class AgentRegistered(BaseModel):
    agent: Agent
    settings: GatewaySettings


class HeartbeatAnswer(BaseModel):
    commands: list[Command] = Field(description="Its commands not yet completed, oldest first")
    lost: list[str] = Field(description="Tasks named in 'tasks' whose lease was lost")


class LeaseInfo(BaseModel):
    token: str
    expires_at: Time


class TakenTask(Task):
    attempt: int
    lease: LeaseInfo


class TaskTaken(BaseModel):
    task: TakenTask


class LeaseAnswer(BaseModel):
    expires_at: Time


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


class LeaseLost(Problem):
    """409 of the gateway's lease and finish: the attempt is no longer the caller's."""

    task_status: str = Field(description="What the task is now (gone: deleted).")


class CommandConflict(Problem):
    """409 of a command report: the command is no longer in a state that allows it."""

    command_status: str = Field(description="The status the command has.")


SCHEMAS: tuple[type[BaseModel], ...] = (
    Live,
    AgentRegistered,
    HeartbeatAnswer,
    TaskTaken,
    LeaseAnswer,
    AlertRule,
    AlertRulesAnswer,
    Alert,
    AlertsAnswer,
    LogEntry,
    LogPage,
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
    LeaseLost,
    CommandConflict,
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


INPUTS: tuple[type[BaseModel], ...] = (
    TaskCreate,
    KeyCreate,
    AlertRules,
    LogEntryIn,
    UsageEvent,
    GatewayUsageEvent,
    GatewayLogEntry,
    AgentRegister,
    AgentHeartbeat,
    TakeRequest,
    LeaseRenew,
    TaskFinish,
    CommandReport,
)
"""Request bodies, documented as they are validated (``SCHEMAS`` as they are sent)."""
