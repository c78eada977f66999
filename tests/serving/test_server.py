"""The bundled gRPC server on a tiny model: answers, metadata, status, versions, errors."""

from __future__ import annotations

import concurrent.futures
import shutil
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
)

from serving import examples
from tests.serving import tiny
from tests.serving.conftest import MAX_MESSAGE_BYTES, TINY_BATCHING

AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE


def _request(name="tiny", signature="serving_default", version=None, **inputs):
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=name, signature_name=signature))
    if version is not None:
        request.model_spec.version.value = version
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(value if isinstance(value, tensor_pb2.TensorProto)
                                     else tf.make_tensor_proto(value))
    return request


def _serialized(rows=tiny.ROWS):
    return examples.serialize_rows(rows, tiny.DTYPES)


def test_predict_equals_in_process_savedmodel(tiny_base, tiny_client):
    expected = tiny.reference_probabilities(tiny_base / "tiny" / "1", tiny.ROWS)
    got = tiny_client.predict_examples("tiny", _serialized())
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    # the rows include a missing field and an unseen category: every row is answered
    assert got.shape == (len(tiny.ROWS),) and np.all((got > 0) & (got < 1))


def test_raw_fields_signature_equals_serving_default(tiny_client):
    texts = examples.field_texts(tiny.ROWS, ["I1", "C1"])
    by_fields = tiny_client.predict_tensors(
        "tiny", {k: np.array(v, dtype=object) for k, v in texts.items()}, "raw_fields")
    by_examples = tiny_client.predict_examples("tiny", _serialized())
    np.testing.assert_allclose(by_fields["probabilities"], by_examples, atol=1e-6, rtol=0)
    np.testing.assert_allclose(1 / (1 + np.exp(-by_fields["logits"])), by_examples, atol=1e-6)


def test_classify_scores_are_the_probabilities(tiny_server, tiny_client):
    response = tiny.grpc_classify(f"127.0.0.1:{tiny_server.port}")
    p = tiny_client.predict_examples("tiny", _serialized())
    results = response.result.classifications
    assert [[c.label for c in r.classes] for r in results] == [["0", "1"]] * len(tiny.ROWS)
    np.testing.assert_allclose([r.classes[1].score for r in results], p, atol=1e-6)
    np.testing.assert_allclose([r.classes[0].score for r in results], 1 - p, atol=1e-6)


def test_metadata_lists_signatures_with_dtypes_and_shapes(tiny_client):
    signatures = tiny_client.metadata("tiny").signature_def
    assert {"serving_default", "raw_fields", "classification"} <= set(signatures)
    default = signatures["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    examples_in = default.inputs["examples"]
    assert examples_in.dtype == tf.string.as_datatype_enum
    assert [d.size for d in examples_in.tensor_shape.dim] == [-1]
    assert set(default.outputs) == {"probabilities", "logits", "oov_fraction"}
    assert default.outputs["oov_fraction"].dtype == tf.float32.as_datatype_enum
    assert default.outputs["probabilities"].dtype == tf.float32.as_datatype_enum
    fields = signatures["raw_fields"]
    assert set(fields.inputs) == {"I1", "C1"}
    assert all(t.dtype == tf.string.as_datatype_enum for t in fields.inputs.values())
    assert signatures["classification"].method_name == "tensorflow/serving/classify"


def test_status_available_after_warmup(tiny_client):
    assert tiny_client.status("tiny") == {1: AVAILABLE}


def test_version_with_failing_warmup_is_never_available(tiny_base, tiny_server, tiny_client):
    """Warmup really runs: a version whose warmup request fails ends in END, with the error."""
    from serving import configs
    from serving.manager import LoadPolicy, ModelManager

    model_dir = tiny_base / "broken"
    model_dir.mkdir()
    version = tiny.write_version(model_dir, 1, "broken")
    with tf.io.TFRecordWriter(str(version / "assets.extra" / "tf_serving_warmup_requests")) as w:
        from tensorflow_serving.apis import prediction_log_pb2
        bad = _request("broken", examples=tf.make_tensor_proto([b"not a tf.Example"]))
        w.write(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=bad)).SerializeToString())
    config = configs.read_models_config(tiny_base / "models.config")
    entry = config.model_config_list.config.add(name="broken", base_path=str(model_dir))
    del config.model_config_list.config[:-1]
    manager = ModelManager(config, TINY_BATCHING, policy=LoadPolicy(max_load_retries=0))
    try:
        manager.poll_once()
        status = manager.status(get_model_status_pb2.GetModelStatusRequest(
            model_spec=model_pb2.ModelSpec(name=entry.name))).model_version_status[0]
    finally:
        manager.stop()
    assert status.state == get_model_status_pb2.ModelVersionStatus.State.END
    assert "examples" in status.status.error_message


def test_new_version_is_picked_up_without_restart(tiny_base, tiny_client):
    model_dir = tiny_base / "tiny_versions"
    v1 = tiny_client.predict_examples("tiny_versions", _serialized())
    tiny.write_version(model_dir, 2, "tiny_versions", seed=1)
    expected = tiny.reference_probabilities(model_dir / "2", tiny.ROWS)
    tiny_client.wait_until_available("tiny_versions", timeout=60, version=2)
    deadline = time.monotonic() + 30
    while tiny_client.status("tiny_versions").get(1) == AVAILABLE and time.monotonic() < deadline:
        time.sleep(0.1)  # latest-1 policy: version 1 goes away
    assert tiny_client.status("tiny_versions")[2] == AVAILABLE
    assert tiny_client.status("tiny_versions")[1] != AVAILABLE
    got = tiny_client.predict_examples("tiny_versions", _serialized())
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    assert not np.allclose(got, v1, atol=1e-4)


def test_concurrent_and_oversized_requests_are_batched_and_split(tiny_client):
    rows = tiny.ROWS * 5  # 20 rows > max_batch_size 8: split into 3 batches
    expected = tiny_client.predict_examples("tiny", _serialized(tiny.ROWS))
    np.testing.assert_allclose(tiny_client.predict_examples("tiny", _serialized(rows)),
                               np.tile(expected, 5), atol=1e-6)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: tiny_client.predict_examples(
            "tiny", _serialized([tiny.ROWS[i % 4]])), range(32)))
    np.testing.assert_allclose(np.concatenate(answers), np.tile(expected, 8), atol=1e-6)


GOOD = _serialized()


@pytest.mark.parametrize(
    ("request_", "code", "needle"),
    [
        (_request("nope", examples=GOOD), grpc.StatusCode.NOT_FOUND, "nope"),
        (_request(version=9, examples=GOOD), grpc.StatusCode.NOT_FOUND, "version 9"),
        (_request(signature="nope", examples=GOOD), grpc.StatusCode.FAILED_PRECONDITION,
         'Serving signature key "nope" not found'),
        (_request(examples=[b"\xff\x00 not a tf.Example"]), grpc.StatusCode.INVALID_ARGUMENT,
         "examples"),
        (_request(examples=np.array([1, 2], dtype=np.int64)), grpc.StatusCode.INVALID_ARGUMENT,
         "'examples': expected dtype DT_STRING"),
        (_request(examples=np.array([GOOD[:2]], dtype=object)), grpc.StatusCode.INVALID_ARGUMENT,
         "'examples': expected shape"),
        (_request(), grpc.StatusCode.INVALID_ARGUMENT, "missing input(s) ['examples']"),
        (_request(examples=GOOD, extra=GOOD), grpc.StatusCode.INVALID_ARGUMENT, "extra"),
        (_request(examples=tf.make_tensor_proto([], dtype=tf.string)),
         grpc.StatusCode.INVALID_ARGUMENT, "empty batch"),
        (_request(signature="raw_fields", I1=[b"12x"], C1=[b"a"]),
         grpc.StatusCode.INVALID_ARGUMENT, "'I1' of raw_fields: not a number"),
        (_request(signature="raw_fields", I1=[b"1", b"2"], C1=[b"a"]),
         grpc.StatusCode.INVALID_ARGUMENT, "batch size"),
        (_request(examples=GOOD * 9), grpc.StatusCode.RESOURCE_EXHAUSTED, "queue capacity"),
        (_request(examples=[b"x" * (MAX_MESSAGE_BYTES + 10)]),
         grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    ],
    ids=["unknown-model", "unknown-version", "unknown-signature", "bad-example-bytes",
         "wrong-dtype", "wrong-shape", "missing-input", "unknown-input", "empty-batch",
         "raw-fields-not-a-number", "ragged-batch", "too-many-rows", "message-too-large"],
)
def test_bad_request_gets_its_status_and_server_keeps_answering(
    tiny_server, tiny_client, request_, code, needle
):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{tiny_server.port}", options=[
            ("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES)]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(request_, timeout=30)
    assert err.value.code() == code, err.value.details()
    assert needle in err.value.details()
    assert tiny_client.predict_examples("tiny", GOOD).shape == (4,)


def test_bad_batch_member_fails_alone(tiny_client):
    """A malformed request batched with good ones fails; the good ones are answered."""
    def send(i):
        payload = [b"garbage"] if i % 4 == 0 else _serialized([tiny.ROWS[1]])
        try:
            return tiny_client.predict_examples("tiny", payload)[0]
        except grpc.RpcError as err:
            return err.code()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(16)))
    assert all(a == grpc.StatusCode.INVALID_ARGUMENT for a in answers[::4])
    good = [a for i, a in enumerate(answers) if i % 4]
    assert all(isinstance(a, np.floating) for a in good)
    np.testing.assert_allclose(good, good[0], atol=1e-6)


def test_metadata_and_status_errors(tiny_server):
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{tiny_server.port}") as channel:
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            predict.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec=model_pb2.ModelSpec(name="tiny"), metadata_field=["weights"]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
                model_spec=model_pb2.ModelSpec(name="nope")))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            predict.Classify(classification_pb2.ClassificationRequest(
                model_spec=model_pb2.ModelSpec(name="tiny", signature_name="classification")))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _page(server) -> str:
    url = f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics"
    return urllib.request.urlopen(url, timeout=10).read().decode()


def _sample(page: str, series: str) -> int:
    values = [int(float(line.split()[-1])) for line in page.splitlines()
              if line.startswith(series + " ")]
    return values[0] if values else 0


def test_prometheus_metrics_count_predict_and_classify_only(tiny_server, tiny_client):
    count = ':tensorflow:serving:request_count{model_name="tiny",status="OK"}'
    latency = (':tensorflow:serving:request_latency_count{model_name="tiny",API="Predict",'
               'entrypoint="GRPC"}')
    before = _page(tiny_server)
    tiny_client.predict_examples("tiny", GOOD)
    after_predict = _page(tiny_server)
    assert _sample(after_predict, count) == _sample(before, count) + 1
    assert _sample(after_predict, latency) == _sample(before, latency) + 1
    tiny_client.metadata("tiny")
    tiny_client.status("tiny")
    assert _sample(_page(tiny_server), count) == _sample(after_predict, count)  # not counted
    tiny.grpc_classify(f"127.0.0.1:{tiny_server.port}")
    page = _page(tiny_server)
    assert _sample(page, count) == _sample(after_predict, count) + 1
    assert ':tensorflow:serving:request_latency_count{model_name="tiny",API="Classify",' \
           'entrypoint="GRPC"}' in page
    assert ':tensorflow:serving:runtime_latency_count{model_name="tiny",API="Classify",' \
           'runtime="TF1"}' in page


def test_specific_version_policy_and_labels(tmp_path):
    """A config naming versions serves those, not the latest; labels resolve to them."""
    from tensorflow_serving.config import model_server_config_pb2

    from serving.manager import LoadPolicy, ModelManager
    from serving.servable import ServingError

    for version in (1, 2):
        tiny.write_version(tmp_path, version, "pinned", seed=version)
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(name="pinned", base_path=str(tmp_path))
    model.model_version_policy.specific.versions.append(1)
    model.version_labels["stable"] = 1
    # TF Serving refuses a label on a version not loaded yet unless allowed
    # (server_core.cc UpdateModelVersionLabelMap)
    with pytest.raises(ServingError) as err:
        ModelManager(config, TINY_BATCHING)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "--allow_version_labels_for_unavailable_models" in err.value.message
    manager = ModelManager(config, TINY_BATCHING, policy=LoadPolicy(labels_for_unavailable=True))
    try:
        manager.poll_once()
        spec = model_pb2.ModelSpec(name="pinned")
        assert manager.servable(spec).version == 1
        spec.version_label = "stable"
        assert manager.servable(spec).version == 1
        spec.version_label = "canary"
        with pytest.raises(ServingError) as err:
            manager.servable(spec)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT  # GetModelVersionForLabel
        # moving an existing label needs its new version AVAILABLE, even when allowed
        model.version_labels["stable"] = 2
        with pytest.raises(ServingError) as err:
            manager.reload_config(config, threading.Event())
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        spec.version_label = "stable"
        assert manager.servable(spec).version == 1  # the refused list changed nothing
        status = manager.status(get_model_status_pb2.GetModelStatusRequest(
            model_spec=model_pb2.ModelSpec(name="pinned")))
        assert [(s.version, s.state) for s in status.model_version_status] == [(1, AVAILABLE)]
    finally:
        manager.stop()


def _wait_state(manager, name: str, version: int, state: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        manager.poll_once()
        status = manager.status(get_model_status_pb2.GetModelStatusRequest(
            model_spec=model_pb2.ModelSpec(name=name)))
        states = {s.version: s.state for s in status.model_version_status}
        if states.get(version) == state:
            return
        assert time.monotonic() < deadline, f"version {version} never reached {state}: {states}"
        time.sleep(0.05)


def test_failed_new_version_keeps_the_serving_one_and_is_retried(tmp_path):
    """TF Serving's availability-preserving policy and load retries."""
    from tensorflow_serving.config import model_server_config_pb2

    from serving.manager import LoadPolicy, ModelManager

    State = get_model_status_pb2.ModelVersionStatus.State
    tiny.write_version(tmp_path, 1, "m", seed=1)
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name="m", base_path=str(tmp_path))
    manager = ModelManager(config, TINY_BATCHING,
                           policy=LoadPolicy(max_load_retries=2, retry_interval_s=0.3))
    spec = model_pb2.ModelSpec(name="m")
    try:
        manager.poll_once()
        assert manager.servable(spec).version == 1
        v2 = tiny.write_version(tmp_path, 2, "m", seed=2)
        (v2 / "variables").rename(tmp_path / "held-back")  # a half-written version
        manager.poll_once()
        status = {s.version: s for s in manager.status(get_model_status_pb2.GetModelStatusRequest(
            model_spec=spec)).model_version_status}
        assert status[2].state == State.LOADING  # waiting for its retry
        assert status[1].state == State.AVAILABLE and manager.servable(spec).version == 1
        manager.poll_once()  # the retry is not due yet: still one failure
        assert manager._versions["m"][2].failures == 1
        _wait_state(manager, "m", 2, State.LOADING)
        time.sleep(0.35)
        manager.poll_once()
        assert manager._versions["m"][2].failures == 2
        (tmp_path / "held-back").rename(v2 / "variables")  # the writer finishes
        _wait_state(manager, "m", 2, State.AVAILABLE)
        assert manager.servable(spec).version == 2
        _wait_state(manager, "m", 1, State.END)  # unloaded only once 2 serves
        v3 = tiny.write_version(tmp_path, 3, "m", seed=3)
        (v3 / "variables").rename(tmp_path / "gone")
        _wait_state(manager, "m", 3, State.END)  # 1 + 2 retries, then it gives up
        assert manager._versions["m"][3].failures == 3
        status = {s.version: s for s in manager.status(get_model_status_pb2.GetModelStatusRequest(
            model_spec=spec)).model_version_status}
        assert "loading" in status[3].status.error_message
        assert status[2].state == State.AVAILABLE and manager.servable(spec).version == 2
        v4 = tiny.write_version(tmp_path, 4, "m", seed=4)
        (v4 / "variables").rename(tmp_path / "gone-too")
        _wait_state(manager, "m", 4, State.LOADING)
        shutil.rmtree(v4)  # deleted while waiting for its retry: no retry, no busy polling
        _wait_state(manager, "m", 4, State.END)
        assert manager._next_wait() == pytest.approx(1.0)
    finally:
        manager.stop()


def test_reload_config_over_grpc_and_by_polling_the_config_file(tmp_path):
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    from pipeline.atomic import write_text_atomic
    from serving import configs
    from serving.server import ModelServer, ServerOptions

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        tiny.write_version(tmp_path / name, 1, name)
    configs.update_models_config(tmp_path, "a")
    config_path = tmp_path / "models.config"
    server = ModelServer(configs.read_models_config(config_path), TINY_BATCHING,
                         ServerOptions(host="127.0.0.1", port=0, poll_seconds=0.2,
                                       model_config_file=str(config_path),
                                       config_poll_seconds=0.2))
    assert server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            models = model_service_pb2_grpc.ModelServiceStub(channel)
            both = configs.read_models_config(config_path)
            both.model_config_list.config.add(name="b", base_path=str(tmp_path / "b"))
            reply = models.HandleReloadConfigRequest(
                model_management_pb2.ReloadConfigRequest(config=both), timeout=60)
            assert reply.status.error_code == 0
            assert server.manager.servable(model_pb2.ModelSpec(name="b")).version == 1
            bad = model_management_pb2.ReloadConfigRequest(config=both)
            bad.config.model_config_list.config[1].name = "../b"
            with pytest.raises(grpc.RpcError) as err:
                models.HandleReloadConfigRequest(bad, timeout=60)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            time.sleep(0.5)  # polls of the unchanged file keep the reloaded list
            assert server.manager.serves("b") and server.manager.serves("a")
        # the file changes to list "b" only: a poll drops "a"
        only_b = configs.read_models_config(config_path)
        only_b.model_config_list.config[0].name = "b"
        only_b.model_config_list.config[0].base_path = str(tmp_path / "b")
        write_text_atomic(config_path, text_format.MessageToString(only_b))
        deadline = time.monotonic() + 30
        while server.manager.serves("a") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not server.manager.serves("a") and server.manager.serves("b")
    finally:
        server.stop()


def test_metric_label_values_are_escaped():
    from serving.metrics import Metrics

    metrics = Metrics()
    metrics.record_request('a"b\\c\nd', "Predict", "OK", 10.0, "GRPC")
    metrics.record_request(None, "Predict", "NOT_FOUND", 10.0, "GRPC")
    page = metrics.prometheus()
    assert ':tensorflow:serving:request_count{model_name="a\\"b\\\\c\\nd",' \
           'status="OK"} 1' in page.splitlines()
    assert all(line.startswith((":tensorflow:serving:", "# TYPE")) for line in page.splitlines())
    assert metrics.total() == 2 and "1 requests named no served model" in metrics.summary()
