"""The zoo through the trainer CLI: train each baseline, reload it, tune one, resume a killed tune."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from pipeline.dataset_info import read_dataset_info
from trainer import cli
from trainer.config import Config, load_config, preset_path
from trainer.data import make_dataset
from trainer.metrics import roc_auc
from trainer.model_io import load_model
from trainer.zoo import ZOO

CONFIG = str(preset_path("criteo", "cpu"))
TINY = ["--model.emb_dim=4", "--model.att_dim=8", "--train.batch_size=128",
        "--train.epochs=2", "--train.patience=2"]


def _train(synthetic_dir, out, name, *extra):
    code = cli.main(["--stage=train", "--model", name, "--data", str(synthetic_dir), "--config", CONFIG,
                     "--out", str(out), *TINY, *extra])
    assert code == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO))
def test_every_zoo_model_trains_above_chance_and_reloads(name, synthetic_dir, tmp_path):
    out = tmp_path / name
    metrics = _train(synthetic_dir, out, name)
    assert metrics["test_auc"] > 0.6, metrics  # the synthetic set is learnable
    run = json.loads((out / "run.json").read_text())
    if ZOO[name].class_path is not None:
        assert run["model"] == name and not (out / "architecture.json").exists()
    else:
        assert run["mode"] == "hard" and (out / "architecture.json").is_file()
    for override in ZOO[name].overrides:  # e.g. DCN-v2 runs with CrossNetV2
        key, value = override.split("=")
        section, field = key.split(".")
        assert str(getattr(getattr(load_config(out / "config.yaml"), section), field)) == value
    info = read_dataset_info(synthetic_dir)
    model = load_model(out)
    predict = tf.function(lambda f: model(f, training=False))  # graph mode, as the stage scores
    labels, scores = [], []
    batch = load_config(out / "config.yaml").train.eval_batch_size  # few distinct scores: ties need equal sums
    for features, batch_labels in make_dataset(info, "test", batch):
        scores.append(predict(features).numpy().ravel())
        labels.append(batch_labels.numpy())
    assert roc_auc(np.concatenate(labels), np.concatenate(scores)) == pytest.approx(metrics["test_auc"], abs=1e-6)
    if name == "edcn":  # a run from before model.bridge_norm reloads with the raw bridge it was trained with
        import shutil

        import yaml

        shutil.copytree(out, tmp_path / "old")
        config = yaml.safe_load((out / "config.yaml").read_text())
        del config["model"]["bridge_norm"]
        (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(config))
        assert [b.prod_norm for b in load_model(tmp_path / "old").bridges] == [False] * 3
        assert [b.prod_norm for b in model.bridges] == [True] * 3


def test_model_flag_is_refused_where_it_does_not_belong(synthetic_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--stage=search", "--model", "deepfm", "--data", str(synthetic_dir), "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2 and "unrecognized arguments: --model deepfm" in capsys.readouterr().err
    code = cli.main(["--stage=train", "--model", "deepfm", "--mode", "hard", "--data", str(synthetic_dir),
                     "--out", str(tmp_path / "y")])
    assert code == 2 and "--model names the whole design" in capsys.readouterr().err


@pytest.mark.slow
def test_tune_writes_a_best_config_the_train_stage_takes(synthetic_dir, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("grid:\n  train.lr: [1.0e-2, 1.0e-4]\ntie:\n  train.emb_lr: train.lr\n")
    out = tmp_path / "tune"
    code = cli.main(["--stage=tune", "--model", "lr", "--data", str(synthetic_dir), "--config", CONFIG,
                     "--grid", str(grid), "--epochs", "1", "--out", str(out), *TINY])
    assert code == 0
    best = load_config(out / "best.yaml")
    assert best.train.lr in (1e-2, 1e-4) and best.train.emb_lr == best.train.lr
    assert best.train.epochs == Config().train.epochs  # the tune's --epochs 1 stays with the trials
    trials = sorted(out.glob("tuner/lr/trial_*/trial.json"))
    scores = {json.loads(t.read_text())["hyperparameters"]["values"]["train.lr"]: json.loads(t.read_text())["score"]
              for t in trials}
    assert len(scores) == 2 and scores[best.train.lr] == max(scores.values())
    code = cli.main(["--stage=train", "--model", "lr", "--data", str(synthetic_dir), "--config",
                     str(out / "best.yaml"), "--train.epochs=1", "--out", str(tmp_path / "final")])
    assert code == 0


@pytest.mark.slow
def test_killed_tune_resumes_without_repeating_finished_trials(synthetic_dir, tmp_path):
    """kill -9 during the third trial; the rerun runs only the trials not finished."""
    grid = tmp_path / "grid.yaml"
    grid.write_text("grid:\n  train.lr: [3.0e-2, 1.0e-2, 3.0e-3, 1.0e-3]\n")
    out = tmp_path / "tune"
    args = [sys.executable, "-c", "from trainer.cli import main; raise SystemExit(main())", "--stage=tune",
            "--model", "lr", "--data", str(synthetic_dir), "--config", CONFIG, "--grid", str(grid),
            "--epochs", "2", "--out", str(out), *TINY]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            done = [t for t in out.glob("tuner/lr/trial_*/trial.json")
                    if json.loads(t.read_text())["status"] == "COMPLETED"]
            if len(done) >= 2 or proc.poll() is not None:
                break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finished = {json.loads(t.read_text())["hyperparameters"]["values"]["train.lr"]
                for t in out.glob("tuner/lr/trial_*/trial.json")
                if json.loads(t.read_text())["status"] == "COMPLETED"}
    assert 2 <= len(finished) < 4, "the kill came too late to test a resume"
    mtimes = {t: t.stat().st_mtime for t in out.glob("tuner/lr/trial_*/run/metrics.json")}
    assert subprocess.run(args, capture_output=True, timeout=600).returncode == 0
    for path, mtime in mtimes.items():  # finished trials were not trained again
        assert path.stat().st_mtime == mtime
    statuses = [json.loads(t.read_text())["status"] for t in out.glob("tuner/lr/trial_*/trial.json")]
    assert statuses.count("COMPLETED") == 4 and (out / "best.yaml").is_file()
