"""One loaded model version: its signatures, input checks, batched execution.

Input checks follow the SignatureDef in saved_model.pb (what GetModelMetadata
reports), so a client gets INVALID_ARGUMENT naming the input for a wrong
dtype, shape, missing or unknown input, a declared shape its values do not
fill, or an empty batch, before any array is built or the graph runs; more
rows than `max_rows` is RESOURCE_EXHAUSTED. Errors raised inside the graph
(bad tf.Example bytes, a non-number in `raw_fields`) are mapped the same way.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import time
from collections.abc import Callable, Mapping, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from serving import tensors
from serving.batching import Batcher, QueueFullError
from serving.configs import BatchingSettings
from serving.limits import CALLER_THREAD_ROWS, DEFAULT_MAX_ROWS
from serving.metrics import PREDICT
from serving.session_loader import SessionModel

MAX_MESSAGE_CHARS = 400
# Called after each successful run with (model name, API, microseconds): runtime_latency.
RuntimeObserver = Callable[[str, str, float], None]


class ServingError(Exception):
    """A request that cannot be answered, with the gRPC status to answer it with."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _tf_message(message: str) -> str:
    """The reason in a TF runtime error, without the Python stack and node names."""
    if "Detected at node" in message:
        message = message.rstrip().rsplit("\n\n", 1)[-1]
    message = re.sub(r"\[\[\{\{node [^}]*\}\}\]\]|\[Op:[^\]]*\]", "", message)
    return message.replace("\\'", "'").strip()


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "..."


def _where(arrays: Mapping[str, np.ndarray]) -> str:
    """Prefix naming the input of a one-input signature (multi-input errors name their field)."""
    return f"input {next(iter(arrays))!r}: " if len(arrays) == 1 else ""


@dataclasses.dataclass
class _Signature:
    definition: meta_graph_pb2.SignatureDef
    batcher: Batcher


class Servable:
    """A SavedModel version, ready to run its signatures on batched requests."""

    def __init__(self, name: str, version: int, path: pathlib.Path, batching: BatchingSettings,
                 max_rows: int = DEFAULT_MAX_ROWS,
                 session_config: tf.compat.v1.ConfigProto | None = None,
                 caller_thread_rows: int = CALLER_THREAD_ROWS,
                 on_runtime: RuntimeObserver | None = None):
        self.name = name
        self.version = version
        self.path = path
        self.max_rows = max_rows
        self._on_runtime = on_runtime
        # TF Serving's own path: the session loader (restore, init op once), then each
        # signature as a callable fed and fetched by its SignatureDef tensor names.
        self._session = SessionModel(path, session_config)
        self.signature_defs = dict(self._session.signature_defs)  # what GetModelMetadata reports
        self._signatures: dict[str, _Signature] = {
            sig_name: _Signature(definition, Batcher(self._session.callable(sig_name, caller_thread_rows),
                                                     batching,
                                                     f"{name}-{version}-{sig_name}"))
            for sig_name, definition in self.signature_defs.items()
            if not sig_name.startswith("__saved_model")  # e.g. __saved_model_init_op: not servable
        }

    def signature(
        self, name: str, method: str | None = None,
        missing: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION,
    ) -> _Signature:
        """The named signature; `missing` is TF Serving's code for an unknown name in this API."""
        if name not in self._signatures:
            raise ServingError(
                missing,
                f'Serving signature key "{name}" not found: model {self.name!r} version '
                f"{self.version} has {sorted(self._signatures)}",
            )
        signature = self._signatures[name]
        if method is not None and signature.definition.method_name != method:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"signature {name!r} has method {signature.definition.method_name!r}, "
                f"expected {method!r}",
            )
        return signature

    def check_rows(self, rows: int) -> None:
        """RESOURCE_EXHAUSTED for a request of more than `max_rows` rows."""
        if rows > self.max_rows:
            raise ServingError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request of {rows} rows exceeds the server's limit of {self.max_rows} rows per "
                "request (--max_rows_per_request); split it into smaller requests",
            )

    def decode_inputs(
        self, signature: _Signature, inputs: Mapping[str, tensor_pb2.TensorProto]
    ) -> tuple[dict[str, np.ndarray], int]:
        """Checks request tensors against the SignatureDef; returns arrays and batch size."""
        expected = signature.definition.inputs
        missing = sorted(set(expected) - set(inputs))
        if missing:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"missing input(s) {missing}")
        unknown = sorted(set(inputs) - set(expected))
        if unknown:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown input(s) {unknown}; the signature takes {sorted(expected)}",
            )
        arrays: dict[str, np.ndarray] = {}
        batch: int | None = None
        for key, info in expected.items():
            proto = inputs[key]
            if proto.dtype != info.dtype:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input {key!r}: expected dtype {tensors.dtype_name(info.dtype)}, "
                    f"got {tensors.dtype_name(proto.dtype)}",
                )
            want = [d.size for d in info.tensor_shape.dim]
            try:
                got = tensors.declared_shape(proto)
                tensors.check_payload(proto)
            except ValueError as err:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input {key!r}: {err}") from err
            if not info.tensor_shape.unknown_rank and (
                len(want) != len(got) or any(w not in (-1, g) for w, g in zip(want, got, strict=True))
            ):
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input {key!r}: expected shape {want} (-1 = any), got {got}",
                )
            if got:
                self.check_rows(got[0])
            try:
                array = tensors.to_ndarray(proto)
            except ValueError as err:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input {key!r}: {err}") from err
            if array.ndim == 0 or array.shape[0] == 0:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"input {key!r}: empty batch (0 rows)"
                )
            if batch is not None and array.shape[0] != batch:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input {key!r}: batch size {array.shape[0]} differs from the other inputs' {batch}",
                )
            batch = array.shape[0]
            arrays[key] = array
        return arrays, int(batch or 0)

    def run(
        self, signature: _Signature, arrays: dict[str, np.ndarray], size: int,
        output_filter: Sequence[str] = (), api: str = PREDICT,
    ) -> dict[str, np.ndarray]:
        """Runs a batch of `size` rows; `api` (Predict, Classify) labels its runtime_latency."""
        outputs_wanted = list(output_filter) or list(signature.definition.outputs)
        unknown = sorted(set(outputs_wanted) - set(signature.definition.outputs))
        if unknown:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output_filter names unknown output(s) {unknown}; "
                f"the signature has {sorted(signature.definition.outputs)}",
            )
        start = time.perf_counter()
        try:
            outputs = signature.batcher.run(arrays, size)
        except QueueFullError as err:
            raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err)) from err
        except tf.errors.InvalidArgumentError as err:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, _short(_where(arrays) + _tf_message(err.message))
            ) from err
        except UnicodeDecodeError as err:  # TF's error text quoted undecodable request bytes
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                _where(arrays) + "malformed value (could not be parsed, e.g. bytes that are not "
                "a serialized tf.Example)",
            ) from err
        if self._on_runtime is not None:
            self._on_runtime(self.name, api, (time.perf_counter() - start) * 1e6)
        return {k: outputs[k] for k in outputs_wanted}

    def stop(self) -> None:
        for signature in self._signatures.values():
            signature.batcher.stop()
        # The session is not closed here: a request running inline may still use it; it is
        # released with the last reference to this servable.
