"""This instance's request counters and latency histogram, for ``/metrics``."""

from __future__ import annotations

import math
from collections import Counter

BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STREAMING = frozenset({"/api/logs/stream", "/api/logs/export"})
"""Open as long as the client wants: counted, but kept out of the latency histogram."""


class RequestStats:
    """Counters and a fixed-bucket latency histogram per route, in memory.

    Labels are route patterns, never raw paths, so ids in URLs cannot blow up the
    number of series.
    """

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, str]] = Counter()
        self.buckets: dict[tuple[str, str], list[int]] = {}
        self.sums: dict[tuple[str, str], float] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests[(route, method, str(status))] += 1
        if route in STREAMING:
            return
        key = (route, method)
        counts = self.buckets.setdefault(key, [0] * (len(BUCKETS_S) + 1))
        for i, bound in enumerate(BUCKETS_S):
            if seconds <= bound:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
        self.sums[key] = self.sums.get(key, 0.0) + seconds

    def lines(self) -> list[str]:
        out = [
            "# HELP ezdash_http_requests_total Requests answered by this instance.",
            "# TYPE ezdash_http_requests_total counter",
        ]
        for (route, method, status), n in sorted(self.requests.items()):
            labels = labels_text(route=route, method=method, status=status)
            out.append(f"ezdash_http_requests_total{labels} {n}")
        out += [
            "# HELP ezdash_http_request_duration_seconds Time to answer, by route.",
            "# TYPE ezdash_http_request_duration_seconds histogram",
        ]
        for (route, method), counts in sorted(self.buckets.items()):
            running = 0
            for bound, n in zip((*BUCKETS_S, math.inf), counts, strict=True):
                running += n
                le = "+Inf" if math.isinf(bound) else f"{bound:g}"
                out.append(
                    "ezdash_http_request_duration_seconds_bucket"
                    f"{labels_text(route=route, method=method, le=le)} {running}"
                )
            labels = labels_text(route=route, method=method)
            out.append(
                f"ezdash_http_request_duration_seconds_sum{labels} {self.sums[(route, method)]:.6f}"
            )
            out.append(f"ezdash_http_request_duration_seconds_count{labels} {running}")
        return out


def labels_text(**labels: str) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}"
