"""Contract tests on the REAL chain: pipeline output -> trainer retrain -> serving export -> gRPC.

Run against the bundled server, and against `tensorflow_model_server` where it
is on PATH (skipped with a message otherwise).
"""

from __future__ import annotations

import pathlib
import shutil

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import cli, configs, examples, session_loader
from serving.client import ServingClient
from serving.protos import BatchingParameters, MonitoringConfig
from serving.server import ModelServer, ServerOptions
from tests import server_process
from tests.conftest import shared_data

pytestmark = pytest.mark.slow
MODEL = "ctr"
AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE


@pytest.fixture(scope="session")
def criteo_base(criteo_run_dir, criteo_preprocessed_dir, tmp_path_factory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("criteo_models")
    code = cli.main(["export", "--run", str(criteo_run_dir), "--data", str(criteo_preprocessed_dir),
                     "--model_base_path", str(base), "--model_name", MODEL])
    assert code == 0
    return base


@pytest.fixture(scope="session")
def bundled_server(criteo_base):
    server = ModelServer(
        configs.read_models_config(criteo_base / configs.MODELS_CONFIG),
        configs.read_batching_config(criteo_base / configs.BATCHING_CONFIG),
        ServerOptions(host="127.0.0.1", port=0, poll_seconds=0.3),
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def bundled_target(bundled_server):
    return f"127.0.0.1:{bundled_server.port}"


@pytest.fixture(scope="session")
def official_target(criteo_base, tmp_path_factory):
    binary = shutil.which("tensorflow_model_server")
    if binary is None:
        pytest.skip("tensorflow_model_server is not on PATH: official-server contract tests skipped")
    workdir = tmp_path_factory.mktemp("official")
    socket = workdir / "grpc.sock"  # TF Serving binds TCP ports on all interfaces: a socket instead
    command = configs.official_server_command(criteo_base, rest_port=0,
                                              grpc_socket_path=str(socket)).split()
    with server_process.started(command, workdir, grpc_target=f"unix:{socket}") as server:
        yield server.wait_ready([MODEL], timeout=120).target


@pytest.fixture(scope="session", params=["bundled", "tensorflow_model_server"])
def client(request):
    target = request.getfixturevalue(f"{'bundled' if request.param == 'bundled' else 'official'}_target")
    with ServingClient(target, timeout=60) as c:
        c.wait_until_available(MODEL, timeout=120)
        yield c


@pytest.fixture(scope="session")
def held_out_rows() -> list[dict]:
    """Real Criteo rows the model never saw, plus unseen categories and an all-missing row."""
    from pipeline.raw_rows import iter_raw_examples, load_spec

    path = shared_data("criteo/paddlerec_part0.tsv")
    rows = [features for features, _ in iter_raw_examples(str(path), load_spec(dataset="criteo"))]
    unseen = {k: ([b"never-seen-" + k.encode()] if k.startswith("C") else v)
              for k, v in rows[0].items()}
    missing = {k: [] for k in rows[0]}
    return rows + [unseen, missing]


def _in_process(version_dir: pathlib.Path, rows: list[dict]) -> np.ndarray:
    loaded = tf.saved_model.load(str(version_dir))
    serialized = examples.serialize_rows(rows)
    return loaded.signatures["serving_default"](examples=tf.constant(serialized))[
        "probabilities"].numpy()


@pytest.fixture(scope="session")
def keras_reference(criteo_run_dir, criteo_preprocessed_dir, held_out_rows) -> np.ndarray:
    """The trained Keras model on the TFT-transformed held-out rows, in process, calibrated by the
    run's calibration map (fitted on validation by the trainer, not the identity)."""
    import tensorflow_transform as tft

    from pipeline.dataset_info import read_dataset_info
    from serving.export import _keras_reference
    from trainer.calibration import read_calibration
    from trainer.model_io import load_model

    info = read_dataset_info(criteo_preprocessed_dir)
    tft_output = tft.TFTransformOutput(str(info.transform_output_dir))
    raw_spec = {k: v for k, v in tft_output.raw_feature_spec().items() if k != info.label_key}
    calibration = read_calibration(criteo_run_dir)
    assert calibration.method != "none"  # the trainer calibrates by default: the export must serve it
    return _keras_reference(load_model(criteo_run_dir), tft_output.transform_features_layer(),
                            raw_spec, info.field_names, examples.serialize_rows(held_out_rows),
                            calibration=calibration)[0]


def _session_feeds(rows: list[dict]) -> dict[str, dict[str, np.ndarray]]:
    serialized = np.array(examples.serialize_rows(rows), dtype=object)
    texts = examples.field_texts(rows, list(rows[0]))
    return {"serving_default": {"examples": serialized},
            "raw_fields": {k: np.array(v, dtype=object) for k, v in texts.items()},
            "classification": {"inputs": serialized}}


def _published_versions(base: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p.parent for p in base.glob("*/[0-9]*/saved_model.pb"))


def test_every_export_runs_under_tf_servings_session_loader(criteo_base, keras_reference,
                                                            held_out_rows):
    """Fresh graph + TF1 session, restore, init op, tensors by SignatureDef name: the C++ path."""
    exported = _published_versions(criteo_base)
    assert exported
    for version_dir in exported:
        out = session_loader.run_signatures(version_dir, _session_feeds(held_out_rows))
        for got in (out["serving_default"]["probabilities"], out["raw_fields"]["probabilities"],
                    out["classification"]["scores"][:, 1]):
            np.testing.assert_allclose(got, keras_reference, atol=1e-5, rtol=0)


def _closure_op_types(functions: dict, names: list[str]) -> set[str]:
    """Op types of the functions `names` and of every function they call."""
    seen, ops, todo = set(), set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        for node in functions[name].node_def:
            ops.add(node.op)
            for attr in node.attr.values():
                todo.extend([attr.func.name] if attr.HasField("func") else
                            [f.name for f in attr.list.func])
    return ops


def test_lookup_tables_are_initialised_at_load_not_per_call(criteo_base, held_out_rows, tmp_path):
    from tensorflow.core.protobuf import saved_model_pb2

    version_dir = tmp_path / "1"
    shutil.copytree(criteo_base / MODEL / "1", version_dir)
    graph = saved_model_pb2.SavedModel.FromString(
        (version_dir / "saved_model.pb").read_bytes()).meta_graphs[0]
    functions = {f.signature.name: f for f in graph.graph_def.library.function}
    nodes = {n.name: n for n in graph.graph_def.node}
    signature = graph.signature_def["serving_default"]
    called = [nodes[t.name.split(":")[0]].attr["f"].func.name for t in signature.outputs.values()]
    every_op = _closure_op_types(functions, list(functions))
    assert "InitializeTableFromTextFileV2" in every_op  # the tables exist, initialised by the init op
    per_call = _closure_op_types(functions, called)
    assert not {op for op in per_call if op.startswith("InitializeTable") or op == "ReadFile"}
    # Behaviour: once loaded, answering needs no asset file (per-call init would re-read it).
    feeds = _session_feeds(held_out_rows[:64])
    with session_loader.SessionModel(version_dir) as loaded:
        before = loaded.run("serving_default", feeds["serving_default"])["probabilities"]
        (version_dir / "assets").rename(tmp_path / "assets_gone")
        after = loaded.run("serving_default", feeds["serving_default"])["probabilities"]
    np.testing.assert_array_equal(after, before)


def test_export_layout_configs_and_warmup(criteo_base, criteo_preprocessed_dir):
    version_dir = criteo_base / MODEL / "1"
    assert (version_dir / "saved_model.pb").is_file() and (version_dir / "variables").is_dir()
    assert sorted(p.name for p in (criteo_base / MODEL).iterdir()) == ["1"]  # no temp dir left
    # self-contained: the vocabulary travels in assets/, nothing points back at the data dir
    assert any((version_dir / "assets").iterdir())
    assert str(criteo_preprocessed_dir).encode() not in (version_dir / "saved_model.pb").read_bytes()
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in
               tf.data.TFRecordDataset(str(version_dir / "assets.extra/tf_serving_warmup_requests"))]
    kinds = [r.WhichOneof("log_type") for r in records]
    assert kinds.count("predict_log") >= 2 and "classify_log" in kinds
    first = records[0].predict_log.request
    assert first.model_spec.name == MODEL and first.inputs["examples"].string_val
    assert tf.train.Example.FromString(first.inputs["examples"].string_val[0]).features.feature
    parsed = configs.read_models_config(criteo_base / "models.config")
    assert isinstance(parsed, model_server_config_pb2.ModelServerConfig)
    assert parsed.model_config_list.config[0].base_path == str((criteo_base / MODEL).resolve())
    batching = configs.read_text_proto(criteo_base / "batching.config", BatchingParameters())
    assert batching.max_batch_size.value == configs.BatchingSettings().max_batch_size
    monitoring = configs.read_text_proto(criteo_base / "monitoring.config", MonitoringConfig())
    assert monitoring.prometheus_config.enable


def test_grpc_predictions_equal_in_process_savedmodel(criteo_base, client, held_out_rows):
    expected = _in_process(criteo_base / MODEL / "1", held_out_rows)
    got = np.concatenate(list(client.predict_rows(MODEL, held_out_rows, batch_size=32)))
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    assert np.all(np.isfinite(got[-2:])) and np.all((got > 0) & (got < 1))


def test_raw_fields_signature_equals_examples(client, held_out_rows):
    names = list(held_out_rows[0])
    texts = examples.field_texts(held_out_rows, names)
    by_fields = client.predict_tensors(
        MODEL, {k: np.array(v, dtype=object) for k, v in texts.items()}, "raw_fields")
    by_examples = client.predict_examples(MODEL, examples.serialize_rows(held_out_rows))
    np.testing.assert_allclose(by_fields["probabilities"], by_examples, atol=1e-6, rtol=0)


def test_metadata_lists_both_signatures(client):
    signatures = client.metadata(MODEL).signature_def
    default = signatures["serving_default"]
    assert default.inputs["examples"].dtype == tf.string.as_datatype_enum
    assert [d.size for d in default.inputs["examples"].tensor_shape.dim] == [-1]
    assert {"probabilities", "logits", "oov_fraction"} <= set(default.outputs)
    fields = signatures["raw_fields"].inputs
    assert {f"I{i}" for i in range(1, 14)} | {f"C{i}" for i in range(1, 27)} == set(fields)
    assert all([d.size for d in t.tensor_shape.dim] == [-1] for t in fields.values())
    assert client.status(MODEL) == {1: AVAILABLE}


def test_bad_requests_get_status_on_real_model(client):
    with pytest.raises(grpc.RpcError) as err:
        client.predict_examples("no_such_model", [b""])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        client.predict_examples(MODEL, [b"\x0a\x03garbage"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert client.predict_examples(MODEL, examples.serialize_rows([{}])).shape == (1,)


def _probabilities(text: str) -> np.ndarray:
    """The `probability` column of batch-scoring output (header first)."""
    header, *lines = [line.split("\t") for line in text.splitlines()]
    column = header.index("probability")
    return np.array([float(line[column]) if line[column] else np.nan for line in lines])


def test_predict_cli_writes_one_probability_per_row(bundled_target, criteo_base, tmp_path):
    rows_file = shared_data("criteo/paddlerec_part0.tsv")
    out = tmp_path / "p.txt"
    assert cli.main(["predict", "--target", bundled_target, "--model_name", MODEL, "--input",
                     str(rows_file), "--format", "criteo", "--batch_size", "16",
                     "--output", str(out), "--wait_ready", "60"]) == 0
    from pipeline.raw_rows import iter_raw_examples, load_spec
    rows = [f for f, _ in iter_raw_examples(str(rows_file), load_spec(dataset="criteo"))]
    written = _probabilities(out.read_text())
    np.testing.assert_allclose(written, _in_process(criteo_base / MODEL / "1", rows), atol=2e-6)


@pytest.fixture(scope="session")
def raw_files(criteo_generated_file, tmp_path_factory) -> dict[str, pathlib.Path]:
    """40 training rows with row 5 cut short; the same rows without the label column."""
    tmp = tmp_path_factory.mktemp("raw_scoring")
    with criteo_generated_file.open("rb") as handle:
        lines = [handle.readline().rstrip(b"\n") for _ in range(40)]
    lines[4] = b"\t".join(lines[4].split(b"\t")[:10])
    files = {"labeled": tmp / "labeled.tsv", "unlabeled": tmp / "unlabeled.tsv"}
    files["labeled"].write_bytes(b"\n".join(lines) + b"\n")
    files["unlabeled"].write_bytes(b"\n".join(line.split(b"\t", 1)[1] for line in lines) + b"\n")
    return files


def test_trainer_predict_on_a_raw_file_is_line_aligned(criteo_run_dir, criteo_preprocessed_dir, criteo_base,
                                                      raw_files, bundled_target, tmp_path):
    """The run's TFT graph + Keras model in process (trainer) and the exported model over gRPC
    (serving predict) give the same aligned lines: one shared loop, two scorers."""
    from pipeline.raw_rows import iter_raw_examples, load_spec
    from trainer import cli as trainer_cli

    outputs = {}
    for name in ("labeled", "unlabeled"):
        outputs[name] = tmp_path / f"{name}.tsv"
        assert trainer_cli.main(["--stage=predict", f"--data={criteo_preprocessed_dir}",
                                 f"--run_dir={criteo_run_dir}", f"--input={raw_files[name]}",
                                 f"--output={outputs[name]}", "--on_bad_row=nan"]) == 0
    text = outputs["labeled"].read_text()
    assert text == outputs["unlabeled"].read_text()  # the label column is detected and never needed
    lines = text.splitlines()
    assert lines[0] == "line\tprobability\treason" and len(lines) == 1 + 40
    assert lines[5] == "5\tnan\tcolumn_count"
    got = _probabilities(text)
    rows = [f for f, _ in iter_raw_examples(str(raw_files["labeled"]), load_spec(dataset="criteo"))]
    expected = _in_process(criteo_base / MODEL / "1", rows)
    np.testing.assert_allclose(np.delete(got, 4), expected, atol=1e-5, rtol=0)
    served = tmp_path / "served.tsv"
    assert cli.main(["predict", "--target", bundled_target, "--model_name", MODEL, "--input",
                     str(raw_files["unlabeled"]), "--output", str(served), "--on_bad_row=nan"]) == 0
    np.testing.assert_allclose(_probabilities(served.read_text()), got, atol=1e-5, rtol=0)


def test_trainer_predict_on_a_bad_raw_row_exits_2_naming_the_line(criteo_run_dir, criteo_preprocessed_dir,
                                                                 raw_files, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = tmp_path / "p.tsv"
    result = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "--stage=predict", f"--data={criteo_preprocessed_dir}",
         f"--run_dir={criteo_run_dir}", f"--input={raw_files['labeled']}", f"--output={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr
    assert f"trainer: error: {raw_files['labeled']}:5: cannot score this row: wrong number of columns " \
           "(10, expected 40)" in result.stderr
    assert not out.exists()


def _oov_rows(server: ModelServer) -> dict[str, int]:
    text = server.metrics.prometheus()
    return {name: int(next((line.split()[-1] for line in text.splitlines()
                            if line.startswith(f':optfusion:serving:{name}{{model_name="{MODEL}"}}')), 0))
            for name in ("predicted_rows", "mostly_oov_rows")}


def test_foreign_rows_are_flagged_and_training_rows_are_not(bundled_server, bundled_target,
                                                            criteo_generated_file):
    """oov_fraction, the server's metric and the client's warning on the real export."""
    import warnings

    from pipeline.raw_rows import iter_raw_examples, load_spec
    from serving.client import ForeignRowsWarning

    training = [f for f, _ in iter_raw_examples(str(criteo_generated_file), load_spec(dataset="criteo"))][:200]
    rng = np.random.default_rng(0)
    foreign = [{k: ([f"{rng.integers(1 << 40):x}".encode()] if k.startswith("C") else v) for k, v in row.items()}
               for row in training[:50]]
    with ServingClient(bundled_target, timeout=60) as c:
        before = _oov_rows(bundled_server)
        _, oov = c.predict_scores(MODEL, examples.serialize_rows(training))
        assert oov is not None and oov.shape == (200,) and np.mean(oov > 0.5) < 0.5
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            c.predict_examples(MODEL, examples.serialize_rows(training))
        mostly = int(np.sum(oov > 0.5))
        assert _oov_rows(bundled_server) == {"predicted_rows": before["predicted_rows"] + 400,
                                             "mostly_oov_rows": before["mostly_oov_rows"] + 2 * mostly}
        _, oov = c.predict_scores(MODEL, examples.serialize_rows(foreign))
        np.testing.assert_array_equal(oov, np.ones(50, np.float32))  # every C1..C26 token unseen
        with pytest.warns(ForeignRowsWarning, match="do not look like the training data: 50 of 50 rows"):
            c.predict_examples(MODEL, examples.serialize_rows(foreign))
        assert _oov_rows(bundled_server) == {"predicted_rows": before["predicted_rows"] + 500,
                                             "mostly_oov_rows": before["mostly_oov_rows"] + 2 * mostly + 100}


def test_failed_verification_publishes_nothing(criteo_run_dir, criteo_preprocessed_dir, criteo_base):
    before = sorted(p.name for p in (criteo_base / MODEL).iterdir())
    code = cli.main(["export", "--run", str(criteo_run_dir), "--data", str(criteo_preprocessed_dir),
                     "--model_base_path", str(criteo_base), "--model_name", MODEL,
                     "--verify_rows", "50", "--tolerance", "-1"])
    assert code == 1
    assert sorted(p.name for p in (criteo_base / MODEL).iterdir()) == before


def test_bad_export_arguments_exit_2(criteo_run_dir, criteo_preprocessed_dir, criteo_base,
                                    tmp_path, capsys):
    common = ["export", "--run", str(criteo_run_dir), "--model_base_path", str(criteo_base),
              "--model_name", MODEL]
    assert cli.main([*common, "--data", str(tmp_path / "nope")]) == 2
    assert "stats.json is missing" in capsys.readouterr().err
    assert cli.main([*common, "--data", str(criteo_preprocessed_dir), "--version", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
