"""The exported graph: raw features -> TFT transform -> Keras 3 model -> probability.

The TFT layer is a tf_keras object and cannot live inside a Keras 3 model
(docs/DESIGN.md section "Serving"), so both are tracked side by side by a
`keras.export.ExportArchive`, whose endpoints parse raw inputs, apply the TFT
layer and call the model. Three signatures:

- `serving_default`: `examples` (string[None], serialized raw tf.Example)
  -> `probabilities`, `logits` (float32[None]) and `oov_fraction`
  (float32[None]: per row, the fraction of its categorical fields whose id
  is the OOV id; near 1 for rows of another dataset, see `with_oov_fraction`).
  `probabilities` and `logits` are calibrated: `logits` = the run's
  calibration map (trainer/calibration.py: temperature, beta, isotonic) of the model
  logit and `probabilities` = sigmoid(`logits`), so the pair stays consistent
  for every client; the model's own logit for a run without calibration.
- `raw_fields`: one string[None] tensor per raw field holding the cell text as
  in the input file (b"" = missing; timestamps as Unix seconds, docs/SCHEMA.md),
  for clients that cannot build tf.Example; numeric fields are parsed in the
  graph, a non-number is INVALID_ARGUMENT naming the field. Same outputs.
- `classification`: `inputs` (serialized tf.Example) -> `scores`
  (float32[None, 2]: P(0), P(1)) and `classes` (string[None, 2]: "0", "1"),
  with the classify method name, so that TF Serving's Classify API answers.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import keras  # explicitly: importing tensorflow_transform sets TF_USE_LEGACY_KERAS
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from trainer.calibration import IDENTITY, Calibration

DEFAULT_SIGNATURE = "serving_default"
FIELDS_SIGNATURE = "raw_fields"
CLASSIFY_SIGNATURE = "classification"
CLASSIFY_METHOD = "tensorflow/serving/classify"
EXAMPLES_INPUT = "examples"
CLASSIFY_INPUT = "inputs"
OOV_OUTPUT = "oov_fraction"

_NUMBER_PATTERNS = {
    True: r"[+-]?[0-9]+",  # integer dtypes
    False: r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(inf|nan)",
}


def _parse_text(text: tf.Tensor, dtype: tf.dtypes.DType, name: str) -> tf.Tensor:
    """Cell text -> dtype, failing with the field's name on a non-number."""
    if dtype == tf.string:
        return text
    ok = tf.reduce_all(tf.strings.regex_full_match(text, _NUMBER_PATTERNS[dtype.is_integer]))
    check = tf.debugging.Assert(ok, [f"input {name!r} of {FIELDS_SIGNATURE}: not a number", text])
    with tf.control_dependencies([check]):
        return tf.strings.to_number(text, out_type=dtype)


def _fields_to_raw(texts: Mapping[str, tf.Tensor], raw_spec: Mapping[str, Any]) -> dict[str, Any]:
    """Per-field cell texts -> the tensors `tf.io.parse_example(raw_spec)` would give."""
    raw: dict[str, Any] = {}
    for name, spec in raw_spec.items():
        text = texts[name]
        present = tf.strings.length(text) > 0
        if isinstance(spec, tf.io.VarLenFeature):
            rows = tf.where(present)
            values = _parse_text(tf.boolean_mask(text, present), spec.dtype, name)
            width = tf.cast(tf.reduce_any(present), tf.int64)
            raw[name] = tf.SparseTensor(
                indices=tf.concat([rows, tf.zeros_like(rows)], axis=1),
                values=values,
                dense_shape=tf.stack([tf.size(text, out_type=tf.int64), width]),
            )
        elif isinstance(spec, tf.io.FixedLenFeature):
            if spec.default_value is None:
                check = tf.debugging.Assert(
                    tf.reduce_all(present),
                    [f"input {name!r} of {FIELDS_SIGNATURE}: missing and the field has no default"],
                )
                with tf.control_dependencies([check]):
                    value = _parse_text(text, spec.dtype, name)
            else:
                filler = tf.fill(tf.shape(text), "0" if spec.dtype != tf.string else "")
                parsed = _parse_text(tf.where(present, text, filler), spec.dtype, name)
                default = tf.cast(tf.reshape(spec.default_value, [-1])[0], spec.dtype)
                value = tf.where(present, parsed, default)
            raw[name] = tf.reshape(value, [-1, *spec.shape])
        else:
            raise ValueError(
                f"raw feature {name!r}: only FixedLenFeature and VarLenFeature are served. "
                f"Received: {type(spec).__name__}"
            )
    return raw


def with_oov_fraction(outputs: dict[str, tf.Tensor], transformed: Mapping[str, tf.Tensor],
                      oov_fields: Sequence[str]) -> dict[str, tf.Tensor]:
    """Adds OOV_OUTPUT: per row, the fraction of `oov_fields` (categorical) at the OOV id.

    Rows of another schema or dataset get confident-looking constants otherwise
    (every id OOV); this output lets the server count them and clients warn.
    """
    from pipeline.transform import oov_fraction  # TFT-heavy: only where a model is built

    return {**outputs, OOV_OUTPUT: oov_fraction(dict(transformed), list(oov_fields))}


def write_savedmodel(
    export_dir: str | pathlib.Path,
    model: Any,
    transform_layer: Any,
    raw_feature_spec: Mapping[str, Any],
    field_names: Sequence[str],
    calibration: Calibration = IDENTITY,
    *,
    oov_fields: Sequence[str],
) -> None:
    """Saves the three signatures over `transform_layer` + `model` into `export_dir`,
    the logits mapped by `calibration` (graph constants) before the sigmoid.

    `keras.export.ExportArchive` tracks the Keras 3 model's variables so that
    the session loader (TF Serving's C++ path) restores them; a plain
    `tf.Module` holding the model saves variables only the TF2 loader finds
    (docs/DESIGN.md section "Serving"). The TFT layer (tf_keras) and its
    tables are tracked as a trackable resource beside it. `oov_fields`: the
    categorical fields `oov_fraction` counts (pipeline.transform.oov_fields).
    """
    raw_spec = dict(raw_feature_spec)
    names = list(field_names)

    def predict_raw(raw: Mapping[str, Any]) -> dict[str, tf.Tensor]:
        transformed = transform_layer(dict(raw))
        # The TFT outputs are [B] already; no per-field reshape (a graph op each, at every request).
        features = {n: tf.cast(transformed[n], tf.int64) for n in names}
        logits = tf.reshape(tf.cast(model(features, training=False), tf.float32), [-1])
        logits = calibration.apply_tf(logits)
        return with_oov_fraction({"probabilities": tf.sigmoid(logits), "logits": logits}, features,
                                 oov_fields)

    def serve_examples(examples: tf.Tensor) -> dict[str, tf.Tensor]:
        return predict_raw(tf.io.parse_example(examples, raw_spec))

    def serve_fields(texts: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return predict_raw(_fields_to_raw(texts, raw_spec))

    def classify(inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        p = serve_examples(inputs)["probabilities"]
        n = tf.shape(p)[0]
        return {
            "scores": tf.stack([1.0 - p, p], axis=1),
            "classes": tf.tile(tf.constant([["0", "1"]]), tf.stack([n, 1])),
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(transform_layer)
    archive.add_endpoint(DEFAULT_SIGNATURE, serve_examples,
                         [tf.TensorSpec([None], tf.string, EXAMPLES_INPUT)])
    archive.add_endpoint(FIELDS_SIGNATURE, serve_fields,
                         [{n: tf.TensorSpec([None], tf.string, n) for n in raw_spec}])
    archive.add_endpoint(CLASSIFY_SIGNATURE, classify,
                         [tf.TensorSpec([None], tf.string, CLASSIFY_INPUT)])
    # ExportArchive saves the tables of tracked objects but not their other assets:
    # without this, a TFT asset the graph only captures would be baked in as an
    # absolute path into the pipeline's output dir instead of travelling in assets/.
    archive._tf_trackable.transform_assets = [
        t for t in tf.train.TrackableView(transform_layer).descendants()
        if isinstance(t, tf.saved_model.Asset)
    ]
    archive.write_out(str(export_dir), verbose=False)
    set_method_name(pathlib.Path(export_dir), CLASSIFY_SIGNATURE, CLASSIFY_METHOD)


def set_method_name(export_dir: pathlib.Path, signature: str, method_name: str) -> None:
    """Rewrites one SignatureDef's method name (SavedModel saving always writes predict)."""
    path = export_dir / "saved_model.pb"
    proto = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    for meta_graph in proto.meta_graphs:
        meta_graph.signature_def[signature].method_name = method_name
    path.write_bytes(proto.SerializeToString())
