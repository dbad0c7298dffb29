"""What the alert engine needs of the server instance it runs in.

A protocol rather than the server's ``Services`` itself: that container lives in
the HTTP layer, which imports this engine, so the engine names only the parts it
uses (``Services`` has them all).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from ..analysis.service import Analytics
from ..leader import Instance
from ..metrics.query import Reader
from ..metrics.rollup import Tier
from ..store.agents import AgentStore
from ..store.tasks import TaskStore
from .store import AlertStore


class AlertContext(Instance, Protocol):
    alerts: AlertStore
    agents: AgentStore
    tasks: TaskStore
    tiers: tuple[Tier, ...]
    metrics: Reader
    analytics: Analytics
    deliveries: set[asyncio.Task[None]]
    """Webhook deliveries under way; the server cancels them when it closes."""
