"""A tiny model version built without the pipeline or the trainer, for fast server tests.

A small "transform" stands in for the TFT layer (the pipeline's id layout:
0 = OOV, 1 = missing; I1 hashed, C1 looked up in VOCABULARY) and a two-field
embedding model for the trained one; everything else (signatures, method
names, warmup records, layout) is what `serving export` writes.
"""

from __future__ import annotations

import pathlib

import grpc
import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2, model_pb2, prediction_service_pb2_grpc

from pipeline.features import FIRST_VALUE_ID, MISSING_ID, OOV_ID
from serving import examples, export, module
from trainer.calibration import IDENTITY, Calibration

RAW_SPEC = {
    "I1": tf.io.VarLenFeature(tf.int64),
    "C1": tf.io.VarLenFeature(tf.string),
}
FIELDS = ["I1", "C1"]
OOV_FIELDS = ["C1"]  # the categorical field the `oov_fraction` output counts
BUCKETS = 50
VOCABULARY = [b"abc", b"x", b"seen"]  # C1's tokens "seen in training"; others are OOV
ROWS: list[dict[str, list]] = [
    {"I1": [5], "C1": [b"abc"]},
    {"I1": [], "C1": [b"never-seen"]},
    {"I1": [-2], "C1": []},
    {"I1": [123456], "C1": [b"x"]},
]
DTYPES = examples.feature_kinds(RAW_SPEC)
SERIALIZED = examples.serialize_rows(ROWS, DTYPES)


class HashTransform(tf.Module):
    """Raw sparse features -> ids in [0, BUCKETS): I1 hashed into [2, BUCKETS), C1 by
    VOCABULARY (2.., OOV_ID for other tokens); missing -> MISSING_ID."""

    def __call__(self, raw: dict) -> dict:
        out = {}
        for name in FIELDS:
            sparse = raw[name]
            batch = sparse.dense_shape[0]
            if sparse.dtype == tf.string:
                match = tf.equal(sparse.values[:, tf.newaxis], tf.constant(VOCABULARY)[tf.newaxis, :])
                position = tf.argmax(tf.cast(match, tf.int64), axis=1) + FIRST_VALUE_ID
                ids = tf.where(tf.reduce_any(match, axis=1), position, OOV_ID)
            else:
                text = tf.strings.as_string(sparse.values)
                ids = tf.strings.to_hash_bucket_fast(text, BUCKETS - FIRST_VALUE_ID) + FIRST_VALUE_ID
            # Scatter the present rows' ids over MISSING_ID.
            present = tf.scatter_nd(sparse.indices[:, :1], ids - MISSING_ID, tf.reshape(batch, [1]))
            out[name] = present + MISSING_ID
        return out


def tiny_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = {n: keras.Input(shape=(), dtype="int64", name=n) for n in FIELDS}
    embedded = [keras.layers.Embedding(BUCKETS, 4)(inputs[n]) for n in FIELDS]
    hidden = keras.layers.Concatenate()(embedded)
    logits = keras.layers.Dense(1, kernel_initializer=keras.initializers.RandomNormal(0, 2.0))(hidden)
    return keras.Model(inputs, logits)


def write_version(model_dir: pathlib.Path, version: int, model_name: str, seed: int = 0,
                  calibration: Calibration = IDENTITY) -> pathlib.Path:
    """Saves a tiny model as model_dir/<version> the way `serving export` does (with `calibration`)."""
    target = model_dir / str(version)
    tmp = model_dir / f".tmp-{version}"
    module.write_savedmodel(tmp, tiny_model(seed), HashTransform(), RAW_SPEC, FIELDS, calibration,
                            oov_fields=OOV_FIELDS)
    export.write_warmup(tmp, model_name, RAW_SPEC, ROWS)
    tmp.rename(target)
    return target


def keras_logits(rows: list[dict], seed: int = 0) -> np.ndarray:
    """The Keras model's logits on the transformed rows, in process."""
    serialized = examples.serialize_rows(rows, examples.feature_kinds(RAW_SPEC))
    features = HashTransform()(tf.io.parse_example(tf.constant(serialized), RAW_SPEC))
    return tf.reshape(tiny_model(seed)(features, training=False), [-1]).numpy()


def keras_probabilities(rows: list[dict], seed: int = 0) -> np.ndarray:
    """What every signature of an uncalibrated (T = 1) version must answer."""
    return tf.sigmoid(keras_logits(rows, seed)).numpy()


def reference_probabilities(path: pathlib.Path, rows: list[dict]) -> np.ndarray:
    """The in-process SavedModel's answer, what the server must reproduce."""
    loaded = tf.saved_model.load(str(path))
    serialized = examples.serialize_rows(rows, examples.feature_kinds(RAW_SPEC))
    return loaded.signatures["serving_default"](examples=tf.constant(serialized))[
        "probabilities"].numpy()


def grpc_classify(target: str, name: str = "tiny") -> classification_pb2.ClassificationResponse:
    """A gRPC Classify of ROWS on the `classification` signature (what REST and predict are checked against)."""
    request = classification_pb2.ClassificationRequest(
        model_spec=model_pb2.ModelSpec(name=name, signature_name="classification"))
    for row in ROWS:
        request.input.example_list.examples.add().CopyFrom(examples.to_example(row, DTYPES))
    with grpc.insecure_channel(target) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Classify(request, timeout=30)
