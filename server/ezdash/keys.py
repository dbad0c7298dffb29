"""Every Redis key name of the project, and nothing else.

All keys of one deployment share the hash tag ``{<prefix>}``.  The task
scripts read a queue's streams, a task's hash, its history, the status
indexes and the events stream in one atomic step, and an agent blocks on all
its queues with one XREAD: under Redis Cluster those keys must live in one
slot, so they do.  ``docs/agent-protocol.md`` is the human version of this
module; keep the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "workers"
"""Consumer group every queue stream is read through."""

PRIORITIES = range(0, 10)
"""Priority levels; each level of a queue is its own stream, read highest first."""

TASK_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "dead")
FINISHED_STATUSES = ("succeeded", "failed", "cancelled", "dead")
AGENT_STATUSES = (
    "starting",
    "idle",
    "busy",
    "error",
    "restarting",
    "stopping",
    "stopped",
    "unresponsive",
)
COMMAND_STATUSES = ("pending", "acknowledged", "completed", "failed", "expired")
COMMAND_ACTIONS = ("restart", "stop")


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names for one deployment prefix (``EZ_REDIS_PREFIX``, default ``ez``)."""

    prefix: str = "ez"

    @property
    def base(self) -> str:
        """``{ez}``: the hash tag every key starts with; Lua scripts derive keys from it."""
        return "{" + self.prefix + "}"

    # -- agents -------------------------------------------------------------
    @property
    def agents(self) -> str:
        """Hash: agent id -> JSON document written by the agent itself."""
        return f"{self.base}:agents"

    @property
    def agent_ids(self) -> str:
        """Sorted set (all scores 0): agent ids in lexical order, for paging."""
        return f"{self.base}:agents:ids"

    @property
    def heartbeats(self) -> str:
        """Sorted set: agent id -> last heartbeat (unix ms)."""
        return f"{self.base}:agents:hb"

    def agent_errors(self, agent_id: str) -> str:
        """List (capped at 10): newest task errors of one agent, JSON."""
        return f"{self.base}:agent:{agent_id}:errors"

    def agent_commands(self, agent_id: str) -> str:
        """Stream: control commands addressed to one agent."""
        return f"{self.base}:agent:{agent_id}:cmd"

    def agent_counter(self, agent_id: str, outcome: str, minute: int) -> str:
        """String counter with TTL: tasks of one agent finished in one minute."""
        return f"{self.base}:agent:{agent_id}:{outcome}:{minute}"

    # -- tasks --------------------------------------------------------------
    def task(self, task_id: str) -> str:
        """Hash: one task's fields (payload and result as raw JSON strings)."""
        return f"{self.base}:task:{task_id}"

    def task_history(self, task_id: str) -> str:
        """List of JSON attempt records, one per attempt, oldest first."""
        return f"{self.base}:task:{task_id}:hist"

    @property
    def tasks(self) -> str:
        """Sorted set: every task id scored by creation time (ms)."""
        return f"{self.base}:tasks"

    def tasks_by_status(self, status: str) -> str:
        """Sorted set: task ids in one status, scored by creation time."""
        return f"{self.base}:tasks:s:{status}"

    def tasks_by_queue(self, queue: str) -> str:
        """Sorted set: task ids of one queue, scored by creation time."""
        return f"{self.base}:tasks:q:{queue}"

    @property
    def tasks_finished(self) -> str:
        """Sorted set: finished task ids scored by finish time, for retention."""
        return f"{self.base}:tasks:finished"

    @property
    def delayed(self) -> str:
        """Sorted set: task ids waiting for a retry back-off, scored by due time."""
        return f"{self.base}:tasks:delayed"

    # -- queues -------------------------------------------------------------
    @property
    def queues(self) -> str:
        """Set of known queue names."""
        return f"{self.base}:queues"

    def queue_stream(self, queue: str, priority: int) -> str:
        """Stream of task ids for one queue and priority level."""
        return f"{self.base}:q:{queue}:p{priority}"

    def queue_levels(self, queue: str) -> str:
        """Set of priority levels that have a stream in this queue."""
        return f"{self.base}:q:{queue}:levels"

    def queue_waiting(self, queue: str) -> str:
        """Sorted set: queued task ids scored by when they were (re)queued."""
        return f"{self.base}:q:{queue}:waiting"

    def queue_running(self, queue: str) -> str:
        """Sorted set: running task ids scored by start time."""
        return f"{self.base}:q:{queue}:running"

    def queue_in(self, queue: str, minute: int) -> str:
        """String counter with TTL: tasks created in one queue in one minute."""
        return f"{self.base}:q:{queue}:in:{minute}"

    def queue_done(self, queue: str, minute: int) -> str:
        """String counter with TTL: tasks of one queue finished in one minute."""
        return f"{self.base}:q:{queue}:done:{minute}"

    # -- control ------------------------------------------------------------
    def command(self, command_id: str) -> str:
        """Hash: one control command."""
        return f"{self.base}:cmd:{command_id}"

    @property
    def commands(self) -> str:
        """Sorted set: every command id scored by creation time."""
        return f"{self.base}:cmds"

    def commands_by_agent(self, agent_id: str) -> str:
        """Sorted set: command ids of one agent scored by creation time."""
        return f"{self.base}:cmds:a:{agent_id}"

    @property
    def commands_pending(self) -> str:
        """Sorted set: pending command ids scored by their acknowledgement deadline."""
        return f"{self.base}:cmds:pending"

    # -- security -----------------------------------------------------------
    def api_key(self, key_id: str) -> str:
        """Hash: one API key's record (name, scopes, digest, times); never the key."""
        return f"{self.base}:apikey:{key_id}"

    @property
    def api_key_digests(self) -> str:
        """Hash: HMAC digest of a live key -> key id.  Revocation removes the entry."""
        return f"{self.base}:apikeys:digests"

    @property
    def api_key_ids(self) -> str:
        """Sorted set: key ids scored by creation time."""
        return f"{self.base}:apikeys"

    @property
    def api_keys_revoked(self) -> str:
        """Set of revoked key ids (JWTs minted from them are refused too)."""
        return f"{self.base}:apikeys:revoked"

    def rate_limit(self, principal: str, budget: str) -> str:
        """String with TTL: GCRA theoretical arrival time of one principal's budget."""
        return f"{self.base}:rl:{principal}:{budget}"

    @property
    def audit(self) -> str:
        """Stream: who did what, to what, from where, with what result (capped)."""
        return f"{self.base}:audit"

    @property
    def probe(self) -> str:
        """String with a 10 s TTL: written only while Redis seems away, to learn when it
        takes writes again (``store.availability``)."""
        return f"{self.base}:probe"

    @property
    def secret_fingerprint(self) -> str:
        """String: fingerprint of the key-hash secret, so instances cannot disagree."""
        return f"{self.base}:secret-fingerprint"

    @property
    def commands_acked(self) -> str:
        """Sorted set: acknowledged, unfinished command ids scored by acknowledgement."""
        return f"{self.base}:cmds:acked"

    # -- metrics ------------------------------------------------------------
    @property
    def metrics(self) -> MetricKeys:
        """Rollup counters, histograms, group sets and the raw usage stream
        (defined with their layout in ``ezdash.metrics.rollup``)."""
        return MetricKeys(self.base)

    # -- logs ---------------------------------------------------------------
    @property
    def logs(self) -> str:
        """Stream: log entries, the entry id being the log id; one field ``d`` holds
        the entry as JSON (one value per entry: one reply to parse per read)."""
        return f"{self.base}:logs"

    def log_batch(self, batch_id: str) -> str:
        """String with TTL: fingerprint of an ingested log batch (Idempotency-Key)."""
        return f"{self.base}:logs:batch:{batch_id}"

    # -- alerts -------------------------------------------------------------
    @property
    def alert_rules(self) -> str:
        """String: the alert rules as one JSON document (replaced whole by PUT)."""
        return f"{self.base}:alerts:rules"

    @property
    def alerts_active(self) -> str:
        """Hash: "<rule id>|<subject>" -> id of the alert firing for it."""
        return f"{self.base}:alerts:active"

    @property
    def alerts_recent(self) -> str:
        """Sorted set: alert id -> time it fired (unix ms); trimmed by retention."""
        return f"{self.base}:alerts:recent"

    def alert(self, alert_id: str) -> str:
        """String with TTL: one alert as JSON (its deliveries are in ``alert_deliveries``)."""
        return f"{self.base}:alert:{alert_id}"

    def alert_deliveries(self, alert_id: str) -> str:
        """List with TTL: outcome of each webhook delivery of one alert, as JSON."""
        return f"{self.base}:alert:{alert_id}:deliveries"

    @property
    def alert_lock(self) -> str:
        """String lock so one server instance at a time evaluates the rules."""
        return f"{self.base}:alerts:lock"

    # -- shared -------------------------------------------------------------
    @property
    def events(self) -> str:
        """Stream: every agent, task and command change, in order (capped)."""
        return f"{self.base}:events"

    def idempotency(self, principal: str, scope: str, key: str) -> str:
        """String (24 h TTL): the first answer to a request with an Idempotency-Key."""
        return f"{self.base}:idem:{principal}:{scope}:{key}"

    @property
    def maintenance_lock(self) -> str:
        """String lock so one server instance at a time runs a sweep."""
        return f"{self.base}:lock:maintenance"


def seg(text: str) -> str:
    """A free-form key segment (agent ids, model names, error types may hold ':')
    with ':' and '%' percent-encoded, so no two groups or metrics share a key."""
    return text.replace("%", "%25").replace(":", "%3A")


class MetricKeys:
    """Key names of the metrics rollups (layout explained in ``ezdash.metrics.rollup``).

    Counters are strings of big-endian int64 per bucket (BITFIELD), histograms are
    hashes, group sets name the groups seen in a chunk; all expire with their chunk."""

    def __init__(self, base: str) -> None:
        self.base = base

    def counter(self, tier: str, dim: str, group: str, metric: str, chunk: int) -> str:
        return f"{self.base}:m:{tier}:{dim}:{seg(group)}:{seg(metric)}:{chunk}"

    def histogram(self, tier: str, dim: str, group: str, name: str, chunk: int) -> str:
        return f"{self.base}:m:{tier}:{dim}:{seg(group)}:h:{name}:{chunk}"

    def groups(self, tier: str, dim: str, chunk: int) -> str:
        return f"{self.base}:m:{tier}:{dim}:groups:{chunk}"

    def error_types(self, tier: str, chunk: int) -> str:
        return f"{self.base}:m:{tier}:errtypes:{chunk}"

    @property
    def as_of(self) -> str:
        return f"{self.base}:m:as_of"

    @property
    def raw(self) -> str:
        return f"{self.base}:usage"

    def dedupe(self, batch_id: str) -> str:
        return f"{self.base}:m:batch:{batch_id}"
