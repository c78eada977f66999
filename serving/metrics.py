"""Request count and latency, in TF Serving's metric names, as Prometheus text.

The names and labels follow tensorflow_model_server's
(`:tensorflow:serving:request_count`, `:tensorflow:serving:request_latency`),
so that the same dashboards read either server.
"""

from __future__ import annotations

import bisect
import collections
import threading

# Upper bounds in microseconds, as TF Serving's request_latency histogram.
BUCKETS_US = (250, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000, 500_000, 1_000_000,
              5_000_000)


class Metrics:
    """Thread-safe counters and latency histograms per model, API and status."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._buckets: dict[tuple[str, str], list[int]] = {}
        self._sums: collections.Counter[tuple[str, str]] = collections.Counter()

    def record(self, model: str, api: str, status: str, latency_us: float) -> None:
        with self._lock:
            self._counts[(model, api, status)] += 1
            key = (model, api)
            buckets = self._buckets.setdefault(key, [0] * (len(BUCKETS_US) + 1))
            buckets[bisect.bisect_left(BUCKETS_US, latency_us)] += 1
            self._sums[key] += latency_us

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def summary(self) -> str:
        """One line per model and API: requests, errors, mean latency."""
        with self._lock:
            lines = []
            for (model, api), buckets in sorted(self._buckets.items()):
                n = sum(buckets)
                errors = sum(c for (m, a, s), c in self._counts.items()
                             if m == model and a == api and s != "OK")
                lines.append(f"{model or '-'} {api}: {n} requests, {errors} errors, "
                             f"mean {self._sums[(model, api)] / max(n, 1) / 1000:.2f} ms")
            return "\n".join(lines) or "no requests"

    def prometheus(self) -> str:
        with self._lock:
            out = ["# TYPE :tensorflow:serving:request_count counter"]
            for (model, api, status), count in sorted(self._counts.items()):
                out.append(f':tensorflow:serving:request_count{{model_name="{model}",'
                           f'API="{api}",status="{status}"}} {count}')
            out.append("# TYPE :tensorflow:serving:request_latency histogram")
            for (model, api), buckets in sorted(self._buckets.items()):
                labels = f'model_name="{model}",API="{api}",entrypoint="GRPC"'
                cumulative = 0
                for bound, count in zip((*BUCKETS_US, "+Inf"), buckets):
                    cumulative += count
                    out.append(f':tensorflow:serving:request_latency_bucket{{{labels},le="{bound}"}}'
                               f" {cumulative}")
                out.append(f":tensorflow:serving:request_latency_sum{{{labels}}} "
                           f"{self._sums[(model, api)]:.0f}")
                out.append(f":tensorflow:serving:request_latency_count{{{labels}}} {cumulative}")
            return "\n".join(out) + "\n"
