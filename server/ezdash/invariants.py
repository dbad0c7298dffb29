"""Rules between settings: values fine on their own and wrong together.

Each rule is defined once, here, as a predicate over the fields it relates and the
sentence that says what breaks. ``Settings`` checks every server rule before anything
starts (naming ``EZ_*`` variables); the agent runtime's ``AgentConfig`` checks the
rules about agents (naming its own fields). So ``ezdash serve`` refuses at start-up
what would otherwise kill its demo fleet later, in the same words an agent author
gets from ``AgentConfig``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .timeutil import format_duration

ALERT_WINDOW_MIN_S = 60
"""The shortest window an alert rule may have (``api.models.AlertRule``)."""


@dataclass(frozen=True)
class Rule:
    """``holds`` takes the related fields as keyword arguments (its parameter names
    are the field names); ``says`` is the problem, with ``{field}`` shown as the
    caller names it, followed by its value (in seconds when ``durations``)."""

    holds: Callable[..., bool]
    says: str
    durations: bool = True

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(inspect.signature(self.holds).parameters)

    def problem(self, values: object, name: Callable[[str], str]) -> str | None:
        got = {f: getattr(values, f) for f in self.fields}
        if self.holds(**got):
            return None
        shown = {f: format_duration(v) if self.durations else str(v) for f, v in got.items()}
        return self.says.format(**{f: f"{name(f)} ({shown[f]})" for f in got})


LEASE = Rule(
    lambda visibility_timeout, heartbeat_interval: visibility_timeout > 2 * heartbeat_interval,
    "{visibility_timeout} must exceed twice {heartbeat_interval}: a running task's lease "
    "is renewed at each heartbeat, and one late heartbeat must not hand the task to "
    "another agent",
)
HEARTBEAT_TIMEOUT = Rule(
    lambda heartbeat_timeout, heartbeat_interval: heartbeat_timeout > heartbeat_interval,
    "{heartbeat_timeout} must exceed {heartbeat_interval}: a heartbeat ages by a whole "
    "interval before the next one, and a healthy agent must not look unresponsive "
    "between two heartbeats",
)
ALERT_INTERVAL = Rule(
    lambda alert_interval: alert_interval <= ALERT_WINDOW_MIN_S,
    "{alert_interval} must not exceed the shortest alert window "
    f"({format_duration(ALERT_WINDOW_MIN_S)}): each evaluation looks back over a rule's "
    "window, so evaluating less often leaves time that no evaluation sees",
)
ANALYST_PORT = Rule(
    lambda analyst, analyst_port, port: not analyst or port == 0 or analyst_port != port,
    "{analyst_port} must differ from {port}: ezdash serve starts the analyst page next to "
    "the API, on the same host",
    durations=False,
)

AGENT_RULES = (LEASE,)
SERVER_RULES = (LEASE, HEARTBEAT_TIMEOUT, ALERT_INTERVAL, ANALYST_PORT)


def problems(values: object, rules: Iterable[Rule], name: Callable[[str], str] = str) -> list[str]:
    """What ``values`` break, one sentence per rule, in the rules' order."""
    return [p for rule in rules if (p := rule.problem(values, name)) is not None]
