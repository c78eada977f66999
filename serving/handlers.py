"""Predict / Classify / GetModelMetadata on one servable: proto in, proto out.

Kept apart from the gRPC servicers so that warmup replay (before a version is
AVAILABLE) runs exactly the code a live request runs. Live Predicts (gRPC and
REST) pass the server's Metrics, which count the rows a signature's
`oov_fraction` output flags as foreign; warmup passes none.
"""

from __future__ import annotations

import grpc
import numpy as np
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    model_pb2,
    predict_pb2,
)

from pipeline.batch_scoring import mostly_oov
from serving import tensors
from serving.metrics import CLASSIFY, Metrics
from serving.module import CLASSIFY_METHOD, DEFAULT_SIGNATURE, OOV_OUTPUT
from serving.servable import Servable, ServingError

SIGNATURE_DEF_FIELD = "signature_def"


def _model_spec(servable: Servable, signature_name: str) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=servable.name, signature_name=signature_name)
    spec.version.value = servable.version
    return spec


def predict(servable: Servable, request: predict_pb2.PredictRequest,
            metrics: Metrics | None = None) -> predict_pb2.PredictResponse:
    name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature = servable.signature(name)
    arrays, size = servable.decode_inputs(signature, request.inputs)
    wanted = list(request.output_filter)
    counted = metrics is not None and OOV_OUTPUT in signature.definition.outputs
    outputs = servable.run(signature, arrays, size, wanted + [OOV_OUTPUT] if counted and wanted else wanted)
    if counted:
        assert metrics is not None
        oov = outputs[OOV_OUTPUT].reshape(-1)
        metrics.record_rows(servable.name, oov.size, mostly_oov(oov))
        if wanted and OOV_OUTPUT not in wanted:
            outputs.pop(OOV_OUTPUT)
    response = predict_pb2.PredictResponse(model_spec=_model_spec(servable, name))
    for key, value in outputs.items():
        response.outputs[key].CopyFrom(tensors.from_ndarray(value))
    return response


def _serialized_examples(request: classification_pb2.ClassificationRequest) -> np.ndarray:
    kind = request.input.WhichOneof("kind")
    if kind == "example_list":
        items = [e.SerializeToString() for e in request.input.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = request.input.example_list_with_context
        context = with_context.context
        items = []
        for example in with_context.examples:
            merged = type(example)()
            merged.CopyFrom(context)
            merged.MergeFrom(example)
            items.append(merged.SerializeToString())
    else:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "classify input is empty: no examples")
    if not items:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "classify input is empty: no examples")
    return np.array(items, dtype=object)


def classify(
    servable: Servable, request: classification_pb2.ClassificationRequest
) -> classification_pb2.ClassificationResponse:
    name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature = servable.signature(name, CLASSIFY_METHOD, missing=grpc.StatusCode.INVALID_ARGUMENT)
    (input_key,) = signature.definition.inputs
    with_context = request.input.example_list_with_context
    servable.check_rows(len(request.input.example_list.examples) + len(with_context.examples))
    examples = _serialized_examples(request)
    outputs = servable.run(signature, {input_key: examples}, len(examples), api=CLASSIFY)
    scores, classes = outputs.get("scores"), outputs.get("classes")
    response = classification_pb2.ClassificationResponse(model_spec=_model_spec(servable, name))
    width = next(a.shape[1] for a in (scores, classes) if a is not None)
    for row in range(len(examples)):
        result = response.result.classifications.add()
        for col in range(width):
            cls = result.classes.add()
            if classes is not None:
                cls.label = classes[row, col].decode()
            if scores is not None:
                cls.score = float(scores[row, col])
    return response


def metadata(
    servable: Servable, request: get_model_metadata_pb2.GetModelMetadataRequest
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    fields = list(request.metadata_field)
    if fields != [SIGNATURE_DEF_FIELD]:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"metadata_field must be [{SIGNATURE_DEF_FIELD!r}]. Received: {fields}",
        )
    response = get_model_metadata_pb2.GetModelMetadataResponse(
        model_spec=_model_spec(servable, "")
    )
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, definition in servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(definition)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
    return response
