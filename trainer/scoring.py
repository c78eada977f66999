"""A finished run's model on other transformed data: evaluate it, or score every row.

The data may be any split of a `pipeline` run, or a `pipeline transform`
output (split "data", labeled or not) made with the run's own transform
graph. Both stages (and `serving export`) first check that the data was made
by the graph the run trained on (`check_compatible`): ids from another graph,
even one of the same fields and vocabulary sizes, silently mean other tokens.

`trainer --stage=predict` on transformed data writes one row per record, in
the stored record order (the split's shards in name order, each in file order):

    row<TAB>probability[<TAB>label]
    0<TAB>0.0312<TAB>0

`row` is the 0-based record index, `probability` P(click) with 7 significant
digits (calibrated: sigmoid of the run's calibration map of the logit,
trainer/calibration.py, as the exported model serves it), `label` only for
labeled data; an --output ending in `.csv` is comma-separated instead. The
file appears complete or not at all (temp file, then rename).

`trainer --stage=predict --input RAW_FILE` scores a raw file of the run's
schema instead, line-aligned: the pipeline run's TFT graph and the trained
model in process, one output line per input row with its line number
(pipeline.batch_scoring, the loop `serving predict` shares).
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from pipeline import batch_scoring, fingerprint
from pipeline.atomic import atomic_path, write_text_atomic
from pipeline.dataset_info import FINGERPRINT_KEY, STATS_FILE, DatasetInfo, is_uri, join, read_dataset_info
from pipeline.errors import UsageError
from pipeline.remote import local_view
from trainer.calibration import IDENTITY, Calibration, read_calibration
from trainer.config import load_config
from trainer.data import input_signature, make_dataset
from trainer.metrics import log_loss, roc_auc
from trainer.model_io import CONFIG_FILE, RUN_FILE, load_model

log = logging.getLogger("trainer")

EVALUATION_FILE = "evaluation.{split}.json"
"""evaluate's default output, in the run dir (replaced by the next evaluation of that split)."""


class ScoringError(UsageError):
    """The run, the data or the output cannot be used for evaluate / predict."""


def default_split(info: DatasetInfo) -> str:
    """"test" for a `pipeline` run, the only split of a `pipeline transform` output."""
    if "test" in info.splits:
        return "test"
    if len(info.splits) == 1:
        return info.splits[0]
    raise ScoringError(f"{info.data_dir} holds splits {list(info.splits)}: pass --split NAME")


def _field_difference(run: dict[str, Any], info: DatasetInfo) -> str | None:
    """How `info`'s fields (names, order, vocab sizes, max_len) differ from run.json's; None if they do not."""
    trained = [(f["name"], int(f["vocab_size"]), int(f.get("max_len", 1))) for f in run["fields"]]
    given = [(f.name, f.vocab_size, f.max_len) for f in info.fields]
    if trained == given:
        return None
    names_run, names_data = [t[0] for t in trained], [g[0] for g in given]
    if names_run != names_data:
        missing = [n for n in names_run if n not in names_data]
        extra = [n for n in names_data if n not in names_run]
        return (f"fields missing {missing[:5]}, unexpected {extra[:5]}" if missing or extra
                else "the same fields in another order")
    name, (_, size_run, len_run), (_, size_data, len_data) = next(
        (t[0], t, g) for t, g in zip(trained, given, strict=True) if t != g)
    return (f"field {name} has vocab_size {size_data} and max_len {len_data} there, "
            f"{size_run} and {len_run} in the run")


def check_compatible(run_dir: pathlib.Path, info: DatasetInfo, hint: str | None = None) -> None:
    """Raises ScoringError, naming both paths, unless `info` was made by the graph the run trained on.

    Compares transform fingerprints (pipeline.fingerprint): another run's graph
    of the same schema (another seed) has the same fields and sizes but other
    vocabularies. Where the run (trained before run.json recorded one) or the
    data (no graph) has none, it falls back to the fields and says so in a warning.
    `hint`: how to fix a mismatch (default: transform the files with the run's graph).
    """
    run_file = run_dir / RUN_FILE
    if not run_file.is_file():
        raise ScoringError(f"{run_dir} is not a trainer run directory: {RUN_FILE} is missing")
    run = json.loads(run_file.read_text())
    hint = hint or (f"transform the raw files with the run's own graph: `pipeline transform --run "
                    f"{run.get('data_dir')} --input FILES --output DIR`")
    difference = _field_difference(run, info)
    trained, given = run.get(FINGERPRINT_KEY), fingerprint.of_data(info)
    if trained and given:
        if trained == given:
            return
        raise ScoringError(
            f"{info.data_dir} was transformed with another graph than the run {run_dir} trained on ("
            f"{difference or 'same fields and vocabulary sizes, other vocabularies: its ids mean other tokens'}): "
            f"transform fingerprint {fingerprint.short(given)} there, {fingerprint.short(trained)} in {run_file}; "
            f"{hint}"
        )
    if difference:
        raise ScoringError(f"{info.data_dir} was transformed with another graph than the run {run_dir} "
                           f"trained on: {difference}; {hint}")
    log.warning(
        "%s records no transform fingerprint (%s): only field names and vocabulary sizes were compared, "
        "which cannot tell another run's vocabularies of the same sizes apart",
        run_file if not trained else info.data_dir,
        "a run trained before run.json recorded it" if not trained else "data without a transform graph",
    )


def _split_rows(info: DatasetInfo, split: str) -> int | None:
    """Rows of `split` as stats.json records them (None where it does not): the progress bar's total."""
    try:
        with tf.io.gfile.GFile(join(info.data_dir, STATS_FILE)) as handle:
            rows = json.load(handle).get("splits", {})[split]["rows"]
        return int(rows)
    except (KeyError, TypeError, ValueError, tf.errors.OpError):
        return None


def _resolve_split(info: DatasetInfo, split: str | None) -> str:
    split = split or default_split(info)
    if split not in info.splits:
        raise ScoringError(f"--split {split!r}: {info.data_dir} holds {list(info.splits)}")
    return split


def _load(run_dir: pathlib.Path, info: DatasetInfo) -> tuple[Any, int, Calibration]:
    """The run's model (after the data check), the run's eval batch size and its calibration."""
    check_compatible(run_dir, info)
    model = load_model(run_dir)  # refuses a search run or an unfinished one, naming why
    return model, load_config(run_dir / CONFIG_FILE).train.eval_batch_size, read_calibration(run_dir)


def _logits(model: Any, info: DatasetInfo, split: str, batch_size: int, desc: str, calibration: Calibration,
            ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(calibrated logits, labels or None) per batch of `split`, in stored
    record order, with a progress bar."""
    step = tf.function(lambda f: model(f, training=False), input_signature=[input_signature(info)])
    bar = tqdm(total=_split_rows(info, split), desc=desc, unit="row", unit_scale=True, leave=False,
               mininterval=0.2 if sys.stderr.isatty() else 30)
    with bar:
        for batch in make_dataset(info, split, batch_size, in_file_order=True):
            features, labels = batch if info.labeled else (batch, None)
            logits = calibration.apply(np.asarray(step(features)).reshape(-1))
            bar.update(logits.size)
            yield logits, None if labels is None else labels.numpy()


def labeled_logits(run_dir: pathlib.Path, info: DatasetInfo, splits: Sequence[str],
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per labeled split: (labels, the model's own logits, before calibration), float64, in stored order;
    the model is loaded once for all of them."""
    for split in splits:
        if not info.labeled or split not in info.splits:
            raise ScoringError(f"{info.data_dir} holds {'unlabeled ' if not info.labeled else ''}splits "
                               f"{list(info.splits)}: needs a labeled split {split!r} (the run's `pipeline` output)")
    model, batch_size, _ = _load(run_dir, info)
    result = []
    for split in splits:
        logits, labels = zip(*_logits(model, info, split, batch_size, split, IDENTITY), strict=True)
        result.append((np.concatenate(labels).astype(np.float64), np.concatenate(logits).astype(np.float64)))
    return result


def evaluate(run_dir: str | pathlib.Path, info: DatasetInfo, split: str | None = None,
             output: str | pathlib.Path | None = None) -> dict[str, Any]:
    """Exact AUC and LogLoss of the run's model (logits / T, its calibration) over a labeled split; writes JSON."""
    if not info.labeled:
        raise ScoringError(
            f"{info.data_dir} is unlabeled (records without {info.label_key!r}): nothing to evaluate "
            "against; use --stage=predict to score it"
        )
    run_dir = pathlib.Path(run_dir)
    split = _resolve_split(info, split)
    target = run_dir / EVALUATION_FILE.format(split=split) if output is None else _output_path(output)
    start = time.perf_counter()
    model, batch_size, calibration = _load(run_dir, info)
    logits: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for batch_logits, batch_labels in _logits(model, info, split, batch_size, f"evaluate {split}", calibration):
        assert batch_labels is not None  # labeled data, checked above
        logits.append(batch_logits)
        labels.append(batch_labels)
    y, z = np.concatenate(labels), np.concatenate(logits)
    positives = int(y.sum())
    if positives in (0, y.size):
        raise ScoringError(
            f"split {split!r} of {info.data_dir} holds {y.size} rows, {positives} positive: AUC needs both classes"
        )
    result = {
        "stage": "evaluate", "run_dir": str(run_dir), "data_dir": str(info.data_dir), "split": split,
        "auc": roc_auc(y, z), "logloss": log_loss(y, z), "rows": int(y.size), "positives": positives,
        "temperature": calibration.temperature, "calibration": calibration.describe(),
    }
    write_text_atomic(target, json.dumps(result, indent=1) + "\n")
    return {**result, "output": str(target), "seconds": time.perf_counter() - start}


def predict(run_dir: str | pathlib.Path, info: DatasetInfo, output: str | pathlib.Path,
            split: str | None = None) -> dict[str, Any]:
    """Writes one probability per record of the split (format in the module docstring)."""
    run_dir = pathlib.Path(run_dir)
    split = _resolve_split(info, split)
    target = _output_path(output)
    start = time.perf_counter()
    model, batch_size, calibration = _load(run_dir, info)
    sep = "," if target.suffix.lower() == ".csv" else "\t"
    rows, total, low, high = 0, 0.0, math.inf, -math.inf
    with atomic_path(target) as tmp, tmp.open("w") as out:
        out.write(sep.join(["row", "probability", *(["label"] if info.labeled else [])]) + "\n")
        for logits, labels in _logits(model, info, split, batch_size, f"predict {split}", calibration):
            p = np.exp(-np.logaddexp(0.0, -logits.astype(np.float64)))  # sigmoid, no overflow at any logit
            index = np.arange(rows, rows + p.size)
            columns = [index, p] if labels is None else [index, p, labels.astype(np.int64)]
            np.savetxt(out, np.column_stack(columns), fmt=["%d", "%.7g", "%d"][:len(columns)], delimiter=sep)
            rows += p.size
            total, low, high = total + float(p.sum()), min(low, float(p.min())), max(high, float(p.max()))
    return {"stage": "predict", "run_dir": str(run_dir), "data_dir": str(info.data_dir), "split": split,
            "output": str(target), "rows": rows, "labeled": info.labeled, "mean_probability": total / rows,
            "min_probability": low, "max_probability": high, "seconds": time.perf_counter() - start}


def raw_scores(model: Any, transform_layer: Any, raw_spec: dict[str, Any], names: list[str],
               serialized: tf.Tensor, oov_fields: list[str], calibration: Calibration = IDENTITY,
               ) -> tuple[tf.Tensor, tf.Tensor]:
    """(sigmoid(calibrated logit), oov_fraction) of serialized raw tf.Examples: parse, the TFT
    layer, the model.

    What the exported `serving_default` computes, in process (export verifies against it).
    """
    from pipeline.transform import oov_fraction

    transformed = transform_layer(tf.io.parse_example(serialized, raw_spec))
    features = {n: tf.cast(transformed[n], tf.int64) for n in names}
    logits = tf.reshape(tf.cast(model(features, training=False), tf.float32), [-1])
    return tf.sigmoid(calibration.apply_tf(logits)), oov_fraction(features, oov_fields)


def _raw_step(run_dir: pathlib.Path, info: DatasetInfo) -> tuple[Any, int, Any]:
    """(the run's spec, its eval batch size, a traced step: serialized raw tf.Examples ->
    (calibrated probabilities, oov_fraction)) through `info`'s TFT graph and the run's model."""
    import tensorflow_transform as tft

    from pipeline.job import run_spec
    from pipeline.transform import oov_fields

    model, batch_size, calibration = _load(run_dir, info)
    spec = run_spec(str(info.data_dir))
    tft_output = tft.TFTransformOutput(str(info.transform_output_dir))
    raw_spec = {k: v for k, v in tft_output.raw_feature_spec().items() if k != info.label_key}
    layer, names, fields = tft_output.transform_features_layer(), info.field_names, oov_fields(spec)
    step = tf.function(lambda s: raw_scores(model, layer, raw_spec, names, s, fields, calibration),
                       input_signature=[tf.TensorSpec([None], tf.string)])
    return spec, batch_size, step


def predict_raw(run_dir: str | pathlib.Path, info: DatasetInfo, input_path: str, output: str | pathlib.Path, *,
                on_bad_row: str = "error", keep_columns: tuple[str, ...] = (), unlabeled: bool | None = None,
                ) -> dict[str, Any]:
    """Scores the raw file `input_path` line-aligned (pipeline.batch_scoring) through `info`'s
    TFT graph and the run's model; `info` is the pipeline run the model was trained on."""
    from pipeline.raw_rows import serialize_example

    run_dir = pathlib.Path(run_dir)
    target = _output_path(output)
    start = time.perf_counter()
    spec, batch_size, step = _raw_step(run_dir, info)

    def scorer(rows: list[dict[str, list]]) -> tuple[np.ndarray, np.ndarray]:
        p, oov = step(tf.constant([serialize_example(r, None, spec) for r in rows]))
        return p.numpy(), oov.numpy()

    bar = tqdm(desc=f"predict {input_path}", unit="row", unit_scale=True, leave=False,
               mininterval=0.2 if sys.stderr.isatty() else 30)
    with bar:
        summary = batch_scoring.score_file(input_path, spec, scorer, target, batch_size=batch_size,
                                           on_bad_row=on_bad_row, keep_columns=keep_columns,
                                           unlabeled=unlabeled, progress=bar.update)
    return {"stage": "predict", "run_dir": str(run_dir), "data_dir": str(info.data_dir), "input": input_path,
            "output": str(target), "rows": summary.rows, "scored": summary.scored, "bad": summary.bad,
            "summary": summary.describe(), "warning": summary.foreign_warning(),
            "seconds": time.perf_counter() - start}


def _output_path(output: str | pathlib.Path) -> pathlib.Path:
    """A local output file that does not exist yet (a given one is never overwritten)."""
    if is_uri(str(output)):
        raise ScoringError(f"--output {output}: write to a local path (a URI has no atomic rename), then copy it")
    path = pathlib.Path(output)
    if path.exists():
        raise ScoringError(f"--output {path} exists; remove it or choose another file (nothing is overwritten)")
    if path.parent.exists() and not path.parent.is_dir():
        raise ScoringError(f"--output {path}: {path.parent} is not a directory")
    return path


def run_raw_scorer(run_dir: str | pathlib.Path, batch_size: int | None = None,
                   ) -> Callable[[list[bytes]], np.ndarray]:
    """P(click) of serialized raw tf.Examples through the run's OWN transform graph (the
    pipeline run recorded in its run.json) and its model, calibrated with its calibration map:
    what its export would serve. For comparing runs trained on different pipeline runs
    (other vocabularies) on the same raw rows (trainer/blessing.py)."""
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / RUN_FILE).is_file():
        raise ScoringError(f"{run_dir} is not a trainer run directory: {RUN_FILE} is missing")
    data_dir = json.loads((run_dir / RUN_FILE).read_text()).get("data_dir")
    if not data_dir:
        raise ScoringError(f"{run_dir / RUN_FILE} records no data_dir: cannot find the run's transform graph")
    info = read_dataset_info(local_view(data_dir))  # its graph: a moved or unfinished pipeline run fails here
    _spec, eval_batch_size, step = _raw_step(run_dir, info)
    size = batch_size or eval_batch_size

    def score(serialized: list[bytes]) -> np.ndarray:
        parts = [step(tf.constant(serialized[i:i + size]))[0].numpy() for i in range(0, len(serialized), size)]
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)

    return score
