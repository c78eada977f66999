"""Model validation before a push (TFX Evaluator's blessing): is the new day's model at least as good?

    trainer --stage=evaluate --data NEW --candidate RUN [--baseline RUN|MODEL_DIR] [--split test]

The candidate is the run trained on NEW; the baseline is yesterday's run, or
the model being served (an exported SavedModel version dir, or BASE/NAME for
its highest version). Each was trained on its own pipeline run with its own
vocabularies, so both score the same RAW rows: NEW's held-out split re-read
from the input files stats.json records (the job's split hash and seed pick
the same rows as its TFRecords), each through its own transform graph:

- a RUN: its pipeline run's TFT graph + its Keras model, calibrated with its
  calibration.json (trainer.scoring.run_raw_scorer), what its export serves;
- a MODEL_DIR: the SavedModel's `serving_default` under the TF1 session loader,
  the path tensorflow_model_server takes.

Why the MODEL_DIR scorer lives here, with plain tf.compat.v1 loading, rather
than behind serving.session_loader: trainer may not import serving (the layers
pipeline <- trainer <- serving, tests/test_imports.py), and an interface that
serving registers into trainer would need trainer's CLI to import serving
anyway. Loading one signature is a few lines of the public TF1 API (load the
meta graph in a fresh graph and session, feed and fetch by the SignatureDef's
tensor names); the serving tests check that it matches the session loader.

The decision (thresholds in trainer/configs/blessing.yaml, flags override):
candidate AUC >= min_auc and LogLoss <= max_logloss (absolute floors), and,
with a baseline, candidate AUC >= baseline AUC - auc_delta and LogLoss <=
baseline LogLoss + logloss_delta. Without a baseline (the first day) the floors
alone decide, and blessing.json says so. blessing.json records both models'
AUC and LogLoss, every check and the reason; `serving push` refuses a run
without a BLESSED file naming it. Exit 0 blessed, 3 not, 2 bad input.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import yaml

from pipeline.atomic import write_text_atomic
from pipeline.dataset_info import STATS_FILE, DatasetInfo
from pipeline.errors import UsageError
from trainer.config import CONFIG_DIR
from trainer.metrics import log_loss, roc_auc
from trainer.model_io import RUN_FILE

BLESSING_FILE = "blessing.json"
BLESSED, NOT_BLESSED = "BLESSED", "NOT_BLESSED"
EXIT_NOT_BLESSED = 3
DEFAULTS_FILE = CONFIG_DIR / "blessing.yaml"
SECTION = "blessing"
PROBABILITIES_OUTPUT = "probabilities"  # serving_default's output key (serving/module.py)
_VERSION_RE = re.compile(r"^[0-9]+$")
_SCORE_BATCH = 4096
_EPS = 1e-7  # probabilities clipped to [eps, 1 - eps] before taking logits (float32 saturation)


class BlessingError(UsageError):
    """The candidate, the baseline, the data or the thresholds cannot be used for a blessing."""


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """The blessing rule; the defaults' reasons are in trainer/configs/blessing.yaml."""

    min_auc: float
    max_logloss: float
    auc_delta: float
    logloss_delta: float


def load_thresholds(path: pathlib.Path | None = None, **overrides: float | None) -> Thresholds:
    """The `blessing:` section of `path` (default trainer/configs/blessing.yaml) over the defaults
    file, then every override that is not None (the flags)."""
    values: dict[str, Any] = {}
    for source in dict.fromkeys([DEFAULTS_FILE, path or DEFAULTS_FILE]):
        try:
            doc = yaml.safe_load(source.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise BlessingError(f"--blessing_config {source}: cannot read it: {err}") from err
        section = doc.get(SECTION) if isinstance(doc, dict) else None
        if not isinstance(section, dict):
            raise BlessingError(f"{source} holds no `{SECTION}:` mapping")
        fields = {f.name for f in dataclasses.fields(Thresholds)}
        unknown = sorted(set(section) - fields)
        if unknown:
            raise BlessingError(f"{source}: unknown key {SECTION}.{unknown[0]} (known: {sorted(fields)})")
        values.update(section)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        thresholds = Thresholds(**{k: float(v) for k, v in values.items()})
    except (TypeError, ValueError) as err:
        raise BlessingError(f"blessing thresholds must be numbers. Received: {values}") from err
    if thresholds.auc_delta < 0 or thresholds.logloss_delta < 0:
        raise BlessingError(f"auc_delta and logloss_delta must be >= 0. Received: {thresholds}")
    return thresholds


def held_out_rows(info: DatasetInfo, split: str) -> tuple[list[bytes], np.ndarray, str]:
    """(serialized raw tf.Examples, labels, where from) of `split` of the pipeline run `info`:
    its raw rows re-read from the inputs stats.json records, checked against the recorded count."""
    from pipeline import raw_rows
    from pipeline.job import run_spec

    stats = json.loads((pathlib.Path(info.data_dir) / STATS_FILE).read_text())
    mode = stats.get("split", {}).get("mode", "hash")
    if mode == "hash":
        paths, row_split = [item["path"] for item in stats.get("inputs", [])], split
    elif mode == "given" and (split == "test" or "valid_fraction" not in stats["split"]):
        paths, row_split = list(stats["split"]["inputs"].get(split, [])), None
    else:
        raise BlessingError(f"{info.data_dir}: blessing re-reads the raw rows of split {split!r}, which a "
                            f"{mode!r} split does not record; use a `pipeline` run with a hash or given split")
    missing = [p for p in paths if not pathlib.Path(p).exists()]
    if not paths or missing:
        raise BlessingError(f"{info.data_dir}: the raw inputs behind split {split!r} are gone "
                            f"({missing[:2] or 'none recorded'}); blessing scores raw rows through each "
                            "model's own graph and needs them")
    spec = run_spec(str(info.data_dir))
    serialized, labels = [], []
    for path in paths:
        for features, label in raw_rows.iter_raw_examples(path, spec, split=row_split, seed=int(stats.get("seed", 0))):
            serialized.append(raw_rows.serialize_example(features, None, spec))
            labels.append(label)
    recorded = stats.get("splits", {}).get(split, {}).get("rows")
    if recorded is not None and int(recorded) != len(serialized):
        raise BlessingError(f"{info.data_dir}: re-reading {', '.join(paths)} gave {len(serialized)} rows of split "
                            f"{split!r}, stats.json records {recorded}: the inputs changed since the run")
    y = np.asarray(labels, dtype=np.float64)
    positives = int(y.sum()) if y.size else 0
    if None in labels or positives in (0, y.size):
        raise BlessingError(f"split {split!r} of {info.data_dir} holds {y.size} rows, {positives} positive: "
                            "AUC needs labeled rows of both classes")
    return serialized, y, f"raw rows of split {split!r} of {', '.join(paths)}"


def resolve_model_dir(path: pathlib.Path) -> pathlib.Path | None:
    """The SavedModel version dir `path` names (itself, or BASE/NAME's highest version); None if neither."""
    if (path / "saved_model.pb").is_file():
        return path
    found = sorted((int(p.name), p) for p in path.iterdir()
                   if _VERSION_RE.match(p.name) and (p / "saved_model.pb").is_file()) if path.is_dir() else []
    return found[-1][1] if found else None


def model_dir_scorer(version_dir: pathlib.Path) -> Callable[[list[bytes]], np.ndarray]:
    """P(click) of serialized raw tf.Examples from `serving_default` of an exported SavedModel,
    loaded by the TF1 session loader (tensorflow_model_server's path; why not serving's module:
    this module's docstring)."""
    import tensorflow as tf

    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    try:
        with graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(session, [tf.saved_model.SERVING], str(version_dir))
    except (tf.errors.OpError, RuntimeError, ValueError, OSError) as err:
        session.close()
        raise BlessingError(f"--baseline {version_dir}: the session loader cannot restore it: "
                            f"{str(err).splitlines()[0]}") from err
    signature = meta.signature_def.get(tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY)
    if signature is None or len(signature.inputs) != 1 or PROBABILITIES_OUTPUT not in signature.outputs:
        session.close()
        raise BlessingError(f"--baseline {version_dir}: no serving_default taking serialized tf.Examples and "
                            f"returning {PROBABILITIES_OUTPUT!r} (not a `serving export` model)")
    feed = next(iter(signature.inputs.values())).name
    fetch = signature.outputs[PROBABILITIES_OUTPUT].name

    def score(serialized: list[bytes]) -> np.ndarray:
        parts = [np.asarray(session.run(fetch, {feed: np.array(serialized[i:i + _SCORE_BATCH], dtype=object)}))
                 for i in range(0, len(serialized), _SCORE_BATCH)]
        return np.concatenate(parts).reshape(-1).astype(np.float64) if parts else np.zeros(0)

    return score


def _metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    if probabilities.shape != labels.shape or not np.all(np.isfinite(probabilities)):
        raise RuntimeError(f"scorer returned {probabilities.shape} probabilities (finite: "
                           f"{bool(np.all(np.isfinite(probabilities)))}) for {labels.shape} rows")
    p = np.clip(probabilities, _EPS, 1 - _EPS)
    logits = np.log(p) - np.log1p(-p)
    return {"auc": roc_auc(labels, logits), "logloss": log_loss(labels, logits)}


def _check(name: str, value: float, op: str, limit: float, rule: str) -> dict[str, Any]:
    passed = value >= limit if op == ">=" else value <= limit
    return {"check": name, "rule": rule, "value": value, "limit": limit, "passed": bool(passed),
            "text": f"{rule}: {value:.4f} {op if passed else {'>=': '<', '<=': '>'}[op]} {limit:.4f}"}


def decide(candidate: dict[str, float], baseline: dict[str, float] | None, t: Thresholds) -> list[dict[str, Any]]:
    """Every check of the rule on the two models' metrics, in order; all must pass."""
    checks = [_check("min_auc", candidate["auc"], ">=", t.min_auc, "candidate AUC >= min_auc"),
              _check("max_logloss", candidate["logloss"], "<=", t.max_logloss, "candidate LogLoss <= max_logloss")]
    if baseline is not None:
        checks += [
            _check("auc_delta", candidate["auc"], ">=", baseline["auc"] - t.auc_delta,
                   f"candidate AUC >= baseline AUC {baseline['auc']:.4f} - auc_delta {t.auc_delta:g}"),
            _check("logloss_delta", candidate["logloss"], "<=", baseline["logloss"] + t.logloss_delta,
                   f"candidate LogLoss <= baseline LogLoss {baseline['logloss']:.4f} + logloss_delta "
                   f"{t.logloss_delta:g}"),
        ]
    return checks


def _baseline_scorer(baseline: pathlib.Path) -> tuple[Callable[[list[bytes]], np.ndarray], dict[str, Any]]:
    from trainer.scoring import run_raw_scorer

    if (baseline / RUN_FILE).is_file():
        return run_raw_scorer(baseline), {"kind": "run", "path": str(baseline.resolve())}
    version_dir = resolve_model_dir(baseline)
    if version_dir is None:
        raise BlessingError(f"--baseline {baseline} is neither a trainer run ({RUN_FILE}) nor an exported model "
                            "(a version dir with saved_model.pb, or BASE/NAME holding numbered versions)")
    return model_dir_scorer(version_dir), {"kind": "model_dir", "path": str(version_dir.resolve()),
                                           "version": int(version_dir.name) if _VERSION_RE.match(version_dir.name)
                                           else None}


def bless(candidate: pathlib.Path, baseline: pathlib.Path | None, info: DatasetInfo, thresholds: Thresholds,
          split: str | None = None, output: pathlib.Path | None = None) -> dict[str, Any]:
    """Scores both models on NEW's held-out raw rows, decides, writes blessing.json (atomically)."""
    from trainer.scoring import _output_path, run_raw_scorer

    start = time.perf_counter()
    split = split or "test"
    if split not in info.splits:
        raise BlessingError(f"--split {split!r}: {info.data_dir} holds {list(info.splits)}")
    if not (candidate / RUN_FILE).is_file():
        raise BlessingError(f"--candidate {candidate} is not a trainer run directory: {RUN_FILE} is missing")
    trained_on = json.loads((candidate / RUN_FILE).read_text()).get("data_dir")
    if trained_on is None or pathlib.Path(trained_on).resolve() != pathlib.Path(info.data_dir).resolve():
        raise BlessingError(f"--candidate {candidate} was trained on {trained_on}, not --data {info.data_dir}: "
                            "blessing scores the candidate on the held-out rows of the day it was trained on")
    target = candidate / BLESSING_FILE if output is None else _output_path(output)
    candidate_scorer = run_raw_scorer(candidate)  # an unfinished run fails here, before any scoring
    baseline_scorer, baseline_record = _baseline_scorer(baseline) if baseline is not None else (None, None)
    serialized, labels, source = held_out_rows(info, split)
    candidate_metrics = _metrics(labels, candidate_scorer(serialized))
    baseline_metrics = None if baseline_scorer is None else _metrics(labels, baseline_scorer(serialized))
    checks = decide(candidate_metrics, baseline_metrics, thresholds)
    failed = [c["text"] for c in checks if not c["passed"]]
    decision = NOT_BLESSED if failed else BLESSED
    result = {
        "decision": decision, "blessed": not failed,
        "reason": "; ".join(failed) if failed else f"all {len(checks)} checks passed",
        "first_day": baseline is None,
        "note": ("no baseline (first day): decided on the absolute floors alone" if baseline is None
                 else "both models scored the same raw rows, each through its own transform graph"),
        "candidate": {"kind": "run", "path": str(candidate.resolve()), **candidate_metrics},
        "baseline": None if baseline_record is None else {**baseline_record, **(baseline_metrics or {})},
        "thresholds": dataclasses.asdict(thresholds), "checks": checks,
        "data_dir": str(info.data_dir), "split": split, "rows": int(labels.size),
        "positives": int(labels.sum()), "rows_source": source,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    write_text_atomic(target, json.dumps(result, indent=1) + "\n")
    return {**result, "stage": "evaluate", "run_dir": str(candidate), "output": str(target),
            "seconds": time.perf_counter() - start,
            "exit_code": 0 if decision == BLESSED else EXIT_NOT_BLESSED}


def describe(summary: dict[str, Any]) -> str:
    """The printed summary: the decision, both models' AUC and LogLoss, the reason."""
    c, b = summary["candidate"], summary["baseline"]
    lines = [f"trainer evaluate: {summary['decision']} ({summary['reason']}) -> {summary['output']}",
             f"  candidate {c['path']}: AUC {c['auc']:.4f}, LogLoss {c['logloss']:.4f}"]
    lines.append(f"  baseline  {b['path']}: AUC {b['auc']:.4f}, LogLoss {b['logloss']:.4f}" if b
                 else f"  {summary['note']}")
    lines.append(f"  on {summary['rows']} rows ({summary['positives']} positive), {summary['rows_source']}, "
                 f"in {summary['seconds']:.1f}s")
    return "\n".join(lines)


def is_blessed(path: pathlib.Path, run_dir: pathlib.Path) -> tuple[bool, str]:
    """Whether the blessing file `path` is BLESSED and names `run_dir` as its candidate, and why not."""
    try:
        record = json.loads(path.read_text())
        decision, candidate = record["decision"], record["candidate"]["path"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return False, f"{path} is not a readable blessing file ({err})"
    if pathlib.Path(candidate).resolve() != run_dir.resolve():
        return False, f"{path} blesses {candidate}, not {run_dir}"
    if decision != BLESSED:
        return False, f"{path} says {decision}: {record.get('reason')}"
    return True, f"{path}: {BLESSED} ({record.get('reason')})"
