"""Exports load and run under the session loader, the path `tensorflow_model_server` takes.

Fast: a tiny model written by `serving.module` (the contract tests do the same
on the real pipeline + trainer chain). Also: the checker itself catches the
Keras-3-in-`tf.Module` export that only the TF2 loader restores, and export
refuses model names that would leave --model_base_path.
"""

from __future__ import annotations

import functools
import importlib
import pathlib
import re
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf

from serving import cli, examples, module, session_loader
from tests.conftest import ROOT
from tests.serving import tiny
from trainer.calibration import Calibration

SEED = 3


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tiny.write_version(tmp_path_factory.mktemp("tiny_session"), 1, "tiny", seed=SEED)


def _feeds(rows: list[dict]) -> dict[str, dict[str, np.ndarray]]:
    serialized = np.array(examples.serialize_rows(rows, examples.feature_kinds(tiny.RAW_SPEC)),
                          dtype=object)
    texts = examples.field_texts(rows, tiny.FIELDS)
    return {
        module.DEFAULT_SIGNATURE: {module.EXAMPLES_INPUT: serialized},
        module.FIELDS_SIGNATURE: {k: np.array(v, dtype=object) for k, v in texts.items()},
        module.CLASSIFY_SIGNATURE: {module.CLASSIFY_INPUT: serialized},
    }


def test_every_signature_equals_keras_under_session_loader(tiny_export):
    expected = tiny.keras_probabilities(tiny.ROWS, seed=SEED)
    with session_loader.SessionModel(tiny_export) as loaded:
        out = {name: loaded.run(name, inputs) for name, inputs in _feeds(tiny.ROWS).items()}
        assert loaded.signature_defs[module.CLASSIFY_SIGNATURE].method_name == module.CLASSIFY_METHOD
    np.testing.assert_allclose(out[module.DEFAULT_SIGNATURE]["probabilities"], expected, atol=1e-6)
    np.testing.assert_allclose(out[module.FIELDS_SIGNATURE]["probabilities"], expected, atol=1e-6)
    scores = out[module.CLASSIFY_SIGNATURE]["scores"]
    np.testing.assert_allclose(scores[:, 1], expected, atol=1e-6)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-6)
    assert out[module.CLASSIFY_SIGNATURE]["classes"].tolist() == [[b"0", b"1"]] * len(tiny.ROWS)
    assert len(set(np.round(expected, 6))) > 1  # distinct rows, distinct answers


ISOTONIC = Calibration("isotonic", knots=((-0.225, -2.0), (0.0, 0.4), (0.2, 1.5)))
"""Knots among the tiny model's logits (-0.234, -0.221, 0.142, 0.254): two rows between knots, one beyond each end."""


@pytest.mark.parametrize("calibration", [Calibration.from_temperature(2.5), Calibration("beta", 0.3, 1.2, -0.5),
                                         ISOTONIC], ids=["temperature", "beta", "isotonic"])
def test_a_calibrated_export_serves_sigmoid_of_the_calibrated_keras_logit(tmp_path, calibration):
    """A temperature, a beta and an isotonic map (trainer/calibration.py): under the session loader every
    signature answers sigmoid(map(keras_logit)), `logits` is map(keras_logit), computed here in
    float64 numpy; export's own verification passes against the calibrated Keras answer and fails
    against the uncalibrated one."""
    version = tiny.write_version(tmp_path, 1, "tiny", seed=SEED, calibration=calibration)
    keras_logits = tiny.keras_logits(tiny.ROWS, seed=SEED)
    want_logits = calibration.apply(keras_logits.astype(np.float64))
    expected = 1 / (1 + np.exp(-want_logits))
    with session_loader.SessionModel(version) as loaded:
        out = {name: loaded.run(name, inputs) for name, inputs in _feeds(tiny.ROWS).items()}
    np.testing.assert_allclose(out[module.DEFAULT_SIGNATURE]["logits"], want_logits, atol=1e-5)
    for got in (out[module.DEFAULT_SIGNATURE]["probabilities"], out[module.FIELDS_SIGNATURE]["probabilities"],
                out[module.CLASSIFY_SIGNATURE]["scores"][:, 1]):
        np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.max(np.abs(expected - tiny.keras_probabilities(tiny.ROWS, seed=SEED))) > 1e-2  # the map matters

    from serving import export

    verify = functools.partial(export.verify, version, tiny.tiny_model(SEED), tiny.HashTransform(), tiny.RAW_SPEC,
                               tiny.FIELDS, tiny.ROWS, "tiny rows", 1e-5, oov_fields=tiny.OOV_FIELDS)
    assert verify(calibration=calibration).calibration == calibration
    with pytest.raises(export.ExportError, match="calibrated by none"):
        verify()


@pytest.mark.parametrize("inter_op", [0, -1])
def test_callable_runs_small_batches_in_the_caller_thread_with_the_same_answers(tiny_export, inter_op):
    # Batches up to caller_thread_rows run with RunOptions(inter_op_thread_pool=-1), larger
    # ones on the pool: every row gets the answer of `run`, whichever path its batch took.
    feed = _feeds(tiny.ROWS)[module.DEFAULT_SIGNATURE]
    config = session_loader.session_config(inter_op=inter_op)
    with session_loader.SessionModel(tiny_export, config) as loaded:
        expected = loaded.run(module.DEFAULT_SIGNATURE, feed)["probabilities"]
        for rows in (0, 1, len(tiny.ROWS)):
            call = loaded.callable(module.DEFAULT_SIGNATURE, caller_thread_rows=rows)
            whole = call(feed)["probabilities"]
            single = [call({k: v[i:i + 1] for k, v in feed.items()})["probabilities"][0]
                      for i in range(len(tiny.ROWS))]
            np.testing.assert_allclose(whole, expected, atol=1e-7)
            np.testing.assert_allclose(single, expected, atol=1e-6)
            # The handle converts no feed itself: fixed-width bytes arrive as the signature's dtype.
            fixed = call({k: v.astype(bytes) for k, v in feed.items()})["probabilities"]
            np.testing.assert_allclose(fixed, expected, atol=1e-7)


class _LegacyModule(tf.Module):
    """The old export style: a Keras 3 layer held by a plain tf.Module."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = keras.layers.Dense(1)
        self.dense.build((None, 2))

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, "x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": self.dense(x)}


def test_session_loader_catches_an_export_only_the_tf2_loader_restores(tmp_path):
    legacy = _LegacyModule()
    tf.saved_model.save(legacy, str(tmp_path), signatures={"serving_default": legacy.serve})
    x = np.ones([1, 2], np.float32)
    assert tf.saved_model.load(str(tmp_path)).signatures["serving_default"](x=x)["y"].shape == (1, 1)
    with pytest.raises(session_loader.SessionLoadError, match="Could not find variable"):
        session_loader.run_signatures(tmp_path, {"serving_default": {"x": x}})


def test_recorded_reference_replays_and_a_changed_one_fails(tiny_export, tmp_path, capsys):
    reference = tmp_path / "ref.json"
    assert session_loader.main([str(tiny_export), "--save", str(reference)]) == 0
    assert session_loader.main([str(tiny_export), "--compare", str(reference)]) == 0
    assert "session loader OK" in capsys.readouterr().out
    changed = reference.read_text().replace('"values": [0.', '"values": [0.1', 1)
    assert changed != reference.read_text()
    reference.write_text(changed)
    assert session_loader.main([str(tiny_export), "--compare", str(reference)]) == 1
    assert "max abs diff" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["..", ".", "../escape", "a/b", "/abs", ".hidden", "", "x" * 129,
                                  "sp ace", "quote\"", "new\nline"])
def test_export_refuses_unsafe_model_names_and_writes_nothing(name, tmp_path, capsys):
    base = tmp_path / "base"
    base.mkdir()
    code = cli.main(["export", "--run", str(tmp_path / "run"), "--data", str(tmp_path / "data"),
                     "--model_base_path", str(base), "--model_name", name])
    assert code == 2
    assert "--model_name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]
    assert list(base.iterdir()) == []


def test_the_runtime_check_script_parses_and_imports_names_that_exist():
    # scripts/tfserving_runtime_check.sh downloads TensorFlow, so it is not in `make test`;
    # this keeps its shell and embedded Python from rotting (it once imported a renamed helper).
    script = ROOT / "scripts" / "tfserving_runtime_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    snippets = re.findall(r"<<'EOF'\n(.*?)\nEOF", script.read_text(), re.S)
    assert snippets
    for code in snippets:
        compile(code, str(script), "exec")
        for name, imported in re.findall(r"^from ([\w.]+) import (.+)$", code, re.M):
            found = importlib.import_module(name)
            for attr in imported.split(","):
                assert hasattr(found, attr.strip()), f"{script.name}: {name} has no {attr.strip()}"
