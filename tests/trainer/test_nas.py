"""AutoCTR and NASRec (trainer/nas/): the block space, each method's search and retrain through the CLI, resume."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from pipeline.dataset_info import read_dataset_info
from trainer import cli
from trainer.config import ConfigError, load_config, preset_path
from trainer.data import make_dataset
from trainer.metrics import roc_auc
from trainer.model_io import load_model
from trainer.nas import NAS_METHODS
from trainer.nas.evolution import EVOLUTION_FILE
from trainer.nas.space import (
    METHOD_OPS,
    READS,
    Block,
    NasArchitecture,
    is_nas_file,
    mutate,
    random_architecture,
)

CONFIG = str(preset_path("criteo", "cpu"))
TINY = ["--model.emb_dim=4", "--train.batch_size=128", "--train.epochs=1", "--train.max_steps_per_epoch=4",
        "--nas.blocks=2", "--nas.dense_dim=8", "--nas.population=2", "--nas.cycles=1", "--nas.sample_size=2",
        "--nas.candidate_steps=3"]


def test_sampled_and_mutated_designs_stay_in_the_methods_space():
    for method in NAS_METHODS:
        dense_ops, sparse_ops = METHOD_OPS[method]
        rng = random.Random(0)
        design = random_architecture(rng, method, 4)
        for _ in range(50):
            child = mutate(rng, design)
            assert child.key() != design.key()
            assert sum(a != b for a, b in zip(child.blocks, design.blocks, strict=True)) == 1
            for i, b in enumerate(child.blocks, start=1):
                assert b.dense_op in dense_ops and b.sparse_op in sparse_ops
                assert b.dense_in and b.sparse_in and max(b.dense_in + b.sparse_in) < i  # any-path: earlier nodes
            assert NasArchitecture.from_dict(json.loads(json.dumps(child.to_dict()))) == child
            design = child


def test_reachable_follows_what_each_op_reads(tmp_path):
    design = NasArchitecture("autoctr", (
        Block("mlp", "efc", (0,), (0,)),  # block 1: only its sparse node feeds anything
        Block("fm", "identity", (0, 1), (1,)),  # fm reads sparse inputs only: block 1's dense is unused
    ))
    assert design.reachable() == {("dense", 2), ("sparse", 2), ("sparse", 1)}
    assert READS["fm"] == ("sparse",)
    assert "[pruned]" in design.render().splitlines()[1]
    design.save(tmp_path / "a.json")
    assert is_nas_file(tmp_path / "a.json") and NasArchitecture.load(tmp_path / "a.json") == design
    (tmp_path / "b.json").write_text(json.dumps({"n": 3}))
    assert not is_nas_file(tmp_path / "b.json")
    with pytest.raises(ValueError, match="earlier nodes"):
        NasArchitecture("nasrec", (Block("mlp", "efc", (1,), (0,)),))


def test_nas_budget_is_checked():
    with pytest.raises(ConfigError, match="nas.sample_size <= nas.population"):
        load_config(CONFIG, ["nas.sample_size=9", "nas.population=3"])
    assert load_config(CONFIG).nas.population < load_config(preset_path("criteo", "paper")).nas.population


def _search_and_retrain(data, tmp_path, method):
    search = tmp_path / f"{method}-search"
    assert cli.main(["search", f"--method={method}", "--data", str(data), "--config", CONFIG, "--out", str(search),
                     *TINY]) == 0
    history = json.loads((search / EVOLUTION_FILE).read_text())["candidates"]
    assert len(history) == 2 + 1 and all(0 <= c["valid_auc"] <= 1 for c in history)
    assert [c["parent"] is None for c in history] == [True, True, False]
    best = max(history, key=lambda c: c["valid_auc"] - c["valid_logloss"])  # the criteo preset's monitor
    assert NasArchitecture.load(search / "architecture.json").key() == NasArchitecture.from_dict(
        best["architecture"]).key()
    retrain = tmp_path / f"{method}-retrain"
    assert cli.main(["retrain", "--data", str(data), "--architecture", str(search / "architecture.json"),
                     "--out", str(retrain), "--train.epochs=2", "--train.max_steps_per_epoch=8"]) == 0
    return retrain


@pytest.mark.parametrize("method", [pytest.param("autoctr", marks=pytest.mark.dist),  # 4 trainings: ~30 s
                                    "nasrec"])
def test_search_finds_a_design_that_retrains_and_reloads(method, synthetic_dir, tmp_path, capsys):
    retrain = _search_and_retrain(synthetic_dir, tmp_path, method)
    metrics = json.loads((retrain / "metrics.json").read_text())
    assert metrics["model"] == method and metrics["test_auc"] > 0.55, metrics
    assert json.loads((retrain / "run.json").read_text())["model"] == method
    model = load_model(retrain)
    predict = tf.function(lambda f: model(f, training=False))
    labels, scores = [], []
    for features, batch_labels in make_dataset(read_dataset_info(synthetic_dir), "test", 8192):
        scores.append(predict(features).numpy().ravel())
        labels.append(batch_labels.numpy())
    assert roc_auc(np.concatenate(labels), np.concatenate(scores)) == pytest.approx(metrics["test_auc"], abs=1e-6)
    code = cli.main(["retrain", "--data", str(synthetic_dir), "--architecture",
                     str(tmp_path / f"{method}-search" / "architecture.json"), "--mode", "hard",
                     "--out", str(tmp_path / "refused")])
    assert code == 2 and "--mode belong to OptFusion" in capsys.readouterr().err


def test_method_is_a_search_flag_only(synthetic_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--method=nasrec", "--model", "lr", "--data", str(synthetic_dir),
                  "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2 and "--method=nasrec" in capsys.readouterr().err


@pytest.mark.dist
@pytest.mark.parametrize("method", NAS_METHODS)
def test_killed_search_resumes_where_it_stopped(method, synthetic_dir, tmp_path):
    """SIGKILL (by PID) once two candidates are recorded; --resume keeps them and finishes the budget."""
    out = tmp_path / "search"
    cycles = 8 if method == "autoctr" else 60  # NASRec scores a subnet in a fraction of a second
    total = 4 + cycles
    budget = [*TINY, "--nas.population=4", f"--nas.cycles={cycles}", "--nas.candidate_steps=10"]
    args = [sys.executable, "-c", "from trainer.cli import main; raise SystemExit(main())", "search",
            f"--method={method}", "--data", str(synthetic_dir), "--config", CONFIG, "--out", str(out), *budget]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    state = out / EVOLUTION_FILE
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if state.is_file() and len(json.loads(state.read_text())["candidates"]) >= 2:
                break
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    before = json.loads(state.read_text())["candidates"]
    assert 2 <= len(before) < total, "the kill came too late to test a resume"
    done = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    after = json.loads(state.read_text())["candidates"]
    assert len(after) == total and after[:len(before)] == before
    assert (out / "architecture.json").is_file()
