"""Bring your own data, end to end: each example dataset, described only by its
schema file, runs to a trained model that the exported SavedModel serves over
gRPC; unlabeled Criteo rows transformed with an existing run's graph are scored.

One short training per dataset (the point is the chain, not the AUC).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline import raw_rows
from pipeline.job import run_spec
from serving import cli as serving_cli
from serving import configs
from serving.client import ServingClient
from tests import server_process
from tests.pipeline.conftest import EXAMPLE_DATA, SCORING_ROWS, SEQUENCE_FILES
from trainer import cli as trainer_cli

pytestmark = pytest.mark.slow

SHORT = ["--train.epochs=1", "--train.max_steps_per_epoch=5", "--train.batch_size=64"]
# example -> (session fixture of its pipeline run, a raw file of its format)
EXAMPLES = {
    "movielens": ("movielens_run", EXAMPLE_DATA / "movielens_ratings.csv"),
    "libfm": ("libfm_run", EXAMPLE_DATA / "libfm.txt"),
    "sequence": ("sequence_run", SEQUENCE_FILES["test"]),
}


def _train(data, out) -> None:
    assert trainer_cli.main(["--stage=train", "--model=dcn", f"--data={data}", f"--out={out}", *SHORT]) == 0


@pytest.fixture(scope="module")
def served(request, tmp_path_factory):
    """Trains and exports every example into one model base dir; `serving serve` serves it
    in its own process on 127.0.0.1 (stopped by PID)."""
    base = tmp_path_factory.mktemp("models")
    for name, (fixture, _) in EXAMPLES.items():
        data = request.getfixturevalue(fixture).out
        run = tmp_path_factory.mktemp(f"run_{name}")
        _train(data, run)
        assert serving_cli.main(["export", "--run", str(run), "--data", str(data),
                                 "--model_base_path", str(base), "--model_name", name]) == 0
    with server_process.serving(base / configs.MODELS_CONFIG, base, list(EXAMPLES)) as server, \
            ServingClient(server.target, timeout=60) as client:
        yield client


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_is_trained_and_served(served, request, name):
    fixture, raw_file = EXAMPLES[name]
    spec = run_spec(str(request.getfixturevalue(fixture).out))
    rows = [features for features, _ in raw_rows.iter_raw_examples(str(raw_file), spec)][:200]
    probabilities = np.concatenate(list(served.predict_rows(name, rows, batch_size=64)))
    assert probabilities.shape == (len(rows),)
    assert np.all((probabilities > 0) & (probabilities < 1))
    assert np.ptp(probabilities) > 0, "the served model ignores its inputs"


def test_unlabeled_criteo_is_scored_with_an_existing_runs_graph(criteo_run_dir, criteo_scoring, tmp_path):
    # criteo_run_dir is a run on criteo_preprocessed_dir, the run whose graph made criteo_scoring
    scores = tmp_path / "scores.tsv"
    assert trainer_cli.main(["--stage=predict", f"--data={criteo_scoring.out}", f"--run_dir={criteo_run_dir}",
                             f"--output={scores}"]) == 0
    lines = scores.read_text().splitlines()
    header, body = lines[0].split("\t"), [line.split("\t") for line in lines[1:]]
    assert header[:2] == ["row", "probability"] and "label" not in header
    assert len(body) == SCORING_ROWS == json.loads((criteo_scoring.out / "stats.json").read_text())["rows"]
    assert all(0 < float(p) < 1 for _, p in body)
