"""The bundled server's Prometheus page is TF Serving's: names, types, labels, buckets, counts.

The expected page is written down from tensorflow/serving's source (commit
9d981c5), not from this server's code:

- tensorflow_serving/servables/tensorflow/util.cc: the five metric families,
  their label names, and buckets Exponential(10, 1.8, 33) for latencies,
  Exponential(1, 2, 15) for example counts;
- tensorflow_serving/util/prometheus_exporter.cc: '/tensorflow/serving/x' is
  ':tensorflow:serving:x', a `# TYPE` line per family even without samples,
  bounds as absl::StrCat prints doubles, a last bucket le="+Inf";
- model_servers/prediction_service_impl.cc: gRPC Predict/Classify count every
  request and time the OK ones (API "Predict"/"Classify", entrypoint "GRPC");
  GetModelMetadata and GetModelStatus record nothing;
- model_servers/http_server.cc + http_rest_api_util.cc: every /v1/ request is
  counted, OK ones timed with API = the URL's method ("predict", "" for GET),
  entrypoint "REST";
- servables/tensorflow/predict_util.cc, classifier.cc, saved_model_warmup.cc:
  each successful model run, warmup records included, is runtime_latency
  {API "Predict"/"Classify", runtime "TF1"}; example counts only for MultiInference.
"""

from __future__ import annotations

import logging
import re
import sys
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, prediction_log_pb2

from serving import cli, configs, export
from serving.client import RestClient, ServingClient
from serving.manager import LoadPolicy
from serving.server import ModelServer, ServerOptions, free_port
from tests import server_process
from tests.serving import tiny
from tests.serving.conftest import TINY_BATCHING

PREFIX = ":tensorflow:serving:"
OWN_PREFIX = ":optfusion:serving:"
FAMILIES = {  # name -> (type, label names), util.cc
    "request_count": ("counter", ["model_name", "status"]),
    "request_example_count_total": ("counter", ["model"]),
    "request_example_counts": ("histogram", ["model"]),
    "request_latency": ("histogram", ["model_name", "API", "entrypoint"]),
    "runtime_latency": ("histogram", ["model_name", "API", "runtime"]),
}
# util.cc: "Scale of 10, power of 1.8 with bucket count 33 (~20 minutes)", printed with 6 digits
LATENCY_LE = [format(10 * 1.8**i, ".6g") for i in range(33)] + ["+Inf"]
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\} (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _parse(page: str) -> tuple[list[tuple[str, str]], list[tuple[str, list[tuple[str, str]], float]]]:
    """(# TYPE lines as (name, type), samples as (name, [(label, value)], value)); every line
    must be one or the other."""
    types, samples = [], []
    for line in page.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types.append((name, kind))
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        name, labels, value = match.groups()
        pairs = LABEL.findall(labels)
        assert ",".join(f'{k}="{v}"' for k, v in pairs) == labels, line
        samples.append((name, pairs, float(value)))
    return types, samples


def _warmup_runs(version_dir) -> dict[str, int]:
    """Predict and Classify records in a version's warmup file (each one runs the model once)."""
    path = version_dir / "assets.extra" / export.WARMUP_FILE
    kinds = [prediction_log_pb2.PredictionLog.FromString(r.numpy()).WhichOneof("log_type")
             for r in tf.data.TFRecordDataset(str(path))]
    return {"Predict": kinds.count("predict_log"), "Classify": kinds.count("classify_log")}


def _histograms(samples, family: str) -> dict[tuple[str, ...], float]:
    """Per label values (without le): the _count, after checking the buckets against it."""
    name = PREFIX + family
    counts = {tuple(v for _, v in labels): value for n, labels, value in samples
              if n == name + "_count"}
    for key, count in counts.items():
        buckets = [(dict(labels)["le"], value) for n, labels, value in samples
                   if n == name + "_bucket" and tuple(v for k, v in labels if k != "le") == key]
        assert [le for le, _ in buckets] == LATENCY_LE, (family, key)
        values = [value for _, value in buckets]
        assert values == sorted(values) and values[-1] == count, (family, key, values)
    return counts


def test_scrape_has_tf_servings_names_labels_buckets_and_counts(tiny_base, tmp_path):
    """`serving serve --model_name/--model_base_path` in its own process, the same requests
    TF Serving would count, and its page compared with what TF Serving's source writes."""
    rest_port = free_port()
    port_file = tmp_path / "ports"
    command = [sys.executable, "-m", "serving.cli", "serve", "--model_name", "tiny",
               "--model_base_path", str(tiny_base / "tiny"), "--host", "127.0.0.1", "--port", "0",
               "--port_file", str(port_file), "--rest_api_port", str(rest_port)]
    with server_process.started(command, tmp_path, port_file=port_file) as server:
        server.wait_ready(["tiny"])
        with ServingClient(server.target, timeout=30) as client:
            client.predict_examples("tiny", tiny.SERIALIZED)  # OK
            with pytest.raises(grpc.RpcError) as err:  # INVALID_ARGUMENT, not timed
                client.predict_tensors("tiny", {"examples": np.array([1.0], np.float32)})
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.RpcError):  # an unserved name: never a label (see below)
                client.predict_examples("nope", tiny.SERIALIZED)
            client.metadata("tiny")  # not counted on gRPC
            client.status("tiny")  # not counted on gRPC
        tiny.grpc_classify(server.target)  # OK
        with RestClient("127.0.0.1", rest_port) as rest:
            # a number where the signature takes tf.Example bytes: INVALID_ARGUMENT, not timed
            assert rest.call("POST", "/v1/models/tiny:predict", {"instances": [1]})[0] == 400
            assert rest.predict_examples("tiny", tiny.SERIALIZED).shape == (4,)
            assert rest.call("GET", "/v1/models/tiny")[0] == 200
            assert rest.call("GET", "/v1/models/tiny/metadata")[0] == 200
        url = f"http://127.0.0.1:{rest_port}{configs.PROMETHEUS_PATH}"
        page = urllib.request.urlopen(url, timeout=30).read().decode()
        assert server.stop() == 0, server.describe()

    types, samples = _parse(page)
    assert [t for t in types if t[0].startswith(PREFIX)] == [
        (PREFIX + name, kind) for name, (kind, _) in sorted(FAMILIES.items())]
    # Besides TF Serving's families, only our two OOV counters (serving/metrics.py), in their own
    # namespace so that no TF Serving dashboard reads them by mistake.
    assert [t for t in types if not t[0].startswith(PREFIX)] == [
        (OWN_PREFIX + "mostly_oov_rows", "counter"), (OWN_PREFIX + "predicted_rows", "counter")]
    own = {name: (dict(labels), value) for name, labels, value in samples if name.startswith(OWN_PREFIX)}
    predicted = own[OWN_PREFIX + "predicted_rows"]
    assert predicted[0] == {"model_name": "tiny"} and predicted[1] == 2 * len(tiny.SERIALIZED)
    samples = [sample for sample in samples if sample[0].startswith(PREFIX)]
    for name, labels, _ in samples:
        family = name.removeprefix(PREFIX)
        family = re.sub(r"_(bucket|sum|count)$", "", family) if family not in FAMILIES else family
        expected = FAMILIES[family][1] + (["le"] if name.endswith("_bucket") else [])
        assert [k for k, _ in labels] == expected, name
    counts = {tuple(v for _, v in labels): value for name, labels, value in samples
              if name == PREFIX + "request_count"}
    # gRPC Predict + Classify, REST predict + status + metadata; one bad request each way.
    # TF Serving would also show {model_name="nope",status="NOT_FOUND"}: this server names
    # only served models (serving/metrics.py), so clients cannot grow the page.
    assert counts == {("tiny", "OK"): 5, ("tiny", "INVALID_ARGUMENT"): 2}
    assert _histograms(samples, "request_latency") == {
        ("tiny", "Predict", "GRPC"): 1, ("tiny", "Classify", "GRPC"): 1,
        ("tiny", "predict", "REST"): 1, ("tiny", "", "REST"): 2,
    }
    warmup = _warmup_runs(tiny_base / "tiny" / "1")
    assert warmup["Predict"] and warmup["Classify"]  # --enable_model_warmup is on by default
    assert _histograms(samples, "runtime_latency") == {
        ("tiny", "Predict", "TF1"): warmup["Predict"] + 2,  # gRPC + REST predict
        ("tiny", "Classify", "TF1"): warmup["Classify"] + 1,
    }
    assert not [s for s in samples if "example_count" in s[0]]  # MultiInference only


def test_warmup_off_runs_no_warmup_and_records_only_requests(tiny_base, caplog):
    caplog.set_level(logging.INFO, logger="serving")
    server = ModelServer(
        configs.single_model_config("tiny", tiny_base / "tiny"), TINY_BATCHING,
        ServerOptions(host="127.0.0.1", port=0, load_policy=LoadPolicy(warmup=False)))
    try:
        assert server.start()
        assert "(0 warmup records replayed)" in caplog.text
        assert not server.metrics.runtime_latency.cells()
        with ServingClient(f"127.0.0.1:{server.port}", timeout=30) as client:
            client.predict_examples("tiny", tiny.SERIALIZED)
        assert [sum(c) for c, _ in server.metrics.runtime_latency.cells().values()] == [1]
    finally:
        server.stop()


def test_empty_version_dir_is_warned_once_naming_its_path(tmp_path, caplog):
    from serving.manager import ModelManager

    tiny.write_version(tmp_path, 1, "m")
    (tmp_path / "2").mkdir()  # empty: e.g. a copy that has not arrived yet
    manager = ModelManager(configs.single_model_config("m", tmp_path), TINY_BATCHING)
    try:
        with caplog.at_level(logging.WARNING, logger="serving"):
            manager.poll_once()
            manager.poll_once()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and str(tmp_path / "2") in warnings[0], warnings
        assert "saved_model.pb" in warnings[0]
        assert manager.servable(model_pb2.ModelSpec(name="m")).version == 1
    finally:
        manager.stop()


@pytest.mark.parametrize(("flag", "expected"), [
    (["--enable_model_warmup"], True), (["--enable_model_warmup=false"], False),
    (["--enable_model_warmup", "true"], True), ([], True),
])
def test_tf_serving_boolean_flags_parse_as_tf_serving_does(flag, expected):
    args = cli.build_parser().parse_args(["serve", "--model_base_path", "x", *flag])
    assert args.enable_model_warmup is expected
    assert args.allow_version_labels_for_unavailable_models is False
    assert args.model_name == "default"  # TF Serving's default model name


def test_serve_usage_errors_exit_2(tmp_path, capsys):
    assert cli.main(["serve"]) == 2
    assert "pass --model_config_file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        cli.main(["serve", "--model_base_path", "x", "--enable_model_warmup=maybe"])
    assert err.value.code == 2
    tiny.write_version(tmp_path / "m", 1, "m")
    config = configs.single_model_config("m", tmp_path / "m")
    config.model_config_list.config[0].version_labels["stable"] = 1
    (tmp_path / configs.MODELS_CONFIG).write_text(str(config))
    capsys.readouterr()
    assert cli.main(["serve", "--model_config_file", str(tmp_path / configs.MODELS_CONFIG)]) == 2
    assert "Request to assign label to version 1 of model m" in capsys.readouterr().err
