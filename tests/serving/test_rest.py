"""TF Serving's REST API on the bundled server: same numbers as gRPC, TF Serving's JSON and codes."""

from __future__ import annotations

import base64
import http.client
import json
import socket

import numpy as np
import pytest

from serving import examples
from tests.serving import tiny

B64 = [{"b64": base64.b64encode(s).decode()} for s in tiny.SERIALIZED]


def _call(server, method: str, path: str, body: object = None, raw: bytes | None = None):
    """(HTTP status, parsed JSON) of one request to the server's REST port."""
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    try:
        payload = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        connection.request(method, path, body=payload,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_row_and_columnar_predict_equal_grpc(tiny_server, tiny_client):
    grpc_out = tiny_client.predict_tensors("tiny", {"examples": np.array(tiny.SERIALIZED, dtype=object)})
    status, rows = _call(tiny_server, "POST", "/v1/models/tiny:predict", {"instances": B64})
    assert status == 200, rows
    # several outputs -> one object per row, as TF Serving writes it
    assert [set(r) for r in rows["predictions"]] == [{"probabilities", "logits", "oov_fraction"}] * len(B64)
    rest_p = np.array([r["probabilities"] for r in rows["predictions"]], dtype=np.float32)
    np.testing.assert_array_equal(rest_p, grpc_out["probabilities"])  # bit-identical
    status, columns = _call(tiny_server, "POST", "/v1/models/tiny/versions/1:predict",
                            {"signature_name": "serving_default", "inputs": {"examples": B64}})
    assert status == 200, columns
    np.testing.assert_array_equal(np.array(columns["outputs"]["logits"], dtype=np.float32),
                                  grpc_out["logits"])


def test_raw_fields_rows_as_objects_equal_grpc(tiny_server, tiny_client):
    texts = examples.field_texts(tiny.ROWS, ["I1", "C1"])
    grpc_out = tiny_client.predict_tensors(
        "tiny", {k: np.array(v, dtype=object) for k, v in texts.items()}, "raw_fields")
    instances = [{k: texts[k][i].decode() for k in texts} for i in range(len(tiny.ROWS))]
    status, body = _call(tiny_server, "POST", "/v1/models/tiny:predict",
                         {"signature_name": "raw_fields", "instances": instances})
    assert status == 200, body
    np.testing.assert_array_equal(
        np.array([r["probabilities"] for r in body["predictions"]], dtype=np.float32),
        grpc_out["probabilities"])


def test_classify_json_equals_grpc_classify(tiny_server):
    expected = tiny.grpc_classify(f"127.0.0.1:{tiny_server.port}")
    # TF Serving's classify JSON: one object of feature -> value(s) per example
    json_examples = [{k: [v.decode() if isinstance(v, bytes) else v for v in vals]
                      for k, vals in row.items() if vals} for row in tiny.ROWS]
    status, body = _call(tiny_server, "POST", "/v1/models/tiny:classify",
                         {"signature_name": "classification", "examples": json_examples})
    assert status == 200, body
    assert [[label for label, _ in r] for r in body["result"]] == [["0", "1"]] * len(tiny.ROWS)
    got = np.array([[score for _, score in r] for r in body["result"]], dtype=np.float32)
    want = np.array([[c.score for c in r.classes] for r in expected.result.classifications],
                    dtype=np.float32)
    np.testing.assert_array_equal(got, want)


def test_status_and_metadata_json(tiny_server):
    status, body = _call(tiny_server, "GET", "/v1/models/tiny")
    assert status == 200
    assert body == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    status, body = _call(tiny_server, "GET", "/v1/models/tiny/versions/1/metadata")
    assert status == 200
    assert body["model_spec"]["name"] == "tiny" and body["model_spec"]["version"] == "1"
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "raw_fields", "classification"} <= set(signatures)
    assert signatures["serving_default"]["inputs"]["examples"]["dtype"] == "DT_STRING"


@pytest.mark.parametrize(
    ("method", "path", "body", "http_status", "needle"),
    [
        ("POST", "/v1/models/nope:predict", {"instances": B64}, 404, "'nope' is not served"),
        ("GET", "/v1/models/nope", None, 404, "'nope' is not served"),
        ("POST", "/v1/models/tiny/versions/9:predict", {"instances": B64}, 404, "version 9"),
        ("GET", "/v1/models/tiny/labels/canary", None, 400,
         "Unrecognized servable version label: canary"),
        ("POST", "/v1/models/tiny:predict", {"signature_name": "nope", "instances": B64}, 400,
         'signature key "nope" not found'),
        ("POST", "/v1/models/tiny:predict", {"instances": B64, "inputs": B64}, 400, "only one"),
        ("POST", "/v1/models/tiny:predict", {"rows": B64}, 400, "Missing 'inputs' or 'instances'"),
        ("POST", "/v1/models/tiny:predict", {"instances": []}, 400, "No values"),
        ("POST", "/v1/models/tiny:predict", {"instances": [1, 2]}, 400, "expected type: DT_STRING"),
        ("POST", "/v1/models/tiny:predict", {"instances": [{"b64": "%%%"}]}, 400, "base64"),
        ("POST", "/v1/models/tiny:predict", {"instances": ["not a tf.Example"]}, 400, "examples"),
        ("POST", "/v1/models/tiny:predict", {"instances": [["a"], "b"]}, 400, "shape"),
        ("POST", "/v1/models/tiny:predict", {"signature_name": "raw_fields", "instances": ["5"]},
         400, "plain list"),
        ("POST", "/v1/models/tiny:predict", {"instances": B64 * 9}, 429, "queue capacity"),
        ("POST", "/v1/models/tiny:classify", {"examples": [{"I1": [1, "x"]}]}, 400,
         "Unexpected element type"),
        ("POST", "/v1/models/tiny:classify", {"examples": []}, 400, "empty"),
        ("POST", "/v1/models/tiny:regress", {"examples": [{}]}, 501, "Regress"),
        ("GET", "/v1/models/tiny/versions/x", None, 400, "Malformed request"),
        # TF Serving: absl::SimpleAtoi fails beyond int64 (http_rest_api_util.cc ParseModelInfo)
        ("GET", "/v1/models/tiny/versions/99999999999999999999", None, 400,
         "Failed to convert version: 99999999999999999999 to numeric."),
        ("POST", "/v1/models/tiny/versions/99999999999999999999:predict", {"instances": B64},
         400, "Failed to convert version"),
        # the dispatch compares the method case-sensitively (http_rest_api_handler.cc)
        ("POST", "/v1/models/tiny:PREDICT", {"instances": B64}, 400, "Malformed request"),
        ("PUT", "/v1/models/tiny:predict", {"instances": B64}, 400,
         "Malformed request: PUT /v1/models/tiny:predict"),
        ("DELETE", "/v1/models/tiny", None, 400, "Malformed request: DELETE"),
        ("GET", "/v1/models", None, 400, "Missing model name in request."),
        ("OPTIONS", "/v1/models/tiny", None, 400, "Origin header is missing in CORS preflight"),
        ("GET", "/v2/models/tiny", None, 404, "/v1/"),
        ("PUT", "/v2/models/tiny", {}, 404, "/v1/"),
        ("GET", "/v1/models/" + "x" * 70_000, None, 414, "URI Too Long"),
    ],
    ids=["unknown-model", "status-unknown-model", "unknown-version", "unknown-label",
         "unknown-signature", "both-formats", "no-inputs", "empty-instances", "wrong-type",
         "bad-b64", "bad-example-bytes", "ragged", "plain-list-multi-input", "too-many-rows",
         "mixed-feature-kinds", "no-examples", "regress", "bad-version", "int64-overflow-version",
         "int64-overflow-version-predict", "uppercase-method", "put", "delete", "no-model-name",
         "options-without-origin", "unknown-path", "put-unknown-path", "over-long-url"],
)
def test_rest_errors_are_json_with_tf_serving_http_codes(
    tiny_server, method, path, body, http_status, needle
):
    status, reply = _call(tiny_server, method, path, body)
    assert status == http_status, reply
    assert set(reply) == {"error"} and needle in reply["error"], reply
    assert len(reply["error"]) < 1000  # an over-long path is not echoed back in full
    status, _ = _call(tiny_server, "POST", "/v1/models/tiny:predict", {"instances": B64[:1]})
    assert status == 200


def test_unparseable_and_oversized_bodies(tiny_server):
    from tests.serving.conftest import MAX_MESSAGE_BYTES

    status, reply = _call(tiny_server, "POST", "/v1/models/tiny:predict", raw=b"{not json")
    assert status == 400 and "JSON Parse error" in reply["error"]
    status, reply = _call(tiny_server, "POST", "/v1/models/tiny:predict",
                          raw=b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and "JSON" in reply["error"]
    # a declared 10 GB body is refused from its headers, before any byte of it is read
    with socket.create_connection(("127.0.0.1", tiny_server.rest_port), timeout=30) as sock:
        sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: %d\r\n\r\n" % (10 * 1024**3))
        answer = sock.makefile("rb").read()
    assert answer.startswith(b"HTTP/1.1 413") and b"exceeds the limit of %d bytes" % (
        MAX_MESSAGE_BYTES) in answer


def test_cors_preflight_with_an_origin_is_answered_ok_without_a_body(tiny_server):
    connection = http.client.HTTPConnection("127.0.0.1", tiny_server.rest_port, timeout=30)
    try:
        connection.request("OPTIONS", "/v1/models/tiny:predict",
                           headers={"Origin": "https://example.com"})
        response = connection.getresponse()
        assert response.status == 200 and response.read() == b""
    finally:
        connection.close()


def test_rest_requests_are_counted_under_the_rest_entrypoint(tiny_server):
    _call(tiny_server, "POST", "/v1/models/tiny:predict", {"instances": B64[:1]})
    _, _ = _call(tiny_server, "POST", "/v1/models/unknown-model:predict", {"instances": B64[:1]})
    connection = http.client.HTTPConnection("127.0.0.1", tiny_server.rest_port, timeout=30)
    connection.request("GET", "/monitoring/prometheus/metrics")
    page = connection.getresponse().read().decode()
    connection.close()
    # http_server.cc: REST requests carry the URL's method as API, the model run "Predict"
    assert 'request_latency_bucket{model_name="tiny",API="predict",entrypoint="REST"' in page
    assert 'runtime_latency_bucket{model_name="tiny",API="Predict",runtime="TF1"' in page
    assert "unknown-model" not in page


def test_keep_alive_requests_are_not_held_by_nagle(tiny_server):
    """Without TCP_NODELAY every keep-alive answer waits for a delayed ACK (>= 40 ms)."""
    import time

    from serving.client import RestClient

    with RestClient("127.0.0.1", tiny_server.rest_port) as rest:
        fastest = float("inf")
        for _ in range(20):
            start = time.perf_counter()
            rest.predict_examples("tiny", tiny.SERIALIZED[:1])
            fastest = min(fastest, time.perf_counter() - start)
    assert fastest < 0.01, f"fastest of 20 keep-alive requests took {fastest * 1e3:.1f} ms"
