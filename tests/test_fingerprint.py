"""Transform fingerprints end to end: recorded by every run, refused on a mismatch by every reader.

The pairing under test is the silent one: a model trained on one `pipeline`
run, given data of another run of the same schema and file (another --seed:
other vocabularies, so the same ids mean other tokens).
"""

from __future__ import annotations

import json
import logging
import pathlib
import shutil

import pytest

from pipeline import fingerprint
from pipeline.dataset_info import FINGERPRINT_KEY, STATS_FILE, read_dataset_info
from pipeline.features import DONE_FILE
from tests.conftest import run_pipeline

pytestmark = pytest.mark.slow
GRAPH_DIRS = ("transform_fn", "transformed_metadata", "metadata")


def _recorded(data_dir: pathlib.Path) -> tuple[str, str]:
    return (json.loads((data_dir / STATS_FILE).read_text())[FINGERPRINT_KEY],
            json.loads((data_dir / DONE_FILE).read_text())[FINGERPRINT_KEY])


def _copy_run(data_dir: pathlib.Path, to: pathlib.Path, graph_from: pathlib.Path | None = None) -> pathlib.Path:
    """A copy of a pipeline run (shards linked), its graph dirs taken from `graph_from` if given."""
    to.mkdir()
    for path in data_dir.iterdir():
        if path.suffix == ".gz":
            (to / path.name).symlink_to(path)
        elif path.is_file():
            shutil.copy(path, to / path.name)
    for name in GRAPH_DIRS:
        shutil.copytree((graph_from or data_dir) / name, to / name)
    return to


def _error_line(err: str, prefix: str) -> str:
    assert "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith(prefix)]
    return line


def test_pipeline_runs_record_a_content_fingerprint(criteo_preprocessed_dir, criteo_other_seed_dir, tmp_path):
    own, other = _recorded(criteo_preprocessed_dir), _recorded(criteo_other_seed_dir)
    assert own[0] == own[1] and other[0] == other[1]  # stats.json and DONE.json agree
    info, other_info = read_dataset_info(criteo_preprocessed_dir), read_dataset_info(criteo_other_seed_dir)
    assert info.field_names == other_info.field_names and own[0] != other[0]
    # Recomputed from the files alone: what a reader does for a run written before fingerprints.
    assert fingerprint.of_directory(criteo_preprocessed_dir, info.fields) == own[0]
    older = _copy_run(criteo_preprocessed_dir, tmp_path / "older")
    stats = json.loads((older / STATS_FILE).read_text())
    del stats[FINGERPRINT_KEY]
    (older / STATS_FILE).write_text(json.dumps(stats))
    assert read_dataset_info(older).fingerprint is None
    assert fingerprint.of_data(read_dataset_info(older)) == own[0]


def test_a_trainer_run_records_the_fingerprint_it_trained_on(criteo_run_dir, criteo_preprocessed_dir):
    run = json.loads((criteo_run_dir / "run.json").read_text())
    assert run[FINGERPRINT_KEY] == _recorded(criteo_preprocessed_dir)[0]


@pytest.mark.parametrize("stage", ["evaluate", "predict"])
def test_scoring_refuses_another_seeds_run(stage, criteo_run_dir, criteo_other_seed_dir, tmp_path, capsys):
    from trainer import cli

    before = sorted(p.name for p in criteo_run_dir.iterdir())
    output = tmp_path / ("scores.tsv" if stage == "predict" else "eval.json")
    args = [f"--stage={stage}", "--data", str(criteo_other_seed_dir), "--run_dir", str(criteo_run_dir),
            *(["--output", str(output)] if stage == "predict" else [])]
    assert cli.main(args) == 2
    message = _error_line(capsys.readouterr().err, "trainer: error: ")
    assert f"{criteo_other_seed_dir} was transformed with another graph than the run {criteo_run_dir}" in message
    assert f"in {criteo_run_dir / 'run.json'}" in message and "pipeline transform --run" in message
    assert not output.exists() and sorted(p.name for p in criteo_run_dir.iterdir()) == before


@pytest.mark.parametrize("data", ["other_seed", "other_fields"])
def test_export_refuses_another_graph_and_writes_nothing(data, criteo_run_dir, criteo_other_seed_dir, tmp_path,
                                                         capsys):
    from serving import cli
    from tests.trainer.synthetic import write_synthetic_run

    data_dir = criteo_other_seed_dir if data == "other_seed" else write_synthetic_run(tmp_path / "synthetic")
    base = tmp_path / "models"
    base.mkdir()
    code = cli.main(["export", "--run", str(criteo_run_dir), "--data", str(data_dir), "--model_base_path", str(base),
                     "--model_name", "x"])
    assert code == 2
    message = _error_line(capsys.readouterr().err, "serving: error: ")
    assert f"cannot export {criteo_run_dir} with {data_dir}" in message
    if data == "other_seed":  # same fields, other vocabularies
        assert "transform fingerprint" in message and str(criteo_run_dir / "run.json") in message
    else:  # no graph, so no fingerprint: the field check
        assert "fields missing ['I1', 'I2'" in message
    assert list(base.iterdir()) == []  # no models/x/


def test_pipeline_transform_refuses_a_run_holding_another_runs_graph(criteo_preprocessed_dir, criteo_other_seed_dir,
                                                                     criteo_generated_file, tmp_path):
    mixed = _copy_run(criteo_preprocessed_dir, tmp_path / "mixed", graph_from=criteo_other_seed_dir)
    out = tmp_path / "out"
    result = run_pipeline("transform", "--run", str(mixed), "--input", str(criteo_generated_file),
                          "--output", str(out), check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    message = _error_line(result.stderr, "pipeline: error: ")
    assert f"{mixed / STATS_FILE} records the transform fingerprint" in message
    assert f"the graph in {mixed / 'transform_fn'}" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed"]


def test_retrain_from_search_weights_of_another_graph_is_refused(criteo_run_dir, criteo_preprocessed_dir, tmp_path,
                                                                 capsys):
    """--init=search copies embeddings, rows of the search run's vocabularies: its graph must be --data's."""
    from trainer import cli

    search = tmp_path / "search"
    search.mkdir()
    shutil.copy(criteo_run_dir / "architecture.json", search)
    (search / "search.weights.npz").write_bytes(b"")  # refused before it is read
    run = json.loads((criteo_run_dir / "run.json").read_text())
    (search / "run.json").write_text(json.dumps(dict(run, stage="search", **{FINGERPRINT_KEY: "0" * 64})))
    out = tmp_path / "retrain"
    assert cli.main(["--stage=retrain", "--data", str(criteo_preprocessed_dir), "--architecture",
                     str(search / "architecture.json"), "--mode", "hard", "--init", "search", "--out", str(out),
                     "--model.n=2"]) == 2
    message = _error_line(capsys.readouterr().err, "trainer: error: ")
    assert "000000000000 in " + str(search / "run.json") in message and "use --init=fresh" in message
    assert not out.exists()


def test_a_run_without_fingerprint_falls_back_to_fields_with_a_warning(criteo_run_dir, criteo_preprocessed_dir,
                                                                       tmp_path, caplog):
    from trainer import cli

    older = tmp_path / "older_run"
    shutil.copytree(criteo_run_dir, older)
    run = json.loads((older / "run.json").read_text())
    del run[FINGERPRINT_KEY]
    (older / "run.json").write_text(json.dumps(run))
    with caplog.at_level(logging.WARNING, logger="trainer"):
        assert cli.main(["--stage=evaluate", "--data", str(criteo_preprocessed_dir), "--run_dir", str(older),
                         "--output", str(tmp_path / "eval.json")]) == 0
    assert f"{older / 'run.json'} records no transform fingerprint" in caplog.text
    assert "only field names and vocabulary sizes were compared" in caplog.text


def test_resume_refuses_data_of_another_graph(tmp_path):
    from trainer.config import load_config, preset_path
    from trainer.stages import RunDirError, prepare_run_dir

    config = load_config(preset_path("criteo", "cpu"), [])
    run = {"stage": "train", "mode": "hard", "model": None, "fields": [], "data_dir": "data"}
    prepare_run_dir(tmp_path, {**run, FINGERPRINT_KEY: "a" * 64}, config, resume=False)
    with pytest.raises(RunDirError, match=f"different fingerprint .*in {tmp_path / 'run.json'}"):
        prepare_run_dir(tmp_path, {**run, FINGERPRINT_KEY: "b" * 64}, config, resume=True)
    prepare_run_dir(tmp_path, {**run, FINGERPRINT_KEY: "a" * 64}, config, resume=True)
