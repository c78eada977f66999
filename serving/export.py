"""`serving export`: trained run + transform graph -> a verified TF Serving version dir.

Order of work, so that a server never loads a half-written or wrong model:
check that --data was made by the transform graph the run trained on (its
fingerprint, `trainer.scoring.check_compatible`: another seed's run has other
vocabularies, and its graph would feed the model ids that mean other tokens),
save into a hidden temp dir beside the versions (TF Serving and the bundled
server only load numeric dir names), verify it, write the warmup records, and
only then rename it to BASE/NAME/<version>.

Verification (a real check, not a smoke test): raw rows are serialized to
tf.Example and sent through every signature of the SavedModel reloaded by the
session loader, the path `tensorflow_model_server` takes (`serving.session_loader`),
and through `serving_default` reloaded by `tf.saved_model.load`; the same rows
are parsed with the raw feature spec, transformed by the pipeline's TFT layer
in-process and fed to the trained Keras model, whose logits are divided by the
run's temperature (trainer/calibration.py; 1 for a run without one) as the
export does. Max abs difference of the probabilities must be <= `tolerance`
(1e-5), and `raw_fields` and `classification` must agree with
`serving_default` on the same rows, and its `oov_fraction` output with the
in-process TFT ids. The rows are, in order of preference:
`--verify_input FILE` (raw rows in any pipeline format); else the test split's
raw rows, re-read from the input files stats.json records with the job's
split hash and seed; else (inputs gone) synthetic rows from the raw feature
spec (unseen tokens, missing cells, integers over a wide range), so that the
check always runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    model_pb2,
    predict_pb2,
    prediction_log_pb2,
)

from pipeline.errors import UsageError
from pipeline.features import MOSTLY_OOV_FRACTION
from serving import configs, examples, module, session_loader
from trainer.calibration import IDENTITY, Calibration

WARMUP_FILE = "tf_serving_warmup_requests"
VERSION_RE = re.compile(r"^[0-9]+$")


class ExportError(RuntimeError):
    """The export fails verification; nothing was published."""


class ExportUsageError(UsageError):
    """Bad export arguments (name, version, verification input); nothing was written."""


@dataclasses.dataclass(frozen=True)
class Verification:
    rows: int
    source: str
    max_abs_diff: float  # serving_default under the session loader vs Keras
    fields_max_abs_diff: float  # raw_fields vs serving_default, session loader
    classify_max_abs_diff: float  # classification's P(1) vs serving_default, session loader
    tf2_max_abs_diff: float  # serving_default under tf.saved_model.load vs Keras
    tolerance: float
    oov_max_abs_diff: float = 0.0  # serving_default's oov_fraction vs the in-process TFT ids
    mostly_oov_rows: int = 0  # verification rows with most categorical fields OOV
    calibration: Calibration = IDENTITY  # the map both sides apply to the logit (trainer/calibration.py)


@dataclasses.dataclass(frozen=True)
class ExportResult:
    version_dir: pathlib.Path
    version: int
    verification: Verification
    warmup_records: int
    config_files: tuple[pathlib.Path, ...]


def versions(model_dir: pathlib.Path) -> list[int]:
    """Numeric version dirs holding a saved_model.pb, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in model_dir.iterdir()
        if VERSION_RE.match(p.name) and (p / "saved_model.pb").is_file()
    )


def synthetic_rows(raw_spec: Mapping[str, Any], n: int, seed: int) -> list[dict[str, list]]:
    """Raw rows with unseen tokens, missing cells and wide integer ranges (last resort)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row: dict[str, list] = {}
        for name, spec in raw_spec.items():
            draw = rng.random()
            if draw < 0.1:
                row[name] = []  # missing
            elif spec.dtype == tf.string:
                row[name] = [f"{rng.integers(1 << 16):04x}".encode()]
            elif spec.dtype.is_integer:
                row[name] = [int(rng.choice([-3, -1, 0, 1, 2, 3])) if draw < 0.3
                             else int(np.exp(rng.uniform(0, 12)))]
            else:
                row[name] = [float(rng.normal(0, 100))]
        if i == 0:
            row = {name: [] for name in raw_spec}  # every field missing
        rows.append(row)
    return rows


def test_split_rows(data_dir: pathlib.Path, limit: int) -> tuple[list[dict[str, list]], str] | None:
    """Up to `limit` raw rows of the inputs stats.json records, parsed by the run's own spec.

    Under the default hash split, re-parsing the inputs with the recorded seed
    yields exactly the raw rows behind the test TFRecords (`pipeline.parse`);
    under a given or time split, the first rows of the inputs. None when the
    inputs are gone or the run records no spec.
    """
    from pipeline import raw_rows
    from pipeline.dataset_info import STATS_FILE
    from pipeline.job import run_spec
    from pipeline.specs import SpecError

    stats = json.loads((data_dir / STATS_FILE).read_text())
    paths = [item["path"] for item in stats.get("inputs", [])]
    if not paths or not all(pathlib.Path(p).is_file() for p in paths):
        return None
    try:
        spec = run_spec(str(data_dir))
    except SpecError:
        return None
    hashed = stats.get("split", {}).get("mode", "hash") == "hash"
    what = "test split raw rows" if hashed else "raw rows"
    rows: list[dict[str, list]] = []
    for path in paths:
        for features, _label in raw_rows.iter_raw_examples(path, spec, split="test" if hashed else None,
                                                           seed=int(stats.get("seed", 0))):
            rows.append(features)
            if len(rows) >= limit:
                return rows, f"{what} of {', '.join(paths)}"
    return (rows, f"{what} of {', '.join(paths)}") if rows else None


def read_raw_rows(path: str, fmt: str | None, dataset: str, limit: int) -> list[dict[str, list]]:
    """Up to `limit` raw rows of `path` in a pipeline input format."""
    from pipeline import raw_rows  # the pipeline's reader: the same parsing as training

    spec = raw_rows.load_spec(dataset=fmt or dataset)
    rows = []
    for features, _label in raw_rows.iter_raw_examples(path, spec):
        rows.append(features)
        if len(rows) >= limit:
            break
    if not rows:
        raise ExportUsageError(f"--verify_input {path} holds no raw rows (format {fmt or dataset})")
    return rows


def _keras_reference(
    model: Any, transform_layer: Any, raw_spec: Mapping[str, Any], names: Sequence[str],
    serialized: Sequence[bytes], oov_fields: Sequence[str] = (), calibration: Calibration = IDENTITY,
) -> tuple[np.ndarray, np.ndarray]:
    """The trained Keras model on the TFT-transformed rows, in process:
    (sigmoid(calibrated logit), oov_fraction)."""
    from trainer.scoring import raw_scores

    p, oov = raw_scores(model, transform_layer, dict(raw_spec), list(names), tf.constant(list(serialized)),
                        list(oov_fields), calibration)
    return p.numpy(), oov.numpy()


def verify(
    export_dir: pathlib.Path, model: Any, transform_layer: Any, raw_spec: Mapping[str, Any],
    names: Sequence[str], rows: Sequence[Mapping[str, list]], source: str, tolerance: float,
    batch_size: int = 512, oov_fields: Sequence[str] = (), calibration: Calibration = IDENTITY,
) -> Verification:
    """The saved model, loaded as TF Serving loads it, vs Keras on the TFT-transformed rows
    (its logits mapped by `calibration`: the calibrated answer the export must serve).

    Every signature runs under the session loader (fresh graph and session,
    restore, init op, tensors by SignatureDef name: `tensorflow_model_server`'s
    path, and the bundled server's); `serving_default` also under
    `tf.saved_model.load` (Python callers, `trainer`-side tools). Raises
    ExportError beyond `tolerance` or when a loader fails.
    """
    dtypes = examples.feature_kinds(raw_spec)
    diffs = dict.fromkeys(("session", "fields", "classify", "tf2", "oov"), 0.0)
    mostly_oov = 0
    try:
        tf2_default = tf.saved_model.load(str(export_dir)).signatures[module.DEFAULT_SIGNATURE]
        with session_loader.SessionModel(export_dir) as session:
            for start in range(0, len(rows), batch_size):
                chunk = rows[start:start + batch_size]
                serialized = examples.serialize_rows(chunk, dtypes)
                batch = np.array(serialized, dtype=object)
                reference, reference_oov = _keras_reference(model, transform_layer, raw_spec, names,
                                                            serialized, oov_fields, calibration)
                default = session.run(module.DEFAULT_SIGNATURE, {module.EXAMPLES_INPUT: batch})
                texts = examples.field_texts(chunk, list(raw_spec))
                fields = session.run(module.FIELDS_SIGNATURE,
                                     {k: np.array(v, dtype=object) for k, v in texts.items()})
                scores = session.run(module.CLASSIFY_SIGNATURE,
                                     {module.CLASSIFY_INPUT: batch})["scores"]
                tf2 = tf2_default(examples=tf.constant(serialized))["probabilities"].numpy()
                p = default["probabilities"]
                oov = default[module.OOV_OUTPUT]
                mostly_oov += int(np.count_nonzero(oov > MOSTLY_OOV_FRACTION))
                for key, got, want in (("session", p, reference), ("fields", fields["probabilities"], p),
                                       ("classify", scores[:, 1], p), ("tf2", tf2, reference),
                                       ("oov", oov, reference_oov)):
                    diffs[key] = max(diffs[key], float(np.max(np.abs(got - want))))
    except session_loader.SessionLoadError as err:
        raise ExportError(f"export verification failed: {err}; nothing was published") from err
    result = Verification(len(rows), source, diffs["session"], diffs["fields"], diffs["classify"],
                          diffs["tf2"], tolerance, diffs["oov"], mostly_oov, calibration)
    if not all(d <= tolerance for d in diffs.values()):
        raise ExportError(
            f"export verification failed on {len(rows)} rows ({source}): max abs diff, session "
            f"loader: serving_default vs Keras = {diffs['session']:.3g}, raw_fields vs "
            f"serving_default = {diffs['fields']:.3g}, classification vs serving_default = "
            f"{diffs['classify']:.3g}; tf.saved_model.load: serving_default vs Keras = "
            f"{diffs['tf2']:.3g}, oov_fraction vs TFT ids = {diffs['oov']:.3g} (tolerance {tolerance:g}; "
            f"Keras logits calibrated by {calibration.describe()}); "
            "nothing was published"
        )
    return result


def write_warmup(
    export_dir: pathlib.Path, model_name: str, raw_spec: Mapping[str, Any],
    rows: Sequence[Mapping[str, list]],
) -> int:
    """Real PredictionLog records TF Serving replays before marking the version AVAILABLE."""
    dtypes = examples.feature_kinds(raw_spec)
    logs = []
    for size in (1, min(len(rows), 64)):
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=module.DEFAULT_SIGNATURE))
        request.inputs[module.EXAMPLES_INPUT].CopyFrom(
            tf.make_tensor_proto(examples.serialize_rows(rows[:size], dtypes), dtype=tf.string))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=module.FIELDS_SIGNATURE))
    for name, values in examples.field_texts(rows[:8], list(raw_spec)).items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(values, dtype=tf.string))
    logs.append(prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)))
    classify = classification_pb2.ClassificationRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=module.CLASSIFY_SIGNATURE))
    for row in rows[:8]:
        classify.input.example_list.examples.add().CopyFrom(examples.to_example(row, dtypes))
    logs.append(prediction_log_pb2.PredictionLog(
        classify_log=prediction_log_pb2.ClassifyLog(request=classify)))
    extra = export_dir / "assets.extra"
    extra.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(extra / WARMUP_FILE)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return len(logs)


def export(
    run_dir: str, data_dir: str, model_base_path: str, model_name: str,
    version: int | None = None, verify_input: str | None = None, input_format: str | None = None,
    verify_rows: int = 1000, tolerance: float = 1e-5, seed: int = 0,
    batching: configs.BatchingSettings | None = None,
) -> ExportResult:
    """Builds, verifies and publishes BASE/NAME/<version>; writes the three configs."""
    import tensorflow_transform as tft  # sets TF_USE_LEGACY_KERAS: import keras explicitly elsewhere

    from pipeline.dataset_info import read_dataset_info
    from pipeline.job import run_spec
    from pipeline.remote import local_view
    from pipeline.transform import oov_fields
    from trainer.calibration import read_calibration
    from trainer.model_io import load_model, serving_form
    from trainer.scoring import check_compatible

    data_dir = str(local_view(data_dir))  # a URI TF cannot read here is staged once, marker checked
    try:
        configs.check_model_name(model_name, "--model_name")  # one safe folder name: BASE/NAME stays in BASE
    except configs.ConfigFileError as err:
        raise ExportUsageError(str(err)) from err
    info = read_dataset_info(data_dir)
    check_compatible(pathlib.Path(run_dir), info)  # the model's ids come from --data's graph: the same one?
    tft_output = tft.TFTransformOutput(str(info.transform_output_dir))
    raw_spec = {k: v for k, v in tft_output.raw_feature_spec().items() if k != info.label_key}
    model = load_model(run_dir)
    calibration = read_calibration(run_dir)  # the identity for a run without calibration.json
    transform_layer = tft_output.transform_features_layer()
    categorical = oov_fields(run_spec(data_dir))

    base = pathlib.Path(model_base_path)
    model_dir = base / model_name
    if model_dir.resolve().parent != base.resolve():  # e.g. BASE/NAME is a symlink elsewhere
        raise ExportUsageError(f"{model_dir} resolves outside --model_base_path {base}")
    existing = versions(model_dir)
    if version is None:
        version = (existing[-1] + 1) if existing else 1
    elif version < 1:
        raise ExportUsageError(f"--version must be >= 1. Received: {version}")
    final_dir = model_dir / str(version)
    if final_dir.exists():
        raise ExportUsageError(f"{final_dir} already exists: pass another --version or none for the next")

    if verify_input:
        rows = read_raw_rows(verify_input, input_format, info.dataset, verify_rows)
        source = f"raw rows of {verify_input}"
    elif found := test_split_rows(pathlib.Path(data_dir), verify_rows):
        rows, source = found
    else:
        rows = synthetic_rows(raw_spec, verify_rows, seed)
        source = "synthetic rows (the pipeline inputs are gone): unseen tokens, missing cells"

    created = not model_dir.exists()
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = pathlib.Path(tempfile.mkdtemp(prefix=f".export-{version}-", dir=model_dir))
    tmp_dir.chmod(0o755)  # mkdtemp makes it 0700: a server running as another user could not read it
    try:
        # The exported form may differ (a folded head); it is verified against the trained model.
        module.write_savedmodel(tmp_dir, serving_form(model), transform_layer, raw_spec, info.field_names,
                                calibration, oov_fields=categorical)
        verification = verify(tmp_dir, model, transform_layer, raw_spec, info.field_names,
                              rows, source, tolerance, oov_fields=categorical, calibration=calibration)
        warmup = write_warmup(tmp_dir, model_name, raw_spec, rows)
        tmp_dir.rename(final_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if created:  # no empty BASE/NAME left behind for a server to watch
            with contextlib.suppress(OSError):
                model_dir.rmdir()
        raise
    written = [configs.update_models_config(base, model_name)]
    if batching is not None or not (base / configs.BATCHING_CONFIG).exists():  # keep tuned ones
        written.append(configs.write_batching_config(base, batching or configs.BatchingSettings()))
    if not (base / configs.MONITORING_CONFIG).exists():
        written.append(configs.write_monitoring_config(base))
    return ExportResult(final_dir, version, verification, warmup, tuple(written))
