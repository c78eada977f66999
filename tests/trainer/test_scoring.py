"""`trainer --stage=evaluate|predict|calibrate`: a finished run on its own test split and on new data."""

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from pipeline.dataset_info import read_dataset_info
from tests.trainer.synthetic import write_synthetic_run
from trainer import cli
from trainer.calibration import read_calibration
from trainer.data import make_dataset
from trainer.model_io import load_model

NEW_ROWS = 500


@pytest.fixture(scope="module")
def new_data(tmp_path_factory):
    """`pipeline transform`-like outputs of new rows from the same hidden model: labeled and unlabeled."""
    base = tmp_path_factory.mktemp("new_data")
    return {
        labeled: write_synthetic_run(base / str(labeled), seed=0, shards=3, seq_len=4, labeled=labeled,
                                     splits={"data": NEW_ROWS})
        for labeled in (True, False)
    }


def _trainer(capsys, *args, expect=0):
    capsys.readouterr()
    assert cli.main([str(a) for a in args]) == expect
    return capsys.readouterr()


def _error(captured) -> str:
    lines = [line for line in captured.err.splitlines() if line.startswith("trainer: error:")]
    assert len(lines) == 1, captured.err
    return lines[0]


def _model_probabilities(run, data_dir) -> np.ndarray:
    """The run's model on every record of `data`, in stored order, outside the stage, calibrated:
    sigmoid of the run's calibration map of the logit (as the export serves it)."""
    model, calibration = load_model(run), read_calibration(run)
    assert calibration.method != "none"  # the trainer calibrates by default
    batches = make_dataset(read_dataset_info(data_dir), "data", 64, in_file_order=True)
    return np.concatenate([tf.sigmoid(calibration.apply_tf(model(b if isinstance(b, dict) else b[0]))).numpy().ravel()
                           for b in batches])


@pytest.mark.slow
def test_evaluate_reproduces_the_runs_test_metrics(multivalued_run, multivalued_dir, capsys):
    out = _trainer(capsys, "--stage=evaluate", "--data", multivalued_dir, "--run_dir", multivalued_run)
    metrics = json.loads((multivalued_run / "metrics.json").read_text())
    written = json.loads((multivalued_run / "evaluation.test.json").read_text())
    assert written["split"] == "test" and written["rows"] == metrics["test_rows"]
    assert written["auc"] == pytest.approx(metrics["test_auc"], abs=1e-6)
    # evaluate scores what is served: the calibrated probabilities
    assert written["temperature"] == metrics["calibration"]["temperature"]
    assert written["logloss"] == pytest.approx(metrics["calibration"]["test"]["logloss_calibrated"], abs=1e-6)
    assert f"AUC {written['auc']:.4f}" in out.out and "evaluation.test.json" in out.out


@pytest.mark.slow
def test_calibrate_refits_a_finished_run_and_evaluate_serves_the_new_map(multivalued_run, multivalued_dir, new_data,
                                                                          tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(multivalued_run, run)  # the shared fixture stays as trained
    before = json.loads((run / "metrics.json").read_text())
    out = _trainer(capsys, "calibrate", "--data", multivalued_dir, "--run_dir", run, "--calibrate", "isotonic")
    after = json.loads((run / "metrics.json").read_text())
    c = after["calibration"]
    assert c["method"] == "isotonic" and c["refit"]["previous"] == before["calibration"]["method"] != "isotonic"
    assert read_calibration(run).method == "isotonic"
    assert {k: v for k, v in after.items() if k != "calibration"} == {k: v for k, v in before.items()
                                                                       if k != "calibration"}  # the model's own
    assert c["test"]["logloss"] == pytest.approx(before["calibration"]["test"]["logloss"], abs=1e-9)
    assert f"calibration {before['calibration']['method']} -> isotonic" in out.out
    _trainer(capsys, "evaluate", "--data", multivalued_dir, "--run_dir", run)
    written = json.loads((run / "evaluation.test.json").read_text())
    assert written["logloss"] == pytest.approx(c["test"]["logloss_calibrated"], abs=1e-6)
    assert written["auc"] == pytest.approx(after["test_auc"], abs=1e-9)  # strictly increasing: AUC kept
    assert written["calibration"].startswith("isotonic")

    assert "needs --calibrate METHOD" in _error(_trainer(capsys, "calibrate", "--data", multivalued_dir,
                                                        "--run_dir", run, expect=2))
    assert "needs a labeled split 'valid'" in _error(_trainer(capsys, "calibrate", "--data", new_data[True],
                                                             "--run_dir", run, "--calibrate", "beta", expect=2))
    (run / "metrics.json").unlink()
    assert "is not a finished train or retrain run" in _error(_trainer(
        capsys, "calibrate", "--data", multivalued_dir, "--run_dir", run, "--calibrate", "beta", expect=2))
    assert read_calibration(run).method == "isotonic"  # a refused refit leaves the map


@pytest.mark.slow
def test_evaluate_new_labeled_data_defaults_to_its_only_split(multivalued_run, new_data, tmp_path, capsys):
    target = tmp_path / "eval" / "new.json"
    _trainer(capsys, "--stage=evaluate", "--data", new_data[True], "--run_dir", multivalued_run, "--output", target)
    result = json.loads(target.read_text())
    assert result["split"] == "data" and result["rows"] == NEW_ROWS
    assert result["auc"] > 0.6  # same hidden model as the training data
    assert [p.name for p in target.parent.iterdir()] == ["new.json"]  # no temp file left


@pytest.mark.slow
@pytest.mark.parametrize("labeled, name", [(False, "scores.tsv"), (True, "scores.csv")])
def test_predict_writes_one_probability_per_record(labeled, name, multivalued_run, new_data, tmp_path, capsys):
    target = tmp_path / name
    out = _trainer(capsys, "--stage=predict", "--data", new_data[labeled], "--run_dir", multivalued_run,
                   "--output", target)
    lines = target.read_text().splitlines()
    sep = "," if name.endswith(".csv") else "\t"
    assert lines[0] == sep.join(["row", "probability", *(["label"] if labeled else [])])
    table = np.array([line.split(sep) for line in lines[1:]], dtype=float)
    assert table.shape == (NEW_ROWS, 3 if labeled else 2)
    np.testing.assert_array_equal(table[:, 0], np.arange(NEW_ROWS))
    np.testing.assert_allclose(table[:, 1], _model_probabilities(multivalued_run, new_data[labeled]), rtol=1e-5)
    if labeled:
        _, labels = zip(*make_dataset(read_dataset_info(new_data[True]), "data", 64, in_file_order=True),
                        strict=True)
        np.testing.assert_array_equal(table[:, 2], np.concatenate([y.numpy() for y in labels]))
    assert f"trainer predict: {NEW_ROWS} rows" in out.out and str(target) in out.out
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def _other_graph_dir(multivalued_dir, tmp_path):
    """The run's shards with a stats.json whose `seq` vocabulary differs (another transform graph)."""
    other = tmp_path / "other_graph"
    other.mkdir()
    for shard in multivalued_dir.glob("*.tfrecord.gz"):
        (other / shard.name).symlink_to(shard)
    stats = json.loads((multivalued_dir / "stats.json").read_text())
    fields = [dict(f, vocab_size=f["vocab_size"] + 3) if f["name"] == "seq" else f for f in stats["fields"]]
    (other / "stats.json").write_text(json.dumps(dict(stats, fields=fields)))
    return other


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, message",
    [
        ("unlabeled", "is unlabeled (records without 'label'): nothing to evaluate"),
        ("other_graph", "was transformed with another graph than the run"),
        ("output_exists", "exists; remove it or choose another file"),
        ("no_output", "trainer predict needs --output FILE"),
        ("not_a_run", "is not a trainer run directory: run.json is missing"),
        ("bad_split", "--split 'valid'"),
        ("train_on_new_data", "training needs a labeled `pipeline` run"),
        ("raw_flag_without_input", "--on_bad_row needs --input RAW_FILE"),
        ("input_and_split", "--split selects TFRecords of --data; --input scores a raw file"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
        case, message, multivalued_run, multivalued_dir, new_data, tmp_path, capsys):
    existing = tmp_path / "mine.tsv"
    existing.write_text("a user's file\n")
    run, new = ["--run_dir", multivalued_run], ["--data", new_data[False]]
    args = {
        "unlabeled": ["--stage=evaluate", *new, *run],
        "other_graph": ["--stage=predict", "--data", _other_graph_dir(multivalued_dir, tmp_path), *run,
                        "--output", tmp_path / "p.tsv"],
        "output_exists": ["--stage=predict", *new, *run, "--output", existing],
        "no_output": ["--stage=predict", *new, *run],
        "not_a_run": ["--stage=predict", *new, "--run_dir", tmp_path, "--output", tmp_path / "p.tsv"],
        "bad_split": ["--stage=predict", *new, *run, "--split", "valid", "--output", tmp_path / "p.tsv"],
        "train_on_new_data": ["--stage=train", "--model", "lr", *new, "--out", tmp_path / "o"],
        "raw_flag_without_input": ["--stage=predict", *new, *run, "--on_bad_row=nan", "--output", tmp_path / "p.tsv"],
        "input_and_split": ["--stage=predict", *new, *run, "--input", existing, "--split", "data",
                            "--output", tmp_path / "p.tsv"],
    }[case]
    assert message in _error(_trainer(capsys, *args, expect=2))
    assert existing.read_text() == "a user's file\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "other_graph") == ["mine.tsv"]


def test_help_lists_the_scoring_stages(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "trainer evaluate --data DIR --run_dir RUN" in text
    assert "trainer predict  --data DIR --run_dir RUN" in text
    assert "trainer calibrate --data DIR --run_dir RUN --calibrate" in text
    assert "evaluate AUC and LogLoss of a finished run" in " ".join(text.split())
