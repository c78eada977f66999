"""Request count and latency, in TF Serving's metric names, as Prometheus text.

The names and labels follow tensorflow_model_server's
(`:tensorflow:serving:request_count`, `:tensorflow:serving:request_latency`),
so that the same dashboards read either server. Two counters of ours per model
(`:optfusion:serving:predicted_rows`, `:optfusion:serving:mostly_oov_rows`):
rows answered by a signature with an `oov_fraction` output, and those of them
with most categorical fields out of vocabulary (traffic of another dataset or
schema gets confident constants; this makes it visible). Label values are escaped as
the exposition format requires, and callers record only served model names
(`model=None` for the rest), so that a client cannot inject lines or grow
the page with invented names.
"""

from __future__ import annotations

import bisect
import collections
import threading

from pipeline.features import MOSTLY_OOV_FRACTION

# Upper bounds in microseconds, as TF Serving's request_latency histogram.
BUCKETS_US = (250, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000, 500_000, 1_000_000,
              5_000_000)


def escape_label(value: str) -> str:
    """A label value as the Prometheus text format writes it (backslash, quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Thread-safe counters and latency histograms per model, API, status and entrypoint."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._buckets: dict[tuple[str, str, str], list[int]] = {}
        self._sums: dict[tuple[str, str, str], float] = collections.defaultdict(float)
        self._unserved = 0  # requests naming no served model: counted, never a label
        self._rows: collections.Counter[str] = collections.Counter()
        self._oov_rows: collections.Counter[str] = collections.Counter()

    def record(self, model: str | None, api: str, status: str, latency_us: float,
               entrypoint: str = "GRPC") -> None:
        """Records one request; `model=None` when it named no served model."""
        with self._lock:
            if model is None:
                self._unserved += 1
                return
            self._counts[(model, api, status)] += 1
            key = (model, api, entrypoint)
            buckets = self._buckets.setdefault(key, [0] * (len(BUCKETS_US) + 1))
            buckets[bisect.bisect_left(BUCKETS_US, latency_us)] += 1
            self._sums[key] += latency_us

    def record_rows(self, model: str, rows: int, mostly_oov: int) -> None:
        """Counts `rows` predicted rows of a served model, `mostly_oov` of them foreign."""
        with self._lock:
            self._rows[model] += rows
            self._oov_rows[model] += mostly_oov

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values()) + self._unserved

    def summary(self) -> str:
        """One line per model and API: requests, errors, mean latency."""
        with self._lock:
            lines = []
            for (model, api, entrypoint), buckets in sorted(self._buckets.items()):
                n = sum(buckets)
                errors = sum(c for (m, a, s), c in self._counts.items()
                             if m == model and a == api and s != "OK")
                via = "" if entrypoint == "GRPC" else f" ({entrypoint})"
                lines.append(f"{model} {api}{via}: {n} requests, {errors} errors, "
                             f"mean {self._sums[(model, api, entrypoint)] / max(n, 1) / 1000:.2f} ms")
            for model, rows in sorted(self._rows.items()):
                lines.append(f"{model}: {self._oov_rows[model]} of {rows} predicted rows had more than "
                             f"{MOSTLY_OOV_FRACTION:.0%} of their categorical fields out of vocabulary")
            if self._unserved:
                lines.append(f"{self._unserved} requests named no served model")
            return "\n".join(lines) or "no requests"

    def prometheus(self) -> str:
        with self._lock:
            out = ["# TYPE :tensorflow:serving:request_count counter"]
            for (model, api, status), count in sorted(self._counts.items()):
                out.append(f':tensorflow:serving:request_count{{model_name="{escape_label(model)}",'
                           f'API="{api}",status="{status}"}} {count}')
            out.append("# TYPE :tensorflow:serving:request_latency histogram")
            for (model, api, entrypoint), buckets in sorted(self._buckets.items()):
                labels = f'model_name="{escape_label(model)}",API="{api}",entrypoint="{entrypoint}"'
                cumulative = 0
                for bound, count in zip((*BUCKETS_US, "+Inf"), buckets, strict=True):
                    cumulative += count
                    out.append(f':tensorflow:serving:request_latency_bucket{{{labels},le="{bound}"}}'
                               f" {cumulative}")
                out.append(f":tensorflow:serving:request_latency_sum{{{labels}}} "
                           f"{self._sums[(model, api, entrypoint)]:.0f}")
                out.append(f":tensorflow:serving:request_latency_count{{{labels}}} {cumulative}")
            for name, counts in (("predicted_rows", self._rows), ("mostly_oov_rows", self._oov_rows)):
                out.append(f"# TYPE :optfusion:serving:{name} counter")
                out.extend(f':optfusion:serving:{name}{{model_name="{escape_label(model)}"}} {count}'
                           for model, count in sorted(counts.items()))
            return "\n".join(out) + "\n"
