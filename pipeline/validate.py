"""`pipeline validate`: a new run's data compared with a reference run's, before it may train a model.

TFX's ExampleValidator semantics (drift and skew comparators of TFDV), on
the distributions every run records (pipeline.distributions):
- the fields of both runs: a new, a missing or a re-kinded field is an anomaly;
- the positive rate: relative change |new - ref| / ref (`label_rate`);
- per field, absolute changes of the missing rate and of the OOV rate;
- categorical fields: L-infinity distance of the normalized top-value counts
  over the union of both runs' values (`linf`, TFDV's `LInftyDistance`: each
  side normalized by its own total, a value absent from one side counts 0);
- numeric fields (integer and float tokens, hour / timestamp fields):
  Jensen-Shannon divergence of the normalized token counts (`js`, log base 2,
  in [0, 1] as TFDV's `JensenShannonDivergence`; the tokens are the buckets).
As in TFDV the top values are a truncated rank histogram (TOP_K per field):
the kept values beyond it are left out of both measures.

Thresholds (docs/SCHEMA.md §Validation): built-in DEFAULT_THRESHOLDS, then
the new run's schema `validation:` block, then `--thresholds FILE`; within
each layer a field's own entry beats the layer's `default:`. null: reported,
never an anomaly. Exit 0 no anomaly, 3 anomalies (EXIT_ANOMALIES), 2 usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
from typing import Any

from pipeline.atomic import write_text_atomic
from pipeline.errors import EXIT_USAGE, UsageError
from pipeline.features import DISTRIBUTIONS_FILE

ANOMALIES_FILE = "anomalies.json"
EXIT_ANOMALIES = 3
# Per-field checks, then the one dataset-wide check.
FIELD_CHECKS = ("linf", "js", "missing_rate", "oov_rate")
LABEL_CHECK = "label_rate"
DEFAULT_THRESHOLDS = {"linf": 0.1, "js": 0.1, "missing_rate": 0.05, "oov_rate": 0.05, LABEL_CHECK: 0.2}
_LAYER_KEYS = {LABEL_CHECK, "default", "fields"}


class ThresholdsError(UsageError):
    """A `validation:` block or thresholds file is malformed."""


def _threshold(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ThresholdsError(f"{where}: must be a number >= 0 or null (not checked), got {value!r}")
    return float(value)


def _checks(doc: Any, where: str) -> dict[str, float | None]:
    if not isinstance(doc, dict):
        raise ThresholdsError(f"{where}: must map checks {list(FIELD_CHECKS)} to thresholds, got {doc!r}")
    unknown = sorted(str(k) for k in doc if k not in FIELD_CHECKS)
    if unknown:
        raise ThresholdsError(f"{where}: unknown check {unknown[0]!r}; expected one of {list(FIELD_CHECKS)}")
    return {k: _threshold(v, f"{where}.{k}") for k, v in doc.items()}


def check_thresholds(doc: Any, where: str, field_names: list[str] | None = None) -> dict:
    """A validated thresholds layer (`validation:` block or --thresholds file), ThresholdsError naming the key."""
    if not isinstance(doc, dict):
        raise ThresholdsError(f"{where}: must be a mapping with keys {sorted(_LAYER_KEYS)}")
    unknown = sorted(str(k) for k in doc if k not in _LAYER_KEYS)
    if unknown:
        raise ThresholdsError(f"{where}: unknown key {unknown[0]!r}; allowed: {sorted(_LAYER_KEYS)}")
    layer: dict[str, Any] = {}
    if LABEL_CHECK in doc:
        layer[LABEL_CHECK] = _threshold(doc[LABEL_CHECK], f"{where}.{LABEL_CHECK}")
    if "default" in doc:
        layer["default"] = _checks(doc["default"], f"{where}.default")
    fields = doc.get("fields", {})
    if not isinstance(fields, dict):
        raise ThresholdsError(f"{where}.fields: must map field names to checks, got {fields!r}")
    if field_names is not None:
        absent = sorted(str(f) for f in fields if str(f) not in field_names)
        if absent:
            raise ThresholdsError(f"{where}.fields: {absent[0]!r} is not a model field ({field_names})")
    if fields:
        layer["fields"] = {str(f): _checks(c, f"{where}.fields.{f}") for f, c in fields.items()}
    return layer


def resolve(layers: list[dict], check: str, field: str | None = None) -> float | None:
    """The threshold of `check` (of `field`) after the layers, later ones winning (module docstring)."""
    value = DEFAULT_THRESHOLDS[check]
    for layer in layers:
        if field is None:
            value = layer.get(check, value)
            continue
        value = layer.get("default", {}).get(check, value)
        value = layer.get("fields", {}).get(field, {}).get(check, value)
    return value


def _normalized(counts: dict[str, float]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


def linf_distance(a: dict[str, float], b: dict[str, float]) -> tuple[float, str | None]:
    """L-infinity distance of the normalized counts over the union of keys, and the key where it is reached.

    An empty side (no value at all) is at distance 1 from a non-empty one.
    """
    if not a or not b:
        return (0.0, None) if not a and not b else (1.0, None)
    pa, pb = _normalized(a), _normalized(b)
    key = max(sorted(pa.keys() | pb.keys()), key=lambda k: abs(pa.get(k, 0.0) - pb.get(k, 0.0)))
    return abs(pa.get(key, 0.0) - pb.get(key, 0.0)), key


def js_divergence(a: dict[str, float], b: dict[str, float]) -> float:
    """Jensen-Shannon divergence (log base 2, in [0, 1]) of the normalized counts over the union of keys."""
    if not a or not b:
        return 0.0 if not a and not b else 1.0
    pa, pb = _normalized(a), _normalized(b)

    def kl(p: dict[str, float], m: dict[str, float]) -> float:
        return sum(v * math.log2(v / m[k]) for k, v in p.items() if v > 0)

    m = {k: (pa.get(k, 0.0) + pb.get(k, 0.0)) / 2 for k in pa.keys() | pb.keys()}
    return min(1.0, (kl(pa, m) + kl(pb, m)) / 2)


@dataclasses.dataclass(frozen=True)
class Check:
    """One comparison: its value against its threshold (None: not checked)."""

    field: str | None
    check: str
    value: float | None
    threshold: float | None
    reference: Any = None
    new: Any = None
    detail: str = ""

    @property
    def anomaly(self) -> bool:
        """Over its threshold, or a structural anomaly (no threshold applies: value None, threshold 0)."""
        if self.threshold is None:
            return False
        return self.value is None or self.value > self.threshold

    def to_doc(self) -> dict:
        return {**dataclasses.asdict(self), "anomaly": self.anomaly}


@dataclasses.dataclass(frozen=True)
class Run:
    """What validation reads of a finished run."""

    path: str
    stats: dict
    distributions: dict


def load_run(path: str, flag: str) -> Run:
    """A finished local run with distributions.json; UsageError naming `flag` otherwise."""
    from pipeline.dataset_info import STATS_FILE, is_uri, read_dataset_info

    if is_uri(path):
        raise UsageError(f"{flag} {path}: pipeline validate reads local runs (copy the run's stats.json and "
                         f"{DISTRIBUTIONS_FILE} into a local folder with its DONE.json)")
    read_dataset_info(path)  # a readable error for a missing or unfinished run
    folder = pathlib.Path(path)
    if not (folder / DISTRIBUTIONS_FILE).is_file():
        raise UsageError(f"{flag} {path} has no {DISTRIBUTIONS_FILE} (a run from before distributions were "
                         "recorded): rerun it with this version of `pipeline`")
    return Run(path, json.loads((folder / STATS_FILE).read_text()),
               json.loads((folder / DISTRIBUTIONS_FILE).read_text()))


def _top(dist: dict, split: str) -> dict[str, float]:
    return {key: float(count) for key, count in dist["splits"][split]["top"]}


def _field_checks(name: str, ref: Run, new: Run, split: str, layers: list[dict]) -> list[Check]:
    ref_dist, new_dist = ref.distributions["fields"][name], new.distributions["fields"][name]
    if ref_dist["kind"] != new_dist["kind"]:
        return [Check(name, "kind_changed", None, 0.0, ref_dist["kind"], new_dist["kind"],
                      "the field's kind differs: its values cannot be compared")]
    records = [next(f for f in run.stats["fields"] if f["name"] == name) for run in (ref, new)]
    out = []
    for rate in ("missing_rate", "oov_rate"):
        r, n = (record[rate][split] for record in records)
        out.append(Check(name, rate, abs(n - r), resolve(layers, rate, name), r, n))
    measure = new_dist["measure"]
    if measure is None:
        return out  # quantile buckets of each run's own boundaries: not comparable
    a, b = _top(ref_dist, split), _top(new_dist, split)
    threshold = resolve(layers, measure, name)
    if measure == "js":
        return [*out, Check(name, measure, js_divergence(a, b), threshold)]
    value, key = linf_distance(a, b)  # reference, new: the value's shares where the distance is reached
    if key is None:
        return [*out, Check(name, measure, value, threshold)]
    return [*out, Check(name, measure, value, threshold, _share(a, key), _share(b, key), f"value {key}")]


def _share(counts: dict[str, float], key: str) -> float:
    total = sum(counts.values())
    return counts.get(key, 0.0) / total if total else 0.0


def compare(ref: Run, new: Run, split: str, layers: list[dict]) -> list[Check]:
    """Every check of `new` against `ref` on `split` (module docstring)."""
    for run, flag in ((ref, "--reference"), (new, "--run")):
        if split not in run.stats["splits"]:
            raise UsageError(f"{flag} {run.path} has no split {split!r}; it holds {list(run.stats['splits'])}")
    out: list[Check] = []
    ref_split, new_split = ref.stats["splits"][split], new.stats["splits"][split]
    if not new_split["rows"]:
        out.append(Check(None, "no_rows", None, 0.0, ref_split["rows"], 0, f"split {split} of the new run is empty"))
    if ref.stats.get("labeled") and new.stats.get("labeled"):
        r, n = ref_split["positive_ratio"], new_split["positive_ratio"]
        change = abs(n - r) / r if r else (None if n else 0.0)  # None: positives appeared (an anomaly)
        out.append(Check(None, LABEL_CHECK, change, resolve(layers, LABEL_CHECK), r, n,
                         "relative change of the positive rate"))
    ref_fields, new_fields = ref.distributions["fields"], new.distributions["fields"]
    out += [Check(name, "new_field", None, 0.0, None, new_fields[name]["kind"], "not in the reference run")
            for name in new_fields if name not in ref_fields]
    out += [Check(name, "missing_field", None, 0.0, ref_fields[name]["kind"], None, "not in the new run")
            for name in ref_fields if name not in new_fields]
    for name in new_fields:
        if name in ref_fields:
            out += _field_checks(name, ref, new, split, layers)
    return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _plain(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def report_table(checks: list[Check]) -> str:
    """Readable table: dataset-wide checks, one line per field (`*` = over its threshold), then the anomalies."""
    lines = [f"{'check':<14} {'value':>8} {'threshold':>9}  reference -> new"]
    lines += [f"{c.check:<14} {_fmt(c.value):>8} {_fmt(c.threshold):>9}  {c.reference} -> {c.new}"
              for c in checks if c.field is None]
    lines.append(f"\n{'field':<18} {'distance':>14} {'missing Δ':>10} {'oov Δ':>10}")
    by_field: dict[str, dict[str, Check]] = {}
    for c in checks:
        if c.field is not None:
            by_field.setdefault(c.field, {})[c.check] = c

    def cell(c: Check | None, label: bool = False) -> str:
        if c is None:
            return "-"
        text = f"{c.check} " if label else ""
        return text + ("n/a" if c.value is None else f"{c.value:.4f}") + ("*" if c.anomaly else " ")

    for name, by_check in by_field.items():
        distance = by_check.get("linf") or by_check.get("js")
        lines.append(f"{name:<18} {cell(distance, True):>14} {cell(by_check.get('missing_rate')):>10} "
                     f"{cell(by_check.get('oov_rate')):>10}")
    anomalies = [c for c in checks if c.anomaly]
    lines.append("")
    for c in anomalies:
        over = "" if c.value is None else f" {c.value:.4f} > {c.threshold:.4f}"
        values = "" if c.reference is None and c.new is None else f": {_plain(c.reference)} -> {_plain(c.new)}"
        lines.append(f"ANOMALY {c.field or '(dataset)'}: {c.check}{over}" + (f" ({c.detail}{values})"
                     if c.detail else f" ({values[2:]})" if values else ""))
    lines.append(f"{len(anomalies)} anomal{'y' if len(anomalies) == 1 else 'ies'} in {len(checks)} checks")
    return "\n".join(lines)


def read_thresholds(path: str) -> dict:
    """A --thresholds file: YAML with the keys of a schema's `validation:` block."""
    import yaml

    file = pathlib.Path(path)
    try:
        doc = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ThresholdsError(f"--thresholds {path} cannot be read as YAML: {err}") from err
    return check_thresholds(doc or {}, f"--thresholds {path}")


def validate_runs(reference: str, run: str, split: str = "train", thresholds: str | None = None,
                  output: str | None = None) -> int:
    """Compares, prints the table, writes anomalies.json; EXIT_ANOMALIES when any check is over its threshold."""
    ref, new = load_run(reference, "--reference"), load_run(run, "--run")
    schema_layer = new.stats.get("schema", {}).get("validation")
    layers = [check_thresholds(schema_layer, f"{run} stats.json schema.validation")] if schema_layer else []
    if thresholds is not None:
        file_layer = read_thresholds(thresholds)
        absent = sorted(set(file_layer.get("fields", {})) - set(new.distributions["fields"]))
        if absent:
            raise ThresholdsError(f"--thresholds {thresholds}: fields.{absent[0]} is not a field of {run}")
        layers.append(file_layer)
    checks = compare(ref, new, split, layers)
    anomalies = [c.to_doc() for c in checks if c.anomaly]
    doc = {"reference": reference, "run": run, "split": split, "inputs": DISTRIBUTIONS_FILE,
           "anomalies": anomalies, "checks": [c.to_doc() for c in checks]}
    target = pathlib.Path(output) if output else pathlib.Path(run) / ANOMALIES_FILE
    write_text_atomic(target, json.dumps(doc, indent=1, allow_nan=False, default=str) + "\n")
    print(f"validate {run} against {reference} (split {split})")
    print(report_table(checks))
    print(f"anomalies -> {target}")
    return EXIT_ANOMALIES if anomalies else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pipeline validate",
        description="Compare a new run's data with a reference run's (TFDV-style drift and skew checks, "
                    "docs/SCHEMA.md §Validation). Exit 0: no anomaly; 3: anomalies (stop the day's "
                    "training); 2: bad arguments or runs.",
    )
    parser.add_argument("--reference", required=True, metavar="RUN", help="finished `pipeline` output to compare with")
    parser.add_argument("--run", required=True, metavar="NEW", help="finished `pipeline` output to validate")
    parser.add_argument("--split", default="train", help="split compared in both runs (default train)")
    parser.add_argument("--thresholds", metavar="FILE",
                        help="YAML thresholds (the keys of a schema's validation: block), over the new run's "
                             "schema and the built-in defaults")
    parser.add_argument("--output", metavar="FILE", help=f"where to write the report (default NEW/{ANOMALIES_FILE})")
    args = parser.parse_args(argv)
    try:
        return validate_runs(args.reference, args.run, args.split, args.thresholds, args.output)
    except UsageError as err:
        print(f"pipeline validate: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
