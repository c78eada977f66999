"""TF Serving's request metrics, written as its Prometheus page writes them.

Names, labels and bucket bounds are tensorflow_model_server's
(tensorflow_serving/servables/tensorflow/util.cc), so that dashboards and
alerts made for it read this server unchanged:

    :tensorflow:serving:request_count{model_name,status}            counter
    :tensorflow:serving:request_example_count_total{model}          counter
    :tensorflow:serving:request_example_counts{model}               histogram, 1, 2, 4, ... 16384
    :tensorflow:serving:request_latency{model_name,API,entrypoint}  histogram, us, 10 * 1.8^i
    :tensorflow:serving:runtime_latency{model_name,API,runtime}     histogram, us, 10 * 1.8^i

The page follows tensorflow_serving/util/prometheus_exporter.cc: a metric's
name is its TF name with every character outside [a-zA-Z0-9_] turned into
':' ('/tensorflow/serving/request_count' -> ':tensorflow:serving:request_count'),
families come sorted by name, each with its `# TYPE` line even before its
first sample, and doubles (bounds, sums) print as absl::StrCat prints them
(6 significant digits). Buckets count as tensorflow's Histogram::Add does
(upper_bound: a value equal to a bound counts in the next bucket).

Who records what follows TF Serving too (model_servers/prediction_service_impl.cc,
http_server.cc, servables/tensorflow/predict_util.cc, classifier.cc): see
`Metrics`. One deliberate difference: only served model names become label
values (`model=None` for the rest, counted in `total()` only), so that a
client cannot grow the page with invented names.

Two counters of ours per model, beside TF Serving's:
`:optfusion:serving:predicted_rows{model_name}` (rows answered by a signature
with an `oov_fraction` output) and `:optfusion:serving:mostly_oov_rows{model_name}`
(those of them with most categorical fields out of vocabulary: traffic of
another dataset or schema gets confident constants; this makes it visible).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable

from pipeline.features import MOSTLY_OOV_FRACTION

# API label values of gRPC requests and of the runtime (TF Serving's literals).
PREDICT = "Predict"
CLASSIFY = "Classify"
GRPC = "GRPC"
REST = "REST"
RUNTIME = "TF1"  # runtime_latency's `runtime` label for a SavedModel session (predict_util.cc)
OK = "OK"


def exponential_buckets(scale: float, growth: float, count: int) -> tuple[float, ...]:
    """monitoring::Buckets::Exponential (tensorflow/core/lib/monitoring/sampler.cc): `count`
    bounds, each the previous one times `growth`; +Inf is added by the histogram."""
    bounds = []
    bound = scale
    for _ in range(count):
        bounds.append(bound)
        bound *= growth
    return tuple(bounds)


LATENCY_BUCKETS_US = exponential_buckets(10, 1.8, 33)  # util.cc: "~20 minutes"
EXAMPLE_COUNT_BUCKETS = exponential_buckets(1, 2, 15)  # util.cc: 1, 2, 4, ... 16 * 1024


def prometheus_name(tf_name: str) -> str:
    """GetPrometheusMetricName (prometheus_exporter.cc)."""
    return "".join(c if c.isascii() and (c.isalnum() or c == "_") else ":" for c in tf_name)


def escape_label(value: str) -> str:
    """A label value as the Prometheus text format writes it (backslash, quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _double(value: float) -> str:
    """A double as absl::StrCat writes it (SixDigitsToBuffer, like %g)."""
    return format(value, ".6g")


class _Family:
    """One metric: a TF name, its label names, and values per label-value tuple."""

    kind = ""

    def __init__(self, tf_name: str, labels: tuple[str, ...]):
        self.name = prometheus_name(tf_name)
        self.labels = labels
        self._lock = threading.Lock()

    def _label_text(self, values: tuple[str, ...]) -> str:
        return ",".join(f'{k}="{escape_label(v)}"' for k, v in zip(self.labels, values, strict=True))

    def lines(self) -> list[str]:
        raise NotImplementedError


class Counter(_Family):
    """A monitoring::Counter: an integer per label-value tuple."""

    kind = "counter"

    def __init__(self, tf_name: str, labels: tuple[str, ...]):
        super().__init__(tf_name, labels)
        self._values: dict[tuple[str, ...], int] = {}

    def increment(self, *values: str, by: int = 1) -> None:
        with self._lock:
            self._values[values] = self._values.get(values, 0) + by

    def values(self) -> dict[tuple[str, ...], int]:
        with self._lock:
            return dict(self._values)

    def lines(self) -> list[str]:
        return [f"{self.name}{{{self._label_text(k)}}} {v}" for k, v in sorted(self.values().items())]


class Histogram(_Family):
    """A monitoring::Sampler: bucket counts and a sum per label-value tuple."""

    kind = "histogram"

    def __init__(self, tf_name: str, labels: tuple[str, ...], bounds: tuple[float, ...]):
        super().__init__(tf_name, labels)
        self.bounds = bounds
        self._cells: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, *values: str, value: float) -> None:
        with self._lock:
            counts, total = self._cells.setdefault(values, ([0] * (len(self.bounds) + 1), [0.0]))
            counts[bisect.bisect_right(self.bounds, value)] += 1
            total[0] += value

    def cells(self) -> dict[tuple[str, ...], tuple[list[int], float]]:
        """Per label-value tuple: the (non-cumulative) bucket counts, last = +Inf, and the sum."""
        with self._lock:
            return {k: (list(c), s[0]) for k, (c, s) in self._cells.items()}

    def lines(self) -> list[str]:
        out = []
        for key, (counts, total) in sorted(self.cells().items()):
            labels = self._label_text(key)
            cumulative = 0
            for bound, count in zip((*map(_double, self.bounds), "+Inf"), counts, strict=True):
                cumulative += count
                out.append(f'{self.name}_bucket{{{labels},le="{bound}"}} {cumulative}')
            out.append(f"{self.name}_sum{{{labels}}} {_double(total)}")
            out.append(f"{self.name}_count{{{labels}}} {cumulative}")
        return out


def page(families: Iterable[_Family]) -> str:
    """The Prometheus text page of `families` (PrometheusExporter::GeneratePage)."""
    lines = []
    for family in sorted(families, key=lambda f: f.name):
        lines.append(f"# TYPE {family.name} {family.kind}")
        lines.extend(family.lines())
    return "\n".join(lines) + "\n"


class Metrics:
    """The server's metric families, recorded where TF Serving records them.

    - `record_request`: once per Predict/Classify gRPC call and per /v1/ REST call;
      request_count always, request_latency only when the answer is OK
      (prediction_service_impl.cc, http_server.cc). REST requests carry the URL's
      method as API ("predict", "classify", "" for GET), gRPC ones "Predict"/"Classify".
    - `record_runtime`: the model run of each successful Predict/Classify, warmup
      included (predict_util.cc, classifier.cc: runtime "TF1").
    - request_example_counts / request_example_count_total: TF Serving fills them
      only for MultiInference (multi_inference.cc), which neither server's
      Predict/Classify traffic reaches; they are on the page, without samples, as there.
    """

    def __init__(self) -> None:
        self.request_count = Counter("/tensorflow/serving/request_count", ("model_name", "status"))
        self.request_latency = Histogram("/tensorflow/serving/request_latency",
                                         ("model_name", "API", "entrypoint"), LATENCY_BUCKETS_US)
        self.runtime_latency = Histogram("/tensorflow/serving/runtime_latency",
                                         ("model_name", "API", "runtime"), LATENCY_BUCKETS_US)
        self.request_example_counts = Histogram("/tensorflow/serving/request_example_counts",
                                                ("model",), EXAMPLE_COUNT_BUCKETS)
        self.request_example_count_total = Counter(
            "/tensorflow/serving/request_example_count_total", ("model",))
        self.predicted_rows = Counter("/optfusion/serving/predicted_rows", ("model_name",))
        self.mostly_oov_rows = Counter("/optfusion/serving/mostly_oov_rows", ("model_name",))
        self.families: list[_Family] = [
            self.request_count, self.request_latency, self.runtime_latency,
            self.request_example_counts, self.request_example_count_total,
            self.predicted_rows, self.mostly_oov_rows,
        ]
        self._lock = threading.Lock()
        self._unserved = 0  # requests naming no served model: counted, never a label

    def record_request(self, model: str | None, api: str, status: str, latency_us: float,
                       entrypoint: str) -> None:
        """One request; `model=None` when it named no served model."""
        if model is None:
            with self._lock:
                self._unserved += 1
            return
        self.request_count.increment(model, status)
        if status == OK:
            self.request_latency.observe(model, api, entrypoint, value=latency_us)

    def record_runtime(self, model: str, api: str, latency_us: float) -> None:
        """One successful model run (session run, batching wait included, as with TF Serving's
        batching session)."""
        self.runtime_latency.observe(model, api, RUNTIME, value=latency_us)

    def record_rows(self, model: str, rows: int, mostly_oov: int) -> None:
        """Counts `rows` predicted rows of a served model, `mostly_oov` of them foreign."""
        self.predicted_rows.increment(model, by=rows)
        self.mostly_oov_rows.increment(model, by=mostly_oov)

    def total(self) -> int:
        with self._lock:
            unserved = self._unserved
        return sum(self.request_count.values().values()) + unserved

    def summary(self) -> str:
        """One line per model (requests, errors) and per API/entrypoint (mean OK latency)."""
        lines = []
        requests: dict[str, list[int]] = {}
        for (model, status), count in self.request_count.values().items():
            n_errors = requests.setdefault(model, [0, 0])
            n_errors[0] += count
            n_errors[1] += count if status != OK else 0
        latencies = self.request_latency.cells()
        for model, (n, errors) in sorted(requests.items()):
            lines.append(f"{model}: {n} requests, {errors} errors")
            for (m, api, entrypoint), (counts, total) in sorted(latencies.items()):
                if m == model:
                    lines.append(f"  {api or 'status/metadata'} via {entrypoint}: "
                                 f"mean {total / max(sum(counts), 1) / 1000:.2f} ms")
        oov = self.mostly_oov_rows.values()
        for (model,), rows in sorted(self.predicted_rows.values().items()):
            lines.append(f"{model}: {oov.get((model,), 0)} of {rows} predicted rows had more than "
                         f"{MOSTLY_OOV_FRACTION:.0%} of their categorical fields out of vocabulary")
        with self._lock:
            if self._unserved:
                lines.append(f"{self._unserved} requests named no served model")
        return "\n".join(lines) or "no requests"

    def prometheus(self) -> str:
        return page(self.families)
