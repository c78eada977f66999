"""TF Serving's REST API (g3doc/api_rest.md) for the bundled server: JSON <-> the gRPC protos.

    POST /v1/models/NAME[/versions/N|/labels/L]:predict   {"instances": [...]} | {"inputs": ...}
    POST /v1/models/NAME[/versions/N|/labels/L]:classify  {"examples": [{feature: value}, ...]}
    GET  /v1/models/NAME[/versions/N|/labels/L]           model status
    GET  /v1/models/NAME[/versions/N|/labels/L]/metadata  signature defs

A JSON request becomes the PredictRequest / ClassificationRequest the gRPC
API takes and is answered by the same handlers, so both APIs give the same
numbers, checks and limits. The JSON shapes follow TF Serving's
util/json_tensor.cc: row requests answer `predictions` (one value per row
for one output, one object per row for several), columnar ones `outputs`;
bytes travel as {"b64": ...}; errors are {"error": message} with the HTTP
code TF Serving maps each gRPC code to (http_server.cc). Paths are parsed
as ParseModelInfo (http_rest_api_util.cc) and dispatched as
HttpRestApiHandler::ProcessRequest (http_rest_api_handler.cc) does: a method
other than GET/POST, or a path neither regex matches, is "Malformed request";
a version beyond int64 is "Failed to convert version" (both 400).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
)

from serving import handlers, tensors
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.module import DEFAULT_SIGNATURE
from serving.servable import ServingError

# TF Serving's routes (http_rest_api_util.cc), case-insensitive, matched in full.
PREDICT_ROUTE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE)
STATUS_ROUTE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE)
API_PREFIX = "/v1/"
PREDICT_METHODS = ("classify", "regress", "predict")  # compared case-sensitively, as TF Serving
MAX_VERSION = 2**63 - 1  # int64: absl::SimpleAtoi's limit
CORS_ORIGIN = re.compile(r"https?://")
BYTES_SUFFIX = "_bytes"  # string outputs named *_bytes are written as {"b64": ...}

_C = grpc.StatusCode
HTTP_STATUS = {
    _C.OK: 200, _C.CANCELLED: 499, _C.UNKNOWN: 500, _C.INVALID_ARGUMENT: 400,
    _C.DEADLINE_EXCEEDED: 504, _C.NOT_FOUND: 404, _C.ALREADY_EXISTS: 409,
    _C.PERMISSION_DENIED: 403, _C.RESOURCE_EXHAUSTED: 429, _C.FAILED_PRECONDITION: 400,
    _C.ABORTED: 409, _C.OUT_OF_RANGE: 400, _C.UNIMPLEMENTED: 501, _C.INTERNAL: 500,
    _C.UNAVAILABLE: 503, _C.DATA_LOSS: 500, _C.UNAUTHENTICATED: 401,
}
_INT_DTYPES = {
    types_pb2.DT_INT8: np.int8, types_pb2.DT_INT16: np.int16, types_pb2.DT_INT32: np.int32,
    types_pb2.DT_INT64: np.int64, types_pb2.DT_UINT8: np.uint8, types_pb2.DT_UINT32: np.uint32,
    types_pb2.DT_UINT64: np.uint64,
}
_FLOAT_DTYPES = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64}
MAX_VALUE_CHARS = 60
log = logging.getLogger("serving")


def _bad(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + "..."


@dataclasses.dataclass(frozen=True)
class Route:
    """What a request path asks for."""

    model: str
    action: str  # predict | classify | regress | status | metadata
    version: int | None = None
    label: str | None = None

    def model_spec(self, signature_name: str = "") -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=self.model, signature_name=signature_name)
        if self.version is not None:
            spec.version.value = self.version
        elif self.label is not None:
            spec.version_label = self.label
        return spec


def route(method: str, path: str) -> Route:
    """Parses a /v1/ path as TF Serving does; INVALID_ARGUMENT (HTTP 400) when it cannot."""
    path = urllib.parse.urlsplit(path).path
    pattern = PREDICT_ROUTE if method == "POST" else STATUS_ROUTE if method == "GET" else None
    match = pattern.fullmatch(path) if pattern else None
    # The regexes ignore case, the dispatch does not: ":PREDICT" is malformed, and
    # "/METADATA" asks for the status.
    if match is None or (method == "POST" and match.group(4) not in PREDICT_METHODS):
        raise _bad(f"Malformed request: {method} {path[:200]}")
    name, version, label, action = match.groups()
    if not name:
        raise _bad("Missing model name in request.")
    if version and int(version) > MAX_VERSION:
        raise _bad(f"Failed to convert version: {version[:40]} to numeric.")
    return Route(
        model=urllib.parse.unquote(name),
        action=action if method == "POST" else "metadata" if action == "metadata" else "status",
        version=int(version) if version else None,
        label=urllib.parse.unquote(label) if label else None,
    )


def parse_json(body: bytes) -> dict[str, Any]:
    """The request object; INVALID_ARGUMENT for anything but a JSON object."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise _bad(f"JSON Parse error: {err}"[:300]) from err
    if not isinstance(doc, dict):
        raise _bad(f"JSON Value: {_show(doc)} Is not object")
    return doc


def _signature_name(doc: Mapping[str, Any]) -> str:
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise _bad(f"'signature_name' key must be a string value. Received: {_show(name)}")
    return name


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _b64decode(value: dict[str, str]) -> bytes:
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as err:
        raise _bad(f"Unable to base64 decode {_show(value)}") from err


def _dense_shape(value: Any) -> list[int]:
    """The shape a nested list declares by its first elements (as TF Serving reads it)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _flatten(value: Any, shape: list[int], out: list[Any]) -> None:
    """Appends the leaves of `value`, checking that every list matches `shape`."""
    stack = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if not isinstance(item, list):
            if level != len(shape):
                raise _bad(f"JSON Value: {_show(item)} found at incorrect level: {level + 1} "
                           f"in the JSON DOM. Expected at level: {len(shape)}")
            out.append(item)
        elif level >= len(shape) or len(item) != shape[level]:
            raise _bad(f"Encountered list at unexpected level {level} or size {len(item)}; "
                       f"expected shape {shape}")
        else:
            stack.extend((child, level + 1) for child in reversed(item))


def _tensor(values: list[Any], shape: list[int], dtype: int, name: str) -> tensor_pb2.TensorProto:
    """JSON leaves -> a TensorProto of the signature's dtype; INVALID_ARGUMENT on a wrong type."""
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]))

    def wrong(value: Any) -> ServingError:
        return _bad(f"input {name!r}: JSON Value: {_show(value)} is not of expected type: "
                    f"{tensors.dtype_name(dtype)}")

    if dtype == types_pb2.DT_STRING:
        for value in values:
            if isinstance(value, str):
                proto.string_val.append(value.encode())
            elif _is_b64(value):
                proto.string_val.append(_b64decode(value))
            else:
                raise wrong(value)
        return proto
    # JSON types each dtype accepts (bool is not a number here, as in TF Serving)
    if dtype == types_pb2.DT_BOOL:
        accepted: tuple[type, ...] = (bool,)
    elif dtype in _INT_DTYPES:
        accepted = (int,)
    elif dtype in _FLOAT_DTYPES:
        accepted = (int, float)
    else:
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                           f"input {name!r}: JSON has no mapping for {tensors.dtype_name(dtype)}")
    for value in values:
        if type(value) not in accepted:
            raise wrong(value)
    np_dtype = _INT_DTYPES.get(dtype) or _FLOAT_DTYPES.get(dtype)
    if np_dtype is None:
        proto.bool_val.extend(values)
        return proto
    try:
        proto.tensor_content = np.array(values, dtype=np_dtype).tobytes()
    except OverflowError as err:
        raise _bad(f"input {name!r}: value out of range for {tensors.dtype_name(dtype)}") from err
    return proto


def _input(value: Any, name: str, dtype: int) -> tensor_pb2.TensorProto:
    shape = _dense_shape(value)
    leaves: list[Any] = []
    _flatten(value, shape, leaves)
    return _tensor(leaves, shape, dtype, name)


def _from_instances(instances: list[Any], inputs: Mapping[str, meta_graph_pb2.TensorInfo]
                    ) -> dict[str, tensor_pb2.TensorProto]:
    """Row format: one item per row; items are objects (one key per input) or, for a
    one-input signature, the input's value."""
    objects = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not objects and len(inputs) > 1:
        raise _bad("instances is a plain list, but expecting list of objects as multiple input "
                   f"tensors required by the signature: {sorted(inputs)}")
    rows: dict[str, list[Any]] = {name: [] for name in inputs}
    for i, item in enumerate(instances):
        if objects != (isinstance(item, dict) and not _is_b64(item)):
            raise _bad(f"item {i} of 'instances': every item must be "
                       + ("an object" if objects else "a value/list, not an object"))
        if objects:
            if set(item) != set(inputs):
                raise _bad(f"item {i} of 'instances': keys {sorted(item)} must be equal to the "
                           f"signature's inputs {sorted(inputs)}")
            for name in inputs:
                rows[name].append(item[name])
        else:
            rows[next(iter(inputs))].append(item)
    out = {}
    for name, items in rows.items():
        row_shape = _dense_shape(items[0])
        leaves: list[Any] = []
        for i, item in enumerate(items):
            if _dense_shape(item) != row_shape:
                raise _bad(f"item {i} of 'instances', input {name!r}: expecting shape "
                           f"{row_shape} but got {_dense_shape(item)}")
            _flatten(item, row_shape, leaves)
        out[name] = _tensor(leaves, [len(items), *row_shape], inputs[name].dtype, name)
    return out


def predict_request(doc: Mapping[str, Any], spec: model_pb2.ModelSpec,
                    inputs: Mapping[str, meta_graph_pb2.TensorInfo]
                    ) -> tuple[predict_pb2.PredictRequest, bool]:
    """The PredictRequest a JSON body asks for, and whether it was in row format."""
    request = predict_pb2.PredictRequest(model_spec=spec)
    if ("instances" in doc) == ("inputs" in doc):
        raise _bad("Missing 'inputs' or 'instances' key" if "instances" not in doc else
                   "Not formatted correctly: expecting only one of 'inputs' or 'instances'")
    if "instances" in doc:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise _bad("Expecting 'instances' to be an list/array")
        if not instances:
            raise _bad("No values in 'instances' array")
        tensors_in = _from_instances(instances, inputs)
    else:
        value = doc["inputs"]
        if not isinstance(value, dict) or _is_b64(value):
            if len(inputs) > 1:
                raise _bad("inputs is a plain value/list, but expecting an object as multiple "
                           f"input tensors required by the signature: {sorted(inputs)}")
            value = {next(iter(inputs)): value}
        missing = sorted(set(inputs) - set(value))
        if missing:
            raise _bad(f"Missing named input(s) {missing} in 'inputs' object.")
        tensors_in = {name: _input(value[name], name, info.dtype) for name, info in inputs.items()}
    for name, proto in tensors_in.items():
        request.inputs[name].CopyFrom(proto)
    return request, "instances" in doc


def _jsonable(array: np.ndarray, as_bytes: bool) -> Any:
    if array.dtype.kind in "OSU":
        def text(value: Any) -> Any:
            raw = value if isinstance(value, bytes) else str(value).encode()
            return {"b64": base64.b64encode(raw).decode()} if as_bytes else raw.decode(
                errors="replace")
        return np.vectorize(text, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def predict_json(response: predict_pb2.PredictResponse, rows: bool) -> dict[str, Any]:
    """TF Serving's `predictions` (row request) or `outputs` (columnar request)."""
    arrays = {k: tensors.to_ndarray(v) for k, v in sorted(response.outputs.items())}
    as_bytes = {k: k.endswith(BYTES_SUFFIX) and a.dtype.kind in "OSU" for k, a in arrays.items()}
    if not rows:
        values = {k: _jsonable(a, as_bytes[k]) for k, a in arrays.items()}
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    batch = {a.shape[0] if a.ndim else -1 for a in arrays.values()}
    if len(batch) != 1 or -1 in batch:
        raise _bad(f"outputs have inconsistent batch sizes {sorted(batch)}; use 'inputs'")
    per_output = {k: _jsonable(a, as_bytes[k]) for k, a in arrays.items()}
    if len(per_output) == 1:
        return {"predictions": next(iter(per_output.values()))}
    return {"predictions": [{k: v[i] for k, v in per_output.items()} for i in range(batch.pop())]}


def _feature(values: list[Any], name: str) -> feature_pb2.Feature:
    """JSON values -> one tf.train.Feature; the first value decides the kind, as in TF Serving."""
    feature = feature_pb2.Feature()
    kinds = set()
    for value in values:
        if isinstance(value, bool) or type(value) is int:
            kinds.add("int64")
            feature.int64_list.value.append(int(value))
        elif isinstance(value, float):
            kinds.add("float")
            feature.float_list.value.append(value)
        elif isinstance(value, str):
            kinds.add("bytes")
            feature.bytes_list.value.append(value.encode())
        elif _is_b64(value):
            kinds.add("bytes")
            feature.bytes_list.value.append(_b64decode(value))
        else:
            raise _bad(f"Feature: {name} has element with unexpected JSON type: {_show(value)}")
        if len(kinds) > 1:
            raise _bad(f"Unexpected element type in feature: {name} (mixes {sorted(kinds)})")
    return feature


def _example(value: Any, where: str) -> example_pb2.Example:
    if not isinstance(value, dict):
        raise _bad(f"{where}: Example must be JSON object but got {_show(value)}")
    example = example_pb2.Example()
    try:
        for name, content in value.items():
            feature = _feature(content if isinstance(content, list) else [content], name)
            example.features.feature[name].CopyFrom(feature)
    except OverflowError as err:  # an integer beyond int64
        raise _bad(f"{where}: {err}") from err
    return example


def classify_request(doc: Mapping[str, Any], spec: model_pb2.ModelSpec
                     ) -> classification_pb2.ClassificationRequest:
    """TF Serving's classify JSON: optional `context` object, `examples` list of objects."""
    request = classification_pb2.ClassificationRequest(model_spec=spec)
    examples = doc.get("examples")
    if examples is None:
        raise _bad("When method is classify, key 'examples' is expected and was not found")
    if not isinstance(examples, list):
        raise _bad("Expecting 'examples' value to be an list/array")
    if not examples:
        raise _bad("'examples' value is an empty array")
    if "context" in doc:
        target = request.input.example_list_with_context
        target.context.CopyFrom(_example(doc["context"], "context"))
    else:
        target = request.input.example_list
    for i, value in enumerate(examples):
        target.examples.add().CopyFrom(_example(value, f"example {i}"))
    return request


def classify_json(response: classification_pb2.ClassificationResponse) -> dict[str, Any]:
    return {"result": [[[c.label, c.score] for c in result.classes]
                       for result in response.result.classifications]}


def _message_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def metadata_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> dict[str, Any]:
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[handlers.SIGNATURE_DEF_FIELD].Unpack(signatures)
    return {"model_spec": _message_dict(response.model_spec),
            "metadata": {handlers.SIGNATURE_DEF_FIELD: _message_dict(signatures)}}


@dataclasses.dataclass
class Reply:
    """An HTTP answer (`body` None: none, a CORS preflight), with what metrics need to record
    it: the model the path names and, as TF Serving's `API` label of REST requests, the
    path's method ("predict", "classify", "regress"; "" for GET)."""

    http_status: int
    body: dict[str, Any] | None
    model: str | None = None
    api: str = ""
    code: grpc.StatusCode = grpc.StatusCode.OK


class RestApi:
    """Answers /v1/ requests from the served models."""

    def __init__(self, manager: ModelManager, metrics: Metrics | None = None):
        self._manager = manager
        self._metrics = metrics  # counts foreign rows of Predicts (handlers.predict)

    def handle(self, method: str, path: str, body: bytes, origin: str = "") -> Reply:
        """Any method on a /v1/ path; `origin` is the Origin header (CORS preflight)."""
        reply = Reply(200, {})
        try:
            if method == "OPTIONS":  # http_server.cc: a preflight needs an http(s) Origin
                if not CORS_ORIGIN.search(origin):
                    raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                                       "Origin header is missing in CORS preflight")
                reply.body = None
                return reply
            where = route(method, path)
            reply.model = where.model
            reply.api = where.action if method == "POST" else ""
            reply.body = self._answer(where, body)
        except ServingError as err:
            reply.code, reply.http_status = err.code, HTTP_STATUS.get(err.code, 500)
            reply.body = {"error": err.message}
        except Exception as err:  # noqa: BLE001 - the server keeps answering
            log.exception("REST %s %s failed", method, path[:200])
            reply.code, reply.http_status = grpc.StatusCode.INTERNAL, 500
            reply.body = {"error": f"{type(err).__name__}: {err}"[:400]}
        return reply

    def _answer(self, where: Route, body: bytes) -> dict[str, Any]:
        if where.action == "status":
            request = get_model_status_pb2.GetModelStatusRequest(model_spec=where.model_spec())
            return _message_dict(self._manager.status(request))
        servable = self._manager.servable(where.model_spec())
        if where.action == "metadata":
            request = get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec=where.model_spec(), metadata_field=[handlers.SIGNATURE_DEF_FIELD])
            return metadata_json(handlers.metadata(servable, request))
        doc = parse_json(body)
        signature_name = _signature_name(doc)
        if where.action == "classify":
            return classify_json(handlers.classify(
                servable, classify_request(doc, where.model_spec(signature_name))))
        if where.action == "regress":
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                               "the bundled server has no Regress API (CTR models classify)")
        inputs = servable.signature(signature_name or DEFAULT_SIGNATURE,
                                    missing=grpc.StatusCode.INVALID_ARGUMENT).definition.inputs
        request, rows = predict_request(doc, where.model_spec(signature_name), inputs)
        return predict_json(handlers.predict(servable, request, self._metrics), rows)
