"""Hostile and unlucky inputs against `serving serve` in its own process, as production runs it.

Each test checks the status, that the server process's memory stays bounded
(peak RSS from /proc/<pid>/status after resetting it), and that the server
still answers afterwards. The server listens on 127.0.0.1 and is stopped by PID.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import socket
import time
import urllib.request

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import configs
from serving.client import RestClient, ServingClient
from serving.server import free_port
from tests import server_process
from tests.serving import tiny

AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE
MAX_ROWS = 1000
HTTP_THREADS = 2
IDLE_TIMEOUT_MS = 1000
MEMORY_BOUND_KB = 50 * 1024  # a refused request may cost at most this much peak RSS
GOOD = tiny.SERIALIZED


@dataclasses.dataclass
class Served:
    pid: int
    target: str
    rest_port: int
    log: pathlib.Path
    refused_while_loading: dict[int, bool]


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(5)
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Served:
    """`serving serve` started before its model has a version; the version comes later."""
    base = tmp_path_factory.mktemp("hostile")
    (base / "tiny").mkdir()
    configs.update_models_config(base, "tiny")
    # a queue larger than MAX_ROWS: the row limit, not the queue, refuses big requests
    configs.write_batching_config(base, configs.BatchingSettings(
        max_batch_size=64, batch_timeout_micros=1000, num_batch_threads=2,
        max_enqueued_batches=100))
    configs.write_monitoring_config(base)
    grpc_port, rest_port = free_port(), free_port()
    port_file = base / "ports"
    command = server_process.serve_command(
        base / "models.config", port_file, "--rest_api_port", str(rest_port),
        "--max_rows_per_request", str(MAX_ROWS), "--rest_api_num_threads", str(HTTP_THREADS),
        "--rest_api_timeout_in_ms", str(IDLE_TIMEOUT_MS), "--file_system_poll_wait_seconds", "0.2",
        port=grpc_port)
    with server_process.started(command, base, port_file=port_file) as server:
        server.wait_for(lambda: "waiting for model tiny" in server.log_text(), "the model wait")
        time.sleep(0.5)
        refused = {port: _refused(port) for port in (grpc_port, rest_port)}
        tiny.write_version(base / "tiny", 1, "tiny")
        server.wait_ready(["tiny"])
        assert (server.grpc_port, server.rest_port) == (grpc_port, rest_port)
        yield Served(server.pid, server.target, rest_port, server.log, refused)


def _proc_status(pid: int, field: str) -> int:
    text = pathlib.Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+)", text, re.MULTILINE).group(1))


def _peak_rss_delta_kb(pid: int, action) -> int:
    """Peak RSS growth of process `pid` while `action()` runs (Linux clear_refs mode 5)."""
    before = _proc_status(pid, "VmRSS")
    pathlib.Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak := current
    action()
    return _proc_status(pid, "VmHWM") - before


def _still_answers(served: Served) -> None:
    with ServingClient(served.target, timeout=30) as client:
        assert client.predict_examples("tiny", GOOD).shape == (len(GOOD),)


def _predict_error(served: Served, request) -> grpc.RpcError:
    with grpc.insecure_channel(served.target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        call = stub.Classify if isinstance(request, classification_pb2.ClassificationRequest) \
            else stub.Predict
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=60)
    return err.value


def _string_tensor(values: list[bytes], shape: list[int]) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, string_val=values,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]))


def _predict(tensor: tensor_pb2.TensorProto) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name="tiny", signature_name="serving_default"))
    request.inputs["examples"].CopyFrom(tensor)
    return request


def test_listens_only_once_the_model_is_available(served):
    assert served.refused_while_loading and all(served.refused_while_loading.values())
    log = served.log.read_text()
    assert log.index("version 1 AVAILABLE") < log.index("serving tiny on 127.0.0.1")
    with ServingClient(served.target, timeout=30) as client:
        assert client.status("tiny") == {1: AVAILABLE}  # at first contact, no waiting


def test_small_request_declaring_a_huge_tensor_is_refused_without_allocating(served):
    request = _predict(_string_tensor([b"x" * 600], [30_000_000]))
    assert request.ByteSize() < 1000
    errors = []
    grown = _peak_rss_delta_kb(served.pid, lambda: errors.append(_predict_error(served, request)))
    assert errors[0].code() == grpc.StatusCode.INVALID_ARGUMENT, errors[0].details()
    assert "declares 30000000 values" in errors[0].details()
    assert grown < MEMORY_BOUND_KB, f"peak RSS grew by {grown} kB"
    _still_answers(served)


@pytest.mark.parametrize(
    "tensor",
    [
        _string_tensor([b"a"], [-1]),
        _string_tensor([b"a"] * 4, [2]),
        tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_content=b"abcd",
                               tensor_shape=tensor_shape_pb2.TensorShapeProto(
                                   dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)])),
        tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING,
                               tensor_shape=tensor_shape_pb2.TensorShapeProto(unknown_rank=True)),
    ],
    ids=["negative-dim", "more-values-than-shape", "strings-in-tensor-content", "unknown-rank"],
)
def test_malformed_tensors_are_invalid_argument(served, tensor):
    error = _predict_error(served, _predict(tensor))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "input 'examples'" in error.details()
    _still_answers(served)


def test_too_many_rows_is_resource_exhausted_before_running(served):
    rows = MAX_ROWS + 1
    error = _predict_error(served, _predict(_string_tensor([b""] * rows, [rows])))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert f"limit of {MAX_ROWS} rows" in error.details()
    request = classification_pb2.ClassificationRequest(
        model_spec=model_pb2.ModelSpec(name="tiny", signature_name="classification"))
    for _ in range(rows):
        request.input.example_list.examples.add()
    error = _predict_error(served, request)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    _still_answers(served)


def test_unparseable_request_bytes_are_invalid_argument(served):
    with grpc.insecure_channel(served.target) as channel:
        predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
        with pytest.raises(grpc.RpcError) as err:
            predict(b"\xff\xff\xff\xff not a PredictRequest", timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "cannot parse the request as PredictRequest" in err.value.details()
    _still_answers(served)


def _metrics_page(served: Served) -> str:
    url = f"http://127.0.0.1:{served.rest_port}/monitoring/prometheus/metrics"
    return urllib.request.urlopen(url, timeout=30).read().decode()


def test_model_names_cannot_inject_metric_lines_or_grow_the_page(served):
    _still_answers(served)
    before = _metrics_page(served)
    injected = 'x",status="OK"} 1\ninjected_metric{a="'
    names = [injected] + [f"made-up-{i}" for i in range(300)]
    with ServingClient(served.target, timeout=30) as client:
        for name in names:
            with pytest.raises(grpc.RpcError) as err:
                client.predict_examples(name, GOOD)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
    after = _metrics_page(served)
    assert "injected_metric" not in after and "made-up" not in after
    assert len(after.splitlines()) == len(before.splitlines())  # no new series


def test_idle_http_connections_are_closed_and_use_no_thread_each(served):
    threads_before = _proc_status(served.pid, "Threads")
    idle = [socket.create_connection(("127.0.0.1", served.rest_port), timeout=30)
            for _ in range(40)]
    try:
        time.sleep(0.5)
        assert _proc_status(served.pid, "Threads") - threads_before <= HTTP_THREADS
        deadline = time.monotonic() + 60
        for sock in idle:  # the server ends every idle connection (or refuses it at once)
            sock.settimeout(max(1.0, deadline - time.monotonic()))
            assert sock.recv(1) == b""
    finally:
        for sock in idle:
            sock.close()
    assert _proc_status(served.pid, "Threads") - threads_before <= HTTP_THREADS
    url = f"http://127.0.0.1:{served.rest_port}/v1/models/tiny"
    assert b"AVAILABLE" in urllib.request.urlopen(url, timeout=30).read()


def test_rest_and_grpc_give_the_same_numbers_out_of_process(served):
    with RestClient("127.0.0.1", served.rest_port) as rest:
        by_rest = rest.predict_examples("tiny", GOOD)
        assert rest.predict_examples("tiny", GOOD, version=1).tolist() == by_rest.tolist()
    with ServingClient(served.target, timeout=30) as client:
        by_grpc = client.predict_examples("tiny", GOOD)
    np.testing.assert_array_equal(by_rest, by_grpc)
    expected = tiny.reference_probabilities(served.log.parent / "tiny" / "1", tiny.ROWS)
    np.testing.assert_allclose(by_grpc, expected.reshape(-1), atol=1e-6)
