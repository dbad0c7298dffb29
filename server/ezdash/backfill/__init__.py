"""Realistic usage history written straight into the metrics rollups (``ezdash backfill``).

Why it exists: a fresh dashboard is empty, and a cost or latency chart is only
convincing with weeks of history behind it: daily and weekly cycles, growth,
incidents, a price change.  Thirty days of a hundred agents are about four million
LLM calls; sending them through ``POST /api/ingest/usage`` or a ``UsageRecorder``
would take many minutes and fill the raw usage stream (capped at a million) with
made-up events.  So nothing here goes through the raw stream:

1. Calls are simulated with numpy one UTC day at a time (:class:`Simulation`):
   per agent a kind (the demo fleet's kinds, queues and models), a request rate
   with daily and weekly cycles and gradual growth, log-normal tokens and latency
   per model, a baseline mix of error types, and a few incidents (error-rate and
   latency spikes of one provider or model).
2. They are summed per (minute, agent, model) cell and each cell is priced with
   ``PriceTable.price(provider, model, ts)`` (one rounding per cell, half-even, as
   ingest rounds once per event).  A day never crosses 00:00 UTC, the moment price
   entries take effect, so one lookup per model and day is exact and any price
   change inside the range applies from its date on.  The shipped table's real
   changes (gpt-4o, o3) are in the past, so a demo range simply shows today's
   prices; pass a table with a dated entry inside the range to see a change.
3. Each tier is written from the cells summed to its own step, and only for
   buckets inside its retention (``Aggregator.ops`` drops only whole expired
   chunks, and a 1m chunk is a day: minutes up to 72 h old would otherwise land in
   the 1m tier).  Batches go through ``write_batch`` and the ``metrics_apply``
   script like any ingest, but their records are built by :class:`CellAggregator`
   with array operations: ``Aggregator.ops`` loops over cells, dimensions and
   metrics in Python, which alone took longer than Redis.  The tests prove the two
   write the same records (the plain ``Aggregator`` filled through ``add_bulk``).
4. Batches split the per-agent dimensions by groups of agents and the shared ones
   by slices of time, so each key gets about one record per day, and three script
   calls are in flight while the next is encoded (with hiredis, for a URL).

On this machine 30 days of 100 agents (4.3M calls) take about 70 s, nearly all of
it Redis running the script: some 15M histogram fields, one HINCRBY each.

The history is additive: running it twice doubles it, and live usage recorded
meanwhile adds on top.  Backfilled agents are history only (nothing registers
them); their kind and queue are rollup labels, so ``group_by=kind`` works.

The package follows those stages, each module depending only on the ones before it:
``fleet`` (the models, kinds, incidents and agents: what the history shows),
``simulation`` (1: the randomness, a day of calls), ``cells`` (2: the vectorised
sums and the label table), ``writer`` (3 and 4: the records, the batches, the
hiredis client), ``progress`` (the bar), ``run`` (the entry point tying them
together).  It sits outside ``ezdash.metrics`` because it simulates the demo fleet
(``ezdash.agent.demo``), and ``ezdash.agent`` records usage through
``ezdash.metrics``: inside metrics it made the two packages import each other.  It
uses both; neither uses it.
"""

from .progress import Progress, ProgressBar
from .run import backfill

__all__ = ["Progress", "ProgressBar", "backfill"]
