"""Per-model presets (trainer/configs/model_presets.yaml) and the official protocol (official.yaml)."""

import json

import pytest
import yaml

from tests.trainer.synthetic import write_synthetic_run
from trainer import cli
from trainer.config import CONFIG_DIR, ConfigError, load_config, preset_path
from trainer.model_presets import RETRAIN_KEYS, preset_overrides, read_presets
from trainer.zoo import ZOO

OFFICIAL = CONFIG_DIR / "official.yaml"


def test_every_entry_names_a_model_and_a_dataset_with_a_paper_preset():
    presets = read_presets()
    assert set(presets) == {"criteo", "avazu", "kdd12"}
    for dataset, models in presets.items():
        assert preset_path(dataset, "paper").is_file(), dataset
        assert set(models) == (set(ZOO) - {"lr"}) | set(RETRAIN_KEYS.values()), dataset


def test_overrides_spell_out_lr_and_l2_for_both_weight_groups():
    # hyperparam.md, IPNN on Criteo: lr=3e-3, l2=3e-6; EDCN on KDD12: lr=1e-3, l2=0.
    assert preset_overrides("criteo", "ipnn") == ["train.lr=0.003", "train.emb_lr=0.003",
                                                 "train.l2=3.0e-06", "train.emb_l2=3.0e-06"]
    assert load_config(preset_path("kdd12", "paper"), preset_overrides("kdd12", "edcn")).train.l2 == 0.0
    assert preset_overrides("frappe", "ipnn") == [] and preset_overrides("criteo", "lr") == []


def test_official_builds_on_the_datasets_paper_preset():
    config = load_config(OFFICIAL, dataset="criteo")
    assert config.model.emb_dim == 40 and config.train.batch_size == 4096 and config.train.lr == 3e-4
    t = config.train
    assert (t.epochs, t.patience, t.monitor, t.lr_decay_factor) == (5, 1, "auc", 1.0)
    assert t.retrain_init == "search" and t.model_presets
    with pytest.raises(ConfigError, match=r"frappe_paper.yaml.*criteo_paper.yaml"):
        load_config(OFFICIAL, dataset="frappe")
    with pytest.raises(ConfigError, match="trainer --data"):
        load_config(OFFICIAL)


@pytest.mark.slow
@pytest.mark.dist  # several trainer processes, ~1-2 min: make test-dist keeps make test under 20 min
def test_official_protocol_through_the_cli(tmp_path):
    data = write_synthetic_run(tmp_path / "data")
    stats = json.loads((data / "stats.json").read_text())
    (data / "stats.json").write_text(json.dumps({**stats, "dataset": "avazu"}))
    small = ["--config", str(OFFICIAL), "--model.emb_dim=4", "--model.att_dim=4", "--train.batch_size=64",
             "--train.epochs=1", "--train.max_steps_per_epoch=2", "--train.jit_compile=false"]

    def run(*args):
        assert cli.main([*map(str, args), *small]) == 0

    def config(run_dir):
        return yaml.safe_load((run_dir / "config.yaml").read_text())["train"]

    # A zoo model: hyperparam.md's Avazu EDCN lr and L2, the command line's lr on top.
    run("--stage=train", "--data", data, "--model=edcn", "--out", tmp_path / "edcn", "--train.emb_lr=5e-4")
    t = config(tmp_path / "edcn")
    assert (t["lr"], t["emb_lr"], t["l2"], t["emb_l2"]) == (3e-3, 5e-4, 1e-9, 1e-9)
    assert not t["model_presets"]  # recorded resolved: a --resume does not apply them again
    # OptFusion: the search at avazu_paper.yaml's lr; the retrain warm-started at AutoFusion-Hard's.
    run("--stage=search", "--data", data, "--out", tmp_path / "s", "--search.hard_select=beta")  # no scoring passes
    assert config(tmp_path / "s")["lr"] == 1e-3 and config(tmp_path / "s")["model_presets"]
    run("--stage=retrain", "--data", data, "--architecture", tmp_path / "s/architecture.json", "--mode=hard",
        "--out", tmp_path / "r")
    assert json.loads((tmp_path / "r/run.json").read_text())["init"] == "search"
    assert (config(tmp_path / "r")["lr"], config(tmp_path / "r")["l2"]) == (1e-3, 0.0)
