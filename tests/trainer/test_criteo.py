"""Search then retrain on Criteo-layout data produced by the real `pipeline` job."""

import json

import pytest

from trainer import cli
from trainer.model_io import load_model


def _run(*args):
    assert cli.main([str(a) for a in args]) == 0


@pytest.mark.slow
def test_search_retrain_on_the_generated_criteo_fixture(criteo_preprocessed_dir, tmp_path):
    fast = ["--train.epochs=2", "--train.batch_size=1024"]
    # argmax(beta), the default Hard rule, pinned: this test is about the stages, not the rule. Rechecked
    # 2026-12-06 from one search of this fixture: Hard test AUC beta 0.611, `remove` 0.605 with the DeLong
    # tie margin (search.hard_select_tie_se=1; 0.603 at 0, where it had given 0.59 before the new
    # early stopping): all pass 0.6, `remove` by too little to pin it here.
    _run("--stage=search", "--data", criteo_preprocessed_dir, "--out", tmp_path / "s", *fast,
         "--search.hard_select=beta")
    # 2 epochs of 16 steps leave the retrain at ~0.60 with the reference's emb std 1e-2: give it 5.
    _run("--stage=retrain", "--data", criteo_preprocessed_dir, "--architecture", tmp_path / "s/architecture.json",
         "--mode", "hard", "--out", tmp_path / "r", "--train.epochs=5", "--train.patience=5")
    metrics = json.loads((tmp_path / "r/metrics.json").read_text())
    assert metrics["test_auc"] > 0.6
    model = load_model(tmp_path / "r")
    assert [v.name for v in model.arch_variables] == []


@pytest.mark.slow
@pytest.mark.shared_data
def test_cpu_preset_reaches_auc_070_on_the_real_criteo_sample(criteo_sample_dir, tmp_path):
    """The quality bar at the CPU preset (5-seed mean/spread of every variant:
    benchmarks/criteo_sample_quality.py, figures in benchmarks/RESULTS.md)."""
    _run("--stage=search", "--data", criteo_sample_dir, "--out", tmp_path / "s")
    _run("--stage=retrain", "--data", criteo_sample_dir, "--architecture", tmp_path / "s/architecture.json",
         "--mode", "soft", "--out", tmp_path / "r")
    metrics = json.loads((tmp_path / "r/metrics.json").read_text())
    assert metrics["test_auc"] >= 0.70, metrics
