"""Run a SavedModel the way `tensorflow_model_server` does: the TF1 session loader.

TF Serving's C++ loader restores the variables through the saver, runs the
init op (tables, assets) and then feeds and fetches each signature by the
tensor names in its SignatureDef. `tf.compat.v1.saved_model.loader.load` in a
fresh graph and session takes the same path; `tf.saved_model.load` does not
(it rebuilds Python objects and can restore variables the session loader
cannot find, docs/DESIGN.md section "Serving"). Export verification, the
contract tests and `scripts/tfserving_runtime_check.sh` all load through here.

This module imports only TensorFlow and numpy, so that the runtime check can
run it in a venv holding nothing but the TensorFlow release of TF Serving:

    python serving/session_loader.py EXPORT_DIR --save REF.json     # record
    python serving/session_loader.py EXPORT_DIR --compare REF.json  # replay, compare
"""

from __future__ import annotations

import argparse
import base64
import json
import pathlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

from serving.limits import CALLER_THREAD_ROWS

SERVE_TAGS = ["serve"]
WARMUP_PATH = "assets.extra/tf_serving_warmup_requests"


def session_config(inter_op: int = 0, intra_op: int = 0) -> tf.compat.v1.ConfigProto:
    """The session options of tensorflow_model_server's `--tensorflow_inter_op_parallelism`
    and `--tensorflow_intra_op_parallelism`: 0 = TF picks; inter_op -1 runs every op in the
    calling thread (no thread hand-off per op, the low-latency setting at small batches)."""
    return tf.compat.v1.ConfigProto(inter_op_parallelism_threads=inter_op,
                                    intra_op_parallelism_threads=intra_op)


class SessionLoadError(RuntimeError):
    """The session loader cannot restore or run the SavedModel."""


class SessionModel:
    """One SavedModel loaded into a fresh graph and TF1 session, run by SignatureDef names."""

    def __init__(self, export_dir: str | pathlib.Path,
                 config: tf.compat.v1.ConfigProto | None = None):
        self.export_dir = str(export_dir)
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph, config=config)
        try:
            with self._graph.as_default():
                meta_graph = tf.compat.v1.saved_model.loader.load(
                    self._session, SERVE_TAGS, self.export_dir)
        except (tf.errors.OpError, RuntimeError, ValueError, OSError) as err:
            self._session.close()
            raise SessionLoadError(
                f"{self.export_dir}: the session loader (TF Serving's path) cannot restore it: "
                f"{_reason(err)}") from err
        self.signature_defs = dict(meta_graph.signature_def)

    def _definition(self, signature: str) -> Any:
        if signature not in self.signature_defs:
            raise SessionLoadError(
                f"{self.export_dir}: no signature {signature!r}; has {sorted(self.signature_defs)}")
        return self.signature_defs[signature]

    def callable(self, signature: str, caller_thread_rows: int = CALLER_THREAD_ROWS
                 ) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
        """One signature as a C++ `Session::MakeCallable` handle, for repeated calls.

        Feeds, fetches and the pruned graph are resolved once; a call is one
        `TF_SessionRunCallable`. (`Session.make_callable` with a feed list falls back to
        `Session.run`, whose per-call Python feed and fetch handling took 0.3 ms of a
        0.67 ms batch-1 call on the 2-core VM.)

        A batch of at most `caller_thread_rows` rows runs every op in the calling thread
        (`RunOptions.inter_op_thread_pool = -1`): no hand-off to the inter-op pool per op,
        0.2 ms of 1.1 at batch 1. Larger batches keep the pool, where independent ops run
        in parallel (batch 512: 8.5 ms instead of 14). 0 = always the pool.
        """
        definition = self._definition(signature)
        keys_in, keys_out = sorted(definition.inputs), sorted(definition.outputs)
        dtypes = [tf.as_dtype(definition.inputs[k].dtype).as_numpy_dtype for k in keys_in]

        def handle(in_caller_thread: bool) -> Callable[..., list[np.ndarray]]:
            options = config_pb2.CallableOptions(
                feed=[definition.inputs[k].name for k in keys_in],
                fetch=[definition.outputs[k].name for k in keys_out])
            if in_caller_thread:
                options.run_options.inter_op_thread_pool = -1
            # The handle API of tf.compat.v1.Session (TF_SessionMakeCallable); Keras 2's
            # graph-mode backend runs its functions through it.
            return self._session._make_callable_from_options(options)

        pooled, in_caller = handle(False), handle(True)

        def call(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            # The handle converts nothing: each feed must already have the signature's dtype.
            arrays = [np.asarray(inputs[k], dtype=d) for k, d in zip(keys_in, dtypes, strict=True)]
            small = bool(arrays) and arrays[0].ndim > 0 and len(arrays[0]) <= caller_thread_rows
            return dict(zip(keys_out, (in_caller if small else pooled)(*arrays), strict=True))

        return call

    def run(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feeds `inputs` by the signature's input tensor names, fetches all its outputs."""
        definition = self._definition(signature)
        if set(inputs) != set(definition.inputs):
            raise SessionLoadError(
                f"signature {signature!r} takes inputs {sorted(definition.inputs)}; "
                f"received {sorted(inputs)}")
        fetches = {key: info.name for key, info in definition.outputs.items()}
        feed = {definition.inputs[key].name: value for key, value in inputs.items()}
        try:
            return self._session.run(fetches, feed_dict=feed)
        except tf.errors.OpError as err:
            raise SessionLoadError(
                f"{self.export_dir}: signature {signature!r} fails under the session loader: "
                f"{_reason(err)}") from err

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> SessionModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_signatures(
    export_dir: str | pathlib.Path,
    feeds: Mapping[str, Mapping[str, np.ndarray]],
) -> dict[str, dict[str, np.ndarray]]:
    """{signature: {input key: array}} -> {signature: {output key: array}}, one fresh load."""
    with SessionModel(export_dir) as loaded:
        return {name: loaded.run(name, inputs) for name, inputs in feeds.items()}


def _reason(err: Exception) -> str:
    """The error text without TF's empty "Graph execution error:" lead, on one short line."""
    text = getattr(err, "message", None) or str(err) or type(err).__name__
    text = " ".join(text.replace("Graph execution error:", "").split())
    return text if len(text) <= 400 else text[:400] + "..."


def _warmup_feeds(export_dir: pathlib.Path) -> dict[str, dict[str, np.ndarray]]:
    """The largest Predict request per signature and the Classify request of the warmup file."""
    from tensorflow_serving.apis import prediction_log_pb2  # record side only

    feeds: dict[str, dict[str, np.ndarray]] = {}
    sizes: dict[str, int] = {}
    for record in tf.data.TFRecordDataset(str(export_dir / WARMUP_PATH)):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if log.HasField("predict_log"):
            request = log.predict_log.request
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            name = request.model_spec.signature_name or "serving_default"
            rows = len(next(iter(inputs.values())))
            if rows > sizes.get(name, 0):
                feeds[name], sizes[name] = inputs, rows
        elif log.HasField("classify_log"):
            request = log.classify_log.request
            serialized = [e.SerializeToString() for e in request.input.example_list.examples]
            feeds[request.model_spec.signature_name] = {"inputs": np.array(serialized, dtype=object)}
    if not feeds:
        raise SessionLoadError(f"{export_dir / WARMUP_PATH} holds no Predict or Classify request")
    return feeds


def _encode(array: np.ndarray) -> dict:
    if array.dtype == object or array.dtype.kind == "S":
        return {"bytes": [base64.b64encode(bytes(v)).decode() for v in array.ravel()],
                "shape": list(array.shape)}
    return {"values": array.ravel().tolist(), "dtype": str(array.dtype), "shape": list(array.shape)}


def _decode(item: Mapping) -> np.ndarray:
    if "bytes" in item:
        values = [base64.b64decode(v) for v in item["bytes"]]
        return np.array(values, dtype=object).reshape(item["shape"])
    return np.array(item["values"], dtype=item["dtype"]).reshape(item["shape"])


def save_reference(export_dir: pathlib.Path, path: pathlib.Path) -> dict:
    """Runs the warmup requests through the session loader here; writes inputs and outputs."""
    feeds = _warmup_feeds(export_dir)
    outputs = run_signatures(export_dir, feeds)
    record = {
        "tensorflow": tf.__version__,
        "export_dir": str(export_dir),
        "signatures": {
            name: {"inputs": {k: _encode(v) for k, v in feeds[name].items()},
                   "outputs": {k: _encode(np.asarray(v)) for k, v in outputs[name].items()}}
            for name in feeds
        },
    }
    path.write_text(json.dumps(record))
    return record


def compare_reference(
    export_dir: pathlib.Path, path: pathlib.Path, atol: float, repeat: int = 1
) -> list[str]:
    """Replays a saved reference `repeat` times on one load; one line per output, raises on a mismatch."""
    record = json.loads(path.read_text())
    feeds = {name: {k: _decode(v) for k, v in sig["inputs"].items()}
             for name, sig in record["signatures"].items()}
    with SessionModel(export_dir) as loaded:
        for _ in range(max(repeat, 1)):
            lines = _check(record, {name: loaded.run(name, inputs) for name, inputs in feeds.items()},
                           atol)
    return lines


def _check(record: Mapping, got: Mapping[str, Mapping[str, np.ndarray]], atol: float) -> list[str]:
    lines = []
    for name, sig in record["signatures"].items():
        for key, item in sig["outputs"].items():
            expected, actual = _decode(item), np.asarray(got[name][key])
            if expected.shape != actual.shape:
                raise SessionLoadError(f"{name}/{key}: shape {actual.shape}, recorded {expected.shape}")
            if expected.dtype == object:
                if [bytes(v) for v in expected.ravel()] != [bytes(v) for v in actual.ravel()]:
                    raise SessionLoadError(f"{name}/{key}: values differ from the recording")
                lines.append(f"{name}/{key}: {actual.size} values equal")
                continue
            diff = float(np.max(np.abs(actual.astype(np.float64) - expected))) if actual.size else 0.0
            if not diff <= atol:
                raise SessionLoadError(f"{name}/{key}: max abs diff {diff:.3g} > {atol:g}")
            lines.append(f"{name}/{key}: {actual.size} values, max abs diff {diff:.2e}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", type=pathlib.Path, help="a SavedModel version dir")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--save", type=pathlib.Path, help="record warmup inputs and outputs here")
    mode.add_argument("--compare", type=pathlib.Path, help="replay this recording and compare")
    parser.add_argument("--atol", type=float, default=1e-6, help="max abs diff of float outputs")
    parser.add_argument("--repeat", type=int, default=1,
                        help="with --compare: replay this many times on one load")
    args = parser.parse_args(argv)
    try:
        if args.save:
            record = save_reference(args.export_dir, args.save)
            print(f"recorded {sorted(record['signatures'])} with TensorFlow {tf.__version__}")
        else:
            for line in compare_reference(args.export_dir, args.compare, args.atol, args.repeat):
                print(line)
            print(f"session loader OK with TensorFlow {tf.__version__}")
    except SessionLoadError as err:
        print(f"session_loader: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
