"""Redis ACL users: the server's, with every right, and the direct agents', with only what
they need (README, "Trust model").

An agent on Redis (the Python runtime with ``redis_url=``, the demo fleet) runs the
same Lua scripts as the server, and Redis checks every command a script runs against
the calling user's commands and key patterns (Redis 6 and 7 alike).  So the agent user
is allowed the commands of the agent scripts and of the runtime's own calls, and the
keys those touch; the keys only the server uses (API key records and digests, rate
limits, the audit stream, idempotency answers, alert rules and webhooks, locks, the
secret fingerprint) match none of its patterns, and every command not listed (FLUSHALL,
FLUSHDB, CONFIG, ACL, KEYS, SCAN, DEBUG, SHUTDOWN, SCRIPT FLUSH, MODULE, DEL...) is
refused.

The patterns are derived from ``ezdash.keys``, the one place key names are defined:
every member of ``Keys`` and ``MetricKeys`` is named below as a key agents write, one
they only read, or one only the server reaches, and each pattern is what the member
makes with ``*`` for each argument, so renaming a key renames its pattern.  A new key
must be classified: ``tests/test_redis_acl.py`` fails until it is.  On Redis 7 the keys
agents only read get read-only patterns (``%R~``: an agent cannot add a command to
another agent's command stream); Redis 6.2 has no read-only patterns, so they are
read-write there.

What the agent user does not stop: an agent on Redis can still write any agent's
document, usage, logs and heartbeats, finish or fail any running task (the scripts take
the agent id as an argument), create tasks (the demo fleet's producer does), and
overwrite or corrupt any key it can write.  The agent gateway (HTTP, agent keys) is the
boundary for agents you do not trust; the ACL keeps a direct agent's credentials from
reaching API keys, the audit trail, secrets and alert webhooks, or wiping the store.

The embedded Redis (``ezdash serve`` without ``REDIS_URL``) starts with an aclfile in
its data directory (``users.acl``) instead of ``ACL SETUSER`` calls after it starts:

- the users exist before the first client connects, so there is no moment when the
  ``default`` user is open (it is disabled: a connection without credentials gets
  NOAUTH; it keeps its rights, as Redis 7.0 replays the AOF as that user and checks
  them);
- the file holds only SHA-256 hashes of the passwords and an operator can read it
  (``ACL LIST`` shows the same rules);
- it is written again at every start from the rules here, so an upgrade that adds a
  key brings its pattern; edits to it (or ``ACL SAVE``) are replaced at the next start.

The passwords are generated once into ``passwords.json`` (mode 0600) beside it, so a
restart keeps the credentials every client holds; ``ezdash serve`` writes URLs with
them to ``EZ_DATA_DIR/redis.url`` (server) and ``EZ_DATA_DIR/redis-agent.url`` (agents),
both 0600.  For a Redis of your own, ``ezdash redis-acl`` prints the same users as
``ACL SETUSER`` commands.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import inspect
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from .keys import Keys
from .security.secrets import write_private

SERVER_USER = "ezdash-server"
AGENT_USER = "ezdash-agent"

RedisVersion = tuple[int, int]
"""(major, minor) of the redis-server the rules are for."""

AGENT_WRITES = (
    "agents",
    "agent_ids",
    "heartbeats",
    "agent_errors",
    "agent_counter",
    "task",
    "task_history",
    "tasks",  # the demo fleet's producer creates tasks (task_create)
    "tasks_by_status",
    "tasks_by_queue",
    "tasks_finished",
    "delayed",
    "queues",
    "queue_stream",
    "queue_levels",
    "queue_waiting",
    "queue_running",
    "queue_in",
    "queue_done",
    "command",
    "commands_pending",
    "commands_acked",
    "logs",
    "log_batch",
    "events",
    "metrics.counter",
    "metrics.histogram",
    "metrics.groups",
    "metrics.error_types",
    "metrics.as_of",
    "metrics.raw",
    "metrics.dedupe",
)
"""Keys the agent scripts and the runtime write (``Keys`` members; ``metrics.*`` are
``MetricKeys`` members)."""

AGENT_READS = (
    "agent_commands",  # XREAD of its command stream; the server's command_create adds
    "commands_by_agent",  # the commands pending for it, taken up at start
)
"""Keys agents only read: read-only patterns where Redis has them (7.0+)."""

SERVER_ONLY = (
    "commands",
    "api_key",
    "api_key_digests",
    "api_key_ids",
    "api_keys_revoked",
    "rate_limit",
    "audit",
    "probe",
    "secret_fingerprint",
    "alert_rules",
    "alerts_active",
    "alerts_recent",
    "alert",
    "alert_deliveries",
    "alert_lock",
    "idempotency",
    "maintenance_lock",
)
"""Keys no agent reaches: credentials, the audit trail, alerting, server bookkeeping."""

ARGUMENT_VALUES: dict[tuple[str, str], tuple[str, ...]] = {
    ("agent_counter", "outcome"): ("succeeded", "failed"),  # what task_finish counts
}
"""Arguments with a few known values, spelled out instead of ``*``: the narrower
pattern cannot alias another agent's read-only keys (agent ids may hold ':')."""

AGENT_SCRIPTS = (
    "agent_put",
    "agent_heartbeat",
    "task_take",
    "task_finish",
    "task_lease",
    "task_requeue",
    "task_promote",
    "command_update",
    "logs_append",
    "metrics_apply",
    "task_create",
)
"""The scripts a direct agent (and the demo fleet's producer) runs."""

AGENT_COMMANDS = (
    # the connection and the scripts themselves (redis-py loads a script on NOSCRIPT)
    "ping",
    "select",
    "evalsha",
    "script|load",
    "script|exists",
    "time",
    # the runtime's own calls: blocking reads, command take-up, reclaiming deliveries
    "xread",
    "xrevrange",
    "zrevrange",
    "hmget",
    "smembers",
    "xautoclaim",
    "xack",
    "xdel",
    # what the agent scripts call
    "bitfield",
    "exists",
    "expire",
    "get",
    "set",
    "hexists",
    "hget",
    "hgetall",  # task_take returns the task it started (the gateway answers with it)
    "hincrby",
    "hset",
    "incr",
    "lindex",
    "lpush",
    "lset",
    "ltrim",
    "rpush",
    "sadd",
    "xadd",
    "xclaim",
    "xgroup|create",
    "xpending",
    "xreadgroup",
    "xtrim",
    "zadd",
    "zrangebyscore",
    "zrem",
)
"""Every command the agent user may run; anything else is refused."""

CONNECT_SUBCOMMANDS = ("client|setinfo", "client|maint_notifications")
"""What redis-py sends on connect, ignoring a refusal (``agent_rules`` says when)."""


def key_patterns(keys: Keys, name: str) -> list[str]:
    """The glob pattern(s) of one ``Keys`` (or ``metrics.``) member: each argument
    ``*``, or each of its known values (``ARGUMENT_VALUES``)."""
    owner, _, member = name.rpartition(".")
    value: Any = getattr(keys.metrics if owner == "metrics" else keys, member)
    if isinstance(value, str):
        return [value]
    combos: list[list[str]] = [[]]
    for param in inspect.signature(value).parameters:
        options = ARGUMENT_VALUES.get((member, param), ("*",))
        combos = [[*c, o] for c in combos for o in options]
    return [str(value(*c)) for c in combos]


def _covers(general: str, specific: str) -> bool:
    """Every key ``specific`` matches, ``general`` matches too (patterns whose only
    wildcard is ``*``: each ``*`` of ``specific`` is then absorbed by one of ``general``)."""
    return fnmatch.fnmatchcase(specific, general)


@functools.cache
def agent_key_patterns(prefix: str) -> tuple[tuple[str, bool], ...]:
    """(pattern, read_only) for the agent user, without patterns another one covers."""
    keys = Keys(prefix)
    found: list[tuple[str, bool]] = [
        (p, False) for name in AGENT_WRITES for p in key_patterns(keys, name)
    ]
    found += [(p, True) for name in AGENT_READS for p in key_patterns(keys, name)]
    kept: list[tuple[str, bool]] = []
    for i, (pattern, ro) in enumerate(found):
        covered = any(
            j != i
            and (not other_ro or ro)  # a read-only pattern never covers a writable one
            and _covers(other, pattern)
            and (other != pattern or j < i)
            for j, (other, other_ro) in enumerate(found)
        )
        if not covered:
            kept.append((pattern, ro))
    return tuple(kept)


def agent_matches(prefix: str, key: str) -> bool:
    """Whether the agent user's patterns reach ``key`` at all (the glob Redis applies)."""
    return any(fnmatch.fnmatchcase(key, p) for p, _ in agent_key_patterns(prefix))


def agent_rules(prefix: str, version: RedisVersion) -> list[str]:
    """ACL rules of the agent user, without its password."""
    read_only = version >= (7, 0)
    commands = list(AGENT_COMMANDS)
    # What redis-py sends on connect, its errors ignored: CLIENT SETINFO (names the
    # library, 7.2+) and CLIENT MAINT_NOTIFICATIONS (asks for maintenance push
    # messages).  Redis 6.2 checks the ACL before it finds a subcommand unknown, so it
    # would log every connection as a denial; 7.x refuses a rule naming a subcommand it
    # does not know, and answers "unknown subcommand" before it checks the ACL.
    if version < (7, 0):
        commands += CONNECT_SUBCOMMANDS
    elif version >= (7, 2):
        commands.append("client|setinfo")
    rules = ["resetchannels", "-@all", *(f"+{c}" for c in commands)]
    rules += [("%R~" if ro and read_only else "~") + p for p, ro in agent_key_patterns(prefix)]
    return rules


SERVER_RULES = ("~*", "&*", "+@all")


@dataclass(frozen=True)
class Credentials:
    """The two users' passwords (URL-safe, so they go in a URL as they are)."""

    server: str
    agent: str

    def password(self, user: str) -> str:
        return {SERVER_USER: self.server, AGENT_USER: self.agent}[user]


def load_credentials(directory: Path) -> Credentials:
    """The passwords kept in ``directory/passwords.json``; generated (0600) on first use."""
    path = Path(directory) / "passwords.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    if not stored.get(SERVER_USER) or not stored.get(AGENT_USER):
        stored.setdefault(SERVER_USER, secrets.token_urlsafe(32))
        stored.setdefault(AGENT_USER, secrets.token_urlsafe(32))
        write_private(path, json.dumps(stored, indent=2) + "\n")
    return Credentials(server=stored[SERVER_USER], agent=stored[AGENT_USER])


def _hash(password: str) -> str:
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def user_rules(creds: Credentials, prefix: str, version: RedisVersion) -> Iterator[list[str]]:
    """(user, rules...) of every user, the password as its hash (``#...``)."""
    yield [SERVER_USER, "reset", "on", _hash(creds.server), *SERVER_RULES]
    yield [AGENT_USER, "reset", "on", _hash(creds.agent), *agent_rules(prefix, version)]
    # Disabled, not stripped: Redis replays the AOF as the default user, and 7.0 checks
    # its rights on every replayed MULTI/EXEC (how scripts are written to the AOF):
    # without them, a restart would drop every script's writes.
    yield ["default", "reset", "off", *SERVER_RULES]


def aclfile_text(creds: Credentials, prefix: str, version: RedisVersion) -> str:
    """The aclfile of the embedded Redis (Redis accepts no comments in it: the module
    docstring is its documentation)."""
    return "".join("user " + " ".join(r) + "\n" for r in user_rules(creds, prefix, version))


def setuser_commands(creds: Credentials, prefix: str, version: RedisVersion) -> list[list[str]]:
    """``ACL SETUSER`` commands creating both users on a Redis of your own (the
    ``default`` user is left alone: disable it once nothing uses it)."""
    out = []
    for user, *rules in user_rules(creds, prefix, version):
        if user == "default":
            continue
        rules = [">" + creds.password(user) if r.startswith("#") else r for r in rules]
        out.append(["ACL", "SETUSER", user, *rules])
    return out


def with_credentials(url: str, user: str, password: str) -> str:
    """``url`` logging in as ``user``: ``redis://user:password@host:port/db``."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def without_credentials(url: str) -> str:
    """``url`` with any user and password taken out (for logs and messages)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def parse_version(text: str) -> RedisVersion:
    """``7.0.15`` or ``6.2`` -> (7, 0), (6, 2)."""
    major, minor = [*text.split("."), "0"][:2]
    return int(major), int(minor)


def setup_for_own_redis(
    prefix: str, version: RedisVersion, url: str | None
) -> tuple[list[str], list[str]]:
    """``ezdash redis-acl``: (commands for redis-cli, notes for the operator) creating
    both users with fresh passwords on a Redis of your own.  The notes carry the URLs
    each side connects with, shown this once, like a new API key."""
    creds = Credentials(server=secrets.token_urlsafe(32), agent=secrets.token_urlsafe(32))
    commands = [" ".join(c) for c in setuser_commands(creds, prefix, version)]
    base = without_credentials(url) if url else "redis://HOST:PORT/0"
    notes = [
        f"ACL users for key prefix {prefix!r}, rules for Redis {version[0]}.{version[1]};",
        "run the commands on stdout as an admin: ezdash redis-acl | redis-cli -u ADMIN_URL",
        f"ezdash serve, ezdash analyst, ezdash keys: REDIS_URL="
        f"{with_credentials(base, SERVER_USER, creds.server)}",
        f"direct agents (ezdash demo, Agent(redis_url=...)): "
        f"{with_credentials(base, AGENT_USER, creds.agent)}",
        "the passwords are shown this once. Keep the users across restarts with ACL SAVE "
        "(aclfile) or CONFIG REWRITE; once nothing logs in as 'default': "
        "ACL SETUSER default off (but keep its rights: Redis 7.0 replays the AOF as "
        "that user, and refuses what it may not do)",
    ]
    return commands, notes
