"""End to end on the synthetic pipeline dir: search, retrain Hard/Soft, train,
ablations, resume after kill -9, NaN stop, one-line errors for bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline.dataset_info import read_dataset_info
from trainer import cli
from trainer.architecture import OPS, Architecture
from trainer.config import CONFIG_DIR, load_config, preset_path
from trainer.loop import Phase
from trainer.metrics import roc_auc
from trainer.model_io import SEARCH_WEIGHTS_FILE, build_model, load_model, save_search_weights, warm_start

CONFIG = str(preset_path("criteo", "cpu"))
TINY = ["--model.emb_dim=4", "--model.n=2", "--model.att_dim=8", "--train.batch_size=128",
        "--train.epochs=3", "--train.patience=3", "--search.arch_lr=0.05"]


def _trainer(*args, expect=0):
    code = cli.main([str(a) for a in args])
    assert code == expect
    return code


@pytest.fixture(scope="session")
def search_run(synthetic_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "run"
    _trainer("--stage=search", "--data", synthetic_dir, "--config", CONFIG, "--out", out, *TINY)
    return out


@pytest.fixture(scope="session", params=["hard", "soft"])
def retrain_run(request, synthetic_dir, search_run, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"retrain_{request.param}") / "run"
    _trainer("--stage=retrain", "--data", synthetic_dir, "--architecture", search_run / "architecture.json",
             "--mode", request.param, "--out", out)
    return out


def test_search_writes_architecture_text_logs_and_checkpoints(search_run):
    arch = Architecture.load(search_run / "architecture.json")
    assert arch.n == 2
    assert (search_run / "architecture.txt").read_text().strip() == arch.render()
    alphas = [a for edges in arch.alpha.values() for a in edges.values()]
    assert any(abs(a - 0.5) > 1e-3 for a in alphas), "alpha never moved from its init"
    assert list(search_run.glob("tensorboard/search/events.out.tfevents.*"))
    state = json.loads((search_run / "checkpoints/search/state.json").read_text())
    assert state["epochs_done"] == 3 and len(state["history"]) == 3
    assert load_config(search_run / "config.yaml").model.emb_dim == 4  # overrides resolved into the run


def test_retrain_beats_chance_and_load_model_reproduces_test_auc(retrain_run, synthetic_dir):
    metrics = json.loads((retrain_run / "metrics.json").read_text())
    assert metrics["test_auc"] > 0.75 and metrics["best_epoch"] >= 1
    # the stopping record: the monitor, the best epoch and the per-epoch validation lists
    assert metrics["monitor"] == "auc_minus_logloss"
    epochs = metrics["epochs"]
    assert len(metrics["valid_auc_per_epoch"]) == len(metrics["valid_logloss_per_epoch"]) == epochs
    best = metrics["best_epoch"]
    scores = [a - ll for a, ll in zip(metrics["valid_auc_per_epoch"], metrics["valid_logloss_per_epoch"], strict=True)]
    assert scores.index(max(scores)) == best - 1
    assert metrics["best_valid_logloss"] == metrics["valid_logloss_per_epoch"][best - 1]
    # calibration (default temperature), fitted on valid: T in the run, LogLoss no worse on valid
    calibration = json.loads((retrain_run / "calibration.json").read_text())
    assert calibration == metrics["calibration"] and calibration["fitted_on"] == "valid"
    assert calibration["temperature"] > 0 and calibration["temperature"] != 1.0
    assert calibration["valid"]["logloss_calibrated"] <= calibration["valid"]["logloss"]
    assert calibration["test"]["logloss"] == metrics["test_logloss"]
    assert load_config(retrain_run / "config.yaml").model.emb_dim == 4  # search config reused
    model = load_model(retrain_run)
    info = read_dataset_info(synthetic_dir)
    from trainer.data import make_dataset

    labels, logits = [], []
    for features, y in make_dataset(info, "test", 500):
        out = model(features, training=False)
        assert out.shape == (y.shape[0], 1)
        labels.append(y.numpy())
        logits.append(np.asarray(out).reshape(-1))
    assert roc_auc(np.concatenate(labels), np.concatenate(logits)) == pytest.approx(metrics["test_auc"], abs=1e-6)


def test_load_model_rejects_a_search_run(search_run):
    with pytest.raises(ValueError, match="needs a retrain or train run"):
        load_model(search_run)


def test_arch_weights_move_in_search_and_stay_frozen_in_retrain(synthetic_dir, search_run, tmp_path):
    info = read_dataset_info(synthetic_dir)
    config = load_config(CONFIG, TINY + ["--train.epochs=1", "--train.max_steps_per_epoch=4"])
    fields = [{"name": f.name, "vocab_size": f.vocab_size} for f in info.fields]

    search = build_model(config, fields, mode="search")
    before = [v.numpy().copy() for v in search.arch_variables]
    Phase("s", search, config, info, tmp_path / "s", tmp_path / "tb", train_arch=True).fit()
    assert all(not np.allclose(b, v.numpy()) for b, v in zip(before, search.arch_variables, strict=True))

    arch = Architecture.load(search_run / "architecture.json")
    retrain = build_model(config, fields, mode="soft", architecture=arch)
    phase = Phase("r", retrain, config, info, tmp_path / "r", tmp_path / "tb", train_arch=False)
    dense_before = [v.numpy().copy() for v in retrain.dense_variables]
    phase.fit()
    assert [name for name, _, _ in phase.groups] == ["embedding", "dense"]
    assert retrain.arch_variables == []
    assert retrain.architecture().to_dict() == arch.to_dict()
    assert any(not np.allclose(b, v.numpy()) for b, v in zip(dense_before, retrain.dense_variables, strict=True))


def test_sequential_fixed_op_search_freezes_connections_of_phase_one(synthetic_dir, tmp_path):
    out = tmp_path / "seq"
    _trainer("--stage=search", "--data", synthetic_dir, "--config", CONFIG, "--out", out, *TINY,
             "--train.epochs=1", "--search.sequential=true", "--search.fixed_op=prod")
    first = Architecture.load(out / "architecture_connections.json")
    final = Architecture.load(out / "architecture.json")
    assert set(first.hard_ops().values()) == {"prod"}
    assert final.edges() == first.edges()
    assert any(abs(w - 1 / len(OPS)) > 1e-4 for ws in final.soft_weights().values() for w in ws)


def _train_args(synthetic_dir, search_run, out):
    return ["--stage=train", "--data", synthetic_dir, "--config", CONFIG, "--architecture",
            search_run / "architecture.json", "--mode", "soft", "--out", out,
            *TINY, "--train.batch_size=16", "--train.epochs=4", "--train.patience=4"]


def test_resume_after_kill9_mid_epoch_matches_an_uninterrupted_run(synthetic_dir, search_run, tmp_path):
    reference = tmp_path / "reference"
    _trainer(*_train_args(synthetic_dir, search_run, reference))

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "trainer.cli", *map(str, _train_args(synthetic_dir, search_run, out))]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_path = out / "checkpoints/train/state.json"
    deadline = time.monotonic() + 240
    while not state_path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # well into epoch 2
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    state = json.loads(state_path.read_text())
    assert 1 <= state["epochs_done"] < 4 and not (out / "metrics.json").exists()

    resumed = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got = json.loads((out / "metrics.json").read_text())
    want = json.loads((reference / "metrics.json").read_text())
    assert [h["epoch"] for h in got["history"]] == [1, 2, 3, 4]
    for g, w in zip(got["history"], want["history"], strict=True):
        assert g["valid_auc"] == pytest.approx(w["valid_auc"], abs=1e-6)
        assert g["train_loss"] == pytest.approx(w["train_loss"], abs=1e-5)
    assert got["test_auc"] == pytest.approx(want["test_auc"], abs=1e-6)


def test_nan_loss_stops_with_exit_1_and_keeps_last_good_checkpoint(
    synthetic_dir, search_run, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "nan"
    args = _train_args(synthetic_dir, search_run, out) + ["--train.epochs=1", "--train.batch_size=256"]
    _trainer(*args)
    good = (out / "checkpoints/train/epoch-1.index").read_bytes()
    import trainer.loop

    original = trainer.loop.bce_loss
    monkeypatch.setattr(trainer.loop, "bce_loss", lambda y, z: original(y, z) * float("nan"))
    capsys.readouterr()
    _trainer(*args, "--resume", "--train.epochs=2", expect=1)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("trainer: error: loss is nan at train epoch 2 step 1")
    assert "last good checkpoint (epoch 1)" in err
    assert json.loads((out / "checkpoints/train/state.json").read_text())["epochs_done"] == 1
    assert (out / "checkpoints/train/epoch-1.index").read_bytes() == good


def _fewer_fields_dir(synthetic_dir, tmp_path):
    """The synthetic shards with a stats.json that lists one field fewer."""
    bad = tmp_path / "fewer"
    bad.mkdir()
    for shard in synthetic_dir.glob("*.tfrecord.gz"):
        (bad / shard.name).symlink_to(shard)
    stats = json.loads((synthetic_dir / "stats.json").read_text())
    (bad / "stats.json").write_text(json.dumps(dict(stats, fields=stats["fields"][:-1])))
    return bad


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_data", "is not a finished pipeline output: stats.json is missing"),
        ("unknown_key", "unknown key train.lrr"),
        ("no_config", "config file"),
        ("n_mismatch", "has n=2 but the config has model.n=3 (pass --model.n=2)"),
        ("no_mode", "trainer retrain needs --architecture FILE and --mode"),
        ("bad_arch", "Architecture file"),
        ("out_exists", "exists and is not empty; pass --resume"),
        ("fewer_fields", "does not match"),
        ("init_no_search", "--init=search needs the search run's search.weights.npz"),
        ("fixed_op_soft", "--fixed_op uses one operation per component: it needs --mode=hard"),
        ("bad_monitor", "train.monitor must be one of ['auc_minus_logloss', 'auc', 'logloss']"),
    ],
)
def test_bad_input_exits_2_with_one_line(case, message, synthetic_dir, search_run, tmp_path, capsys):
    arch = search_run / "architecture.json"
    base = ["--data", synthetic_dir, "--out", tmp_path / "out"]
    args = {
        "no_data": ["--stage=search", "--data", tmp_path / "nowhere", "--out", tmp_path / "o"],
        "unknown_key": ["--stage=search", *base, "--config", CONFIG, "--train.lrr=1"],
        "no_config": ["--stage=search", *base, "--config", tmp_path / "none.yaml"],
        "n_mismatch": ["--stage=train", *base, "--config", CONFIG, "--architecture", arch, "--mode", "hard"],
        "no_mode": ["--stage=retrain", *base, "--architecture", arch],
        "bad_arch": ["--stage=train", *base, "--config", CONFIG, "--architecture", tmp_path / "x.json",
                     "--mode", "hard"],
        "out_exists": ["--stage=search", "--data", synthetic_dir, "--out", search_run, "--config", CONFIG],
        "fewer_fields": ["--stage=search", "--data", _fewer_fields_dir(synthetic_dir, tmp_path), "--out",
                         tmp_path / "out", "--config", CONFIG],
        "init_no_search": ["--stage=retrain", *base, "--config", CONFIG, "--architecture",
                           CONFIG_DIR.parent / "architectures" / "fnn.json", "--mode", "hard", "--init", "search"],
        "fixed_op_soft": ["--stage=retrain", *base, "--architecture", arch, "--mode", "soft", "--fixed_op", "add"],
        "bad_monitor": ["--stage=search", *base, "--config", CONFIG, "--train.monitor=loss"],
    }[case]
    capsys.readouterr()
    _trainer(*args, expect=2)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trainer: error:")]
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "out").exists() or case == "out_exists"


def test_console_script_exit_code_for_a_missing_data_dir(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "--stage=search", "--data", str(tmp_path / "none"), "--out",
         str(tmp_path / "o")], capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("trainer: error: ")


@pytest.mark.parametrize("path", sorted((CONFIG_DIR.parent / "architectures").glob("*.json")), ids=lambda p: p.stem)
def test_train_stage_runs_every_shipped_fixed_design(path, synthetic_dir, tmp_path):
    out = tmp_path / path.stem
    n = Architecture.load(path).n  # stacked_dcnv2.json is n = 5 (3 cross + 3 deep): the config must say so
    _trainer("--stage=train", "--data", synthetic_dir, "--config", CONFIG, "--architecture", path, "--mode", "hard",
             "--out", out, "--model.emb_dim=4", "--train.epochs=1", "--train.batch_size=512", f"--model.n={n}")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_auc"] > 0.6
    assert Architecture.load(out / "architecture.json").to_dict() == Architecture.load(path).to_dict()


def test_calibrate_none_writes_no_temperature(synthetic_dir, tmp_path):
    out = tmp_path / "uncalibrated"
    _trainer("--stage=train", "--data", synthetic_dir, "--config", CONFIG, "--model", "fnn", "--calibrate", "none",
             "--out", out, "--model.emb_dim=4", "--train.epochs=1", "--train.batch_size=512")
    metrics = json.loads((out / "metrics.json").read_text())
    assert not (out / "calibration.json").exists() and metrics["calibration"]["temperature"] == 1.0
    assert load_config(out / "config.yaml").train.calibrate == "none"


@pytest.mark.parametrize("method", ["beta", "isotonic"])
def test_calibrate_method_is_served_by_evaluate(synthetic_dir, tmp_path, capsys, method):
    """--calibrate=beta|isotonic: the run keeps the map, its summary names it, and `trainer --stage=evaluate`
    scores the calibrated probabilities the run reported (what the export serves)."""
    from trainer.calibration import read_calibration

    out = tmp_path / method
    _trainer("--stage=train", "--data", synthetic_dir, "--config", CONFIG, "--model", "fnn", "--calibrate", method,
             "--out", out, "--model.emb_dim=4", "--train.epochs=1", "--train.batch_size=512")
    assert f"calibrated ({method}, fitted on valid)" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    calibration = read_calibration(out)
    assert calibration.method == method and metrics["calibration"]["temperature"] is None
    assert calibration.params() == metrics["calibration"]["params"]
    _trainer("--stage=evaluate", "--data", synthetic_dir, "--run_dir", out)
    evaluated = json.loads((out / "evaluation.test.json").read_text())
    assert evaluated["logloss"] == pytest.approx(metrics["calibration"]["test"]["logloss_calibrated"], abs=1e-5)
    assert evaluated["auc"] == pytest.approx(metrics["test_auc"], abs=1e-6)  # an increasing map keeps AUC
    assert evaluated["calibration"].startswith(f"{method}: ")


def test_fixed_op_retrain_keeps_the_searched_edges_with_one_op(synthetic_dir, search_run, tmp_path):
    out = tmp_path / "att"
    _trainer("--stage=retrain", "--data", synthetic_dir, "--architecture", search_run / "architecture.json",
             "--fixed_op", "att", "--out", out, "--train.epochs=1")
    searched = Architecture.load(search_run / "architecture.json")
    fixed = Architecture.load(out / "architecture.json")
    assert fixed.edges() == searched.edges() and fixed.alpha == searched.alpha
    assert set(fixed.hard_ops().values()) == {"att"}
    assert json.loads((out / "run.json").read_text())["mode"] == "hard"
    model = load_model(out)  # serving rebuilds the one-op model from the run dir alone
    assert {f.op_names for f in model.fusions.values()} == {("att",)}


def test_warm_start_copies_search_weights_by_path(synthetic_dir, tmp_path):
    info = read_dataset_info(synthetic_dir)
    config = load_config(CONFIG, TINY)  # n = 2, 6 fields x emb 4: d = 24
    fields = [{"name": f.name, "vocab_size": f.vocab_size} for f in info.fields]
    search = build_model(config, fields, mode="search")
    d = 24
    # H's candidate inputs, in block order: E, S0, S1, D1, S2, D2 -> 6 blocks of 24 rows
    kernel = np.arange(6 * d * d, dtype="float32").reshape(6 * d, d)
    [v for v in search.weights if v.path == "supernet/fusion_H/concat_kernel"][0].assign(kernel)
    save_search_weights(search, tmp_path)
    arch = Architecture.from_design(2, {"S0": ["E"], "D2": ["S0"], "H": ["E", "D2"]}, "concat")
    hard = build_model(config, fields, mode="hard", architecture=arch)
    assert warm_start(hard, tmp_path / SEARCH_WEIGHTS_FILE) == []
    got = {v.path: v.numpy() for v in hard.weights}
    h = got["supernet/fusion_H/concat_kernel"]
    assert h.shape == (2 * d, d)
    assert h[0, 0] == 0.0 and h[d - 1, d - 1] == d * d - 1  # E: rows 0..23 of the search kernel
    assert h[d, 0] == 5 * d * d and h[2 * d - 1, d - 1] == 6 * d * d - 1  # D2: block 5, rows 120..143
    searched = {v.path: v.numpy() for v in search.weights}
    # D2's candidates are E, S0, S1, D1: S0 is block 1
    np.testing.assert_array_equal(got["supernet/fusion_D2/concat_kernel"],
                                  searched["supernet/fusion_D2/concat_kernel"][d : 2 * d])
    for path in ("supernet/embedding/table", "supernet/D2/dense/kernel", "supernet/head/kernel"):
        np.testing.assert_array_equal(got[path], searched[path])


@pytest.fixture(scope="session")
def all_on_architecture(tmp_path_factory):
    """n = 2, every edge on: H fuses all six lower components, D2 and S2 four each."""
    from trainer.architecture import candidate_inputs, connectable_components

    path = tmp_path_factory.mktemp("all_on") / "all_on.json"
    Architecture.from_design(2, {c: candidate_inputs(c, 2) for c in connectable_components(2)}, "add").save(path)
    return path


def test_hard_prod_over_many_relu_inputs_trains(synthetic_dir, all_on_architecture, tmp_path):
    """The planted f0 x f1 interaction is learnt through PROD everywhere (scale-preserving PROD)."""
    out = tmp_path / "prod"
    _trainer("--stage=train", "--data", synthetic_dir, "--config", CONFIG, "--architecture", all_on_architecture,
             "--fixed_op", "prod", "--out", out, *TINY)
    assert json.loads((out / "metrics.json").read_text())["test_auc"] > 0.7


def test_constant_predictor_exits_1_naming_component_and_op(synthetic_dir, all_on_architecture, tmp_path, capsys):
    """The paper's raw PROD over small inputs underflows: the run fails instead of saving a constant model."""
    out = tmp_path / "raw"
    capsys.readouterr()
    _trainer("--stage=train", "--data", synthetic_dir, "--config", CONFIG, "--architecture", all_on_architecture,
             "--fixed_op", "prod", "--out", out, *TINY, "--model.prod_norm=false", "--model.emb_std=1e-4",
             expect=1)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("trainer: error: [train] the trained model predicts one constant")
    assert "(PROD) keeps" in err and "component " in err
    assert not (out / "model.weights.h5").exists() and not (out / "metrics.json").exists()


def test_retrain_init_search_runs_end_to_end(synthetic_dir, search_run, tmp_path):
    out = tmp_path / "warm"
    _trainer("--stage=retrain", "--data", synthetic_dir, "--architecture", search_run / "architecture.json",
             "--mode", "soft", "--init", "search", "--out", out, "--train.epochs=1")
    assert json.loads((out / "run.json").read_text())["init"] == "search"
    assert (out / "metrics.json").is_file()  # the copy itself is hand-checked above


def test_load_model_reads_a_run_from_before_prod_norm_with_the_raw_product(retrain_run, tmp_path):
    import shutil

    import yaml

    old = tmp_path / "old"
    shutil.copytree(retrain_run, old)
    config = yaml.safe_load((old / "config.yaml").read_text())
    del config["model"]["prod_norm"]
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    assert all(not f.prod_norm for f in load_model(old).fusions.values())
    assert all(f.prod_norm for f in load_model(retrain_run).fusions.values())


def test_a_dataset_without_a_preset_gets_the_cpu_base(tmp_path):
    args = cli._parser().parse_args(["--stage=search", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert cli._resolve_config_path(args, "criteo") == preset_path("criteo", "cpu")
    assert cli._resolve_config_path(args, "my_logs") == CONFIG_DIR / "cpu.yaml"
