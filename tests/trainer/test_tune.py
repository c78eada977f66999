"""keras-tuner over the grid: best config written, resume after a kill repeats no finished trial."""

import pathlib

import pytest
import yaml

from trainer.config import Config, ConfigError, load_config
from trainer.tune import BEST_CONFIG, CPU_GRID_FILE, GRID_FILE, TUNING_ONLY_KEYS, Grid, tune

GRID = Grid({"train.lr": [1e-2, 1e-3, 1e-4], "train.emb_l2": [0.0, 1e-6]}, {"train.emb_lr": "train.lr"})


def _score(config: Config) -> float:
    """A made-up validation AUC that peaks at lr 1e-3, emb_l2 1e-6."""
    return 0.8 - abs(config.train.lr - 1e-3) - abs(config.train.emb_l2 - 1e-6) * 1e3


def test_tune_writes_the_best_config_with_tied_keys(tmp_path):
    seen = []

    def trial(config, run_dir, resume):
        seen.append((config.train.lr, config.train.emb_l2, config.train.emb_lr))
        return _score(config)

    summary = tune(Config(), GRID, trial, tmp_path, "t")
    assert len(seen) == 6 and len(set(seen)) == 6
    assert all(lr == emb_lr for lr, _, emb_lr in seen)
    best = load_config(tmp_path / BEST_CONFIG)
    assert (best.train.lr, best.train.emb_l2, best.train.emb_lr) == (1e-3, 1e-6, 1e-3)
    assert summary["best"]["val_auc"] == pytest.approx(0.8)


def test_best_config_leaves_out_the_tuning_only_keys(tmp_path):
    # a tune run with 1 epoch and a step cap per trial: the final run must not inherit either
    base = Config()
    base.train.epochs, base.train.max_steps_per_epoch, base.train.patience = 1, 3, 5
    base.train.model_presets = True  # a paper preset: its per-model lr / L2 must not replace the tuned ones
    tune(base, GRID, lambda config, run_dir, resume: _score(config), tmp_path, "t")
    written = yaml.safe_load((tmp_path / BEST_CONFIG).read_text())
    assert TUNING_ONLY_KEYS == ("train.epochs", "train.max_steps_per_epoch")
    assert "epochs" not in written["train"] and "max_steps_per_epoch" not in written["train"]
    best = load_config(tmp_path / BEST_CONFIG)
    assert (best.train.epochs, best.train.max_steps_per_epoch) == (Config().train.epochs, None)
    assert best.train.patience == 5 and best.train.lr == 1e-3  # everything else is the tuned config
    assert not best.train.model_presets
    assert load_config(tmp_path / BEST_CONFIG, ["train.epochs=4"]).train.epochs == 4


def test_killed_tune_resumes_without_repeating_finished_trials(tmp_path):
    calls: list[tuple[float, float, bool]] = []

    def dies_on_third(config, run_dir, resume):
        calls.append((config.train.lr, config.train.emb_l2, resume))
        run_dir.mkdir(parents=True)
        (run_dir / "run.json").write_text("{}")
        if len(calls) == 3:
            raise KeyboardInterrupt  # like a kill: not an error keras-tuner records
        return _score(config)

    with pytest.raises(KeyboardInterrupt):
        tune(Config(), GRID, dies_on_third, tmp_path, "t")
    finished = {c[:2] for c in calls[:2]}

    resumed: list[tuple[float, float, bool]] = []

    def trial(config, run_dir, resume):
        resumed.append((config.train.lr, config.train.emb_l2, resume))
        return _score(config)

    tune(Config(), GRID, trial, tmp_path, "t")
    assert not finished & {c[:2] for c in resumed}  # no finished trial ran again
    assert len(resumed) == 4  # the interrupted one (resumed in its run dir) and the 3 never started
    assert resumed[0][:2] == calls[2][:2] and resumed[0][2] is True
    assert load_config(tmp_path / BEST_CONFIG).train.lr == 1e-3


def test_every_trial_failing_is_an_error(tmp_path):
    def broken(config, run_dir, resume):
        raise ValueError("no data")

    with pytest.raises(RuntimeError, match="every tuning trial failed"):
        tune(Config(), Grid({"train.lr": [1e-3]}, {}), broken, tmp_path, "t")


def test_shipped_grid_is_the_papers(tmp_path):
    grid = Grid.load(GRID_FILE)
    assert grid.values["train.lr"] == [3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5]
    assert grid.values["train.emb_l2"] == grid.values["train.l2"] == [3e-6, 1e-6, 3e-7, 1e-9, 0.0]
    # Issue 19: lr x dense L2 x embedding L2, in the paper's grid and the reduced CPU one.
    assert set(grid.values) == set(Grid.load(CPU_GRID_FILE).values) == {"train.lr", "train.l2", "train.emb_l2"}
    assert grid.overrides({"train.lr": 1e-3, "train.l2": 0.0, "train.emb_l2": 1e-9})[-1] == "train.emb_lr=0.001"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"grid": {"train.lr": [1e-3]}, "tie": {"train.emb_lr": "train.nope"}}))
    with pytest.raises(ConfigError, match="tie.train.emb_lr"):
        Grid.load(bad)


def test_resume_with_another_base_config_is_refused(tmp_path: pathlib.Path):
    tune(Config(), Grid({"train.lr": [1e-3]}, {}), lambda c, r, x: 0.7, tmp_path, "t")
    with pytest.raises(ConfigError, match="another base config"):
        tune(Config(seed=7), Grid({"train.lr": [1e-3]}, {}), lambda c, r, x: 0.7, tmp_path, "t")
