"""The exported graph: raw features -> TFT transform -> Keras 3 model -> probability.

The TFT layer is a tf_keras object and cannot live inside a Keras 3 model
(DESIGN.md section 4), so both are held by a plain `tf.Module` and saved with
`tf.saved_model.save`. Three signatures:

- `serving_default`: `examples` (string[None], serialized raw tf.Example)
  -> `probabilities`, `logits` (float32[None]).
- `raw_fields`: one string[None] tensor per raw field holding the cell text as
  in the input file (b"" = missing), for clients that cannot build tf.Example;
  numeric fields are parsed in the graph, a non-number is INVALID_ARGUMENT
  naming the field. Same outputs.
- `classification`: `inputs` (serialized tf.Example) -> `scores`
  (float32[None, 2]: P(0), P(1)) and `classes` (string[None, 2]: "0", "1"),
  with the classify method name, so that TF Serving's Classify API answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf

DEFAULT_SIGNATURE = "serving_default"
FIELDS_SIGNATURE = "raw_fields"
CLASSIFY_SIGNATURE = "classification"
CLASSIFY_METHOD = "tensorflow/serving/classify"
EXAMPLES_INPUT = "examples"
CLASSIFY_INPUT = "inputs"

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


class ServingModule(tf.Module):
    """Holds the TFT layer (tf_keras) and the trained Keras 3 model side by side."""

    def __init__(
        self,
        model: Any,
        transform_layer: Any,
        raw_feature_spec: Mapping[str, Any],
        field_names: Sequence[str],
    ) -> None:
        super().__init__(name="optfusion_serving")
        self.model = model
        self.transform_layer = transform_layer
        raw_spec = dict(raw_feature_spec)
        names = list(field_names)

        def predict_raw(raw: Mapping[str, Any]) -> dict[str, tf.Tensor]:
            transformed = self.transform_layer(dict(raw))
            features = {n: tf.reshape(tf.cast(transformed[n], tf.int64), [-1]) for n in names}
            logits = tf.reshape(tf.cast(self.model(features, training=False), tf.float32), [-1])
            return {"probabilities": tf.sigmoid(logits), "logits": logits}

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

        self.serve_examples = tf.function(
            serve_examples, input_signature=[tf.TensorSpec([None], tf.string, EXAMPLES_INPUT)]
        )
        self.serve_fields = tf.function(
            serve_fields,
            input_signature=[{n: tf.TensorSpec([None], tf.string, n) for n in raw_spec}],
        )
        self.classify = tf.function(
            classify, input_signature=[tf.TensorSpec([None], tf.string, CLASSIFY_INPUT)]
        )

    def signatures(self) -> dict[str, Any]:
        """The concrete functions `tf.saved_model.save` exports, by signature name."""
        return {
            DEFAULT_SIGNATURE: self.serve_examples.get_concrete_function(),
            FIELDS_SIGNATURE: self.serve_fields.get_concrete_function(),
            CLASSIFY_SIGNATURE: self.classify.get_concrete_function(),
        }
