"""Pure building blocks of the metrics feature: usage-event validation, model
pricing in exact integers, and mergeable latency histograms.  Nothing here does
I/O beyond reading the price table, so ingest and query code can share it."""

from .events import FUTURE_SKEW_MS, UsageEvent, validate_batch
from .histogram import bucket_of, from_redis, merge, quantile, quantiles, value_of
from .pricing import (
    Price,
    PriceTable,
    PriceTableError,
    TokenParts,
    cost,
    cost_nanos,
    cost_pico,
    load_price_table,
    nanos_to_usd,
    parse_price_table,
    usd_to_nanos,
)

__all__ = [
    "FUTURE_SKEW_MS",
    "Price",
    "PriceTable",
    "PriceTableError",
    "TokenParts",
    "UsageEvent",
    "bucket_of",
    "cost",
    "cost_nanos",
    "cost_pico",
    "from_redis",
    "load_price_table",
    "merge",
    "nanos_to_usd",
    "parse_price_table",
    "quantile",
    "quantiles",
    "usd_to_nanos",
    "validate_batch",
    "value_of",
]
