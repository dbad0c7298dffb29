"""``make bench``: every benchmark, each against its bare baseline in the same run.

python -m bench            run them all and print
python -m bench --record   also append the figures to docs/benchmarks.md
"""

from __future__ import annotations

import argparse

from . import (
    bench_api,
    bench_auth,
    bench_dispatch,
    bench_forecast,
    bench_metrics,
    bench_summary,
    bench_ws,
)
from .common import record


def main() -> None:
    p = argparse.ArgumentParser(prog="bench")
    p.add_argument("--record", action="store_true", help="append results to docs/benchmarks.md")
    p.add_argument(
        "--only",
        choices=["api", "auth", "metrics", "summary", "forecast", "ws", "dispatch"],
        help="run one benchmark",
    )
    args = p.parse_args()
    if args.only in (None, "api"):
        bench_api.run()
    if args.only in (None, "auth"):
        bench_auth.run()
    if args.only in (None, "metrics"):
        bench_metrics.run()
    if args.only in (None, "summary"):
        bench_summary.run()
    if args.only in (None, "ws"):
        bench_ws.run()
    if args.only in (None, "dispatch"):
        bench_dispatch.run()
    if args.only in (None, "forecast"):
        bench_forecast.run()
    if args.record:
        record("make bench")


if __name__ == "__main__":
    main()
