"""Config parsing: presets load, overrides convert, unknown keys are rejected."""

import pytest

from trainer.config import CONFIG_DIR, ConfigError, load_config, preset_path

PRESETS = sorted([*CONFIG_DIR.glob("*_cpu.yaml"), *CONFIG_DIR.glob("*_paper.yaml")])


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_every_shipped_preset_loads(path):
    config = load_config(path)
    assert config.train.batch_size >= 1 and config.model.emb_dim >= 1


def test_paper_presets_are_the_paper_setting():
    for dataset, emb in (("criteo", 40), ("avazu", 40), ("kdd12", 16)):
        config = load_config(preset_path(dataset, "paper"))
        assert (config.model.emb_dim, config.train.batch_size, config.model.n) == (emb, 4096, 3)
    criteo = load_config(preset_path("criteo", "paper"))
    assert (criteo.train.lr, criteo.train.emb_lr, criteo.train.l2, criteo.search.arch_lr) == (3e-4, 3e-4, 3e-6, 0.3)


def test_overrides_convert_to_field_types():
    config = load_config(
        preset_path("criteo", "cpu"),
        ["--train.lr=1e-2", "train.batch_size=64", "--model.n=2", "--search.fixed_op=concat",
         "--train.jit_compile=true", "--train.max_steps_per_epoch=null", "--seed=7"],
    )
    assert config.train.lr == 0.01 and isinstance(config.train.lr, float)
    assert config.train.batch_size == 64 and config.model.n == 2 and config.seed == 7
    assert config.search.fixed_op == "concat" and config.train.jit_compile is True
    assert config.train.max_steps_per_epoch is None


def test_yaml_string_exponent_reads_as_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 3e-4\n")  # YAML 1.1 reads 3e-4 as a string
    assert load_config(path).train.lr == pytest.approx(3e-4)


@pytest.mark.parametrize(
    "override, message",
    [
        ("--train.lrr=1", r"unknown key train\.lrr \(known keys at train: .*lr"),
        ("--bogus.x=1", "unknown key bogus"),
        ("--train.batch_size=big", "train.batch_size must be an integer"),
        ("--train.batch_size=0", "train.batch_size must be >= 1"),
        ("--train.jit_compile=1", "train.jit_compile must be true or false"),
        ("--search.fixed_op=mul", r"search.fixed_op must be one of \['add', 'prod', 'concat', 'att'\]"),
        ("train.lr", "must look like --section.key=value"),
    ],
)
def test_bad_keys_and_values_are_rejected_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(preset_path("criteo", "cpu"), [override])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("train: 3\n")
    with pytest.raises(ConfigError, match="train must be a mapping"):
        load_config(bad)


def test_ablations_are_config_keys():
    config = load_config(preset_path("criteo", "cpu"),
                         ["--model.shallow=cin", "--model.n=4", "--search.sequential=true", "--search.fixed_op=att"])
    assert (config.model.shallow, config.model.n, config.search.sequential, config.search.fixed_op) == (
        "cin", 4, True, "att")
    with pytest.raises(ConfigError, match="shallow"):
        load_config(preset_path("criteo", "cpu"), ["--model.shallow=fm"])


def test_base_chain_merges_sections_and_the_file_wins(tmp_path):
    (tmp_path / "parent.yaml").write_text("seed: 1\nmodel:\n  emb_dim: 8\n  n: 2\ntrain:\n  lr: 1.0e-3\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nmodel:\n  emb_dim: 16\n")
    config = load_config(tmp_path / "child.yaml", ["--train.lr=5e-4"])
    assert (config.seed, config.model.emb_dim, config.model.n, config.train.lr) == (1, 16, 2, 5e-4)


def test_base_chain_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml does not exist"):
        load_config(tmp_path / "c.yaml")


def test_cpu_presets_differ_from_the_base_only_where_they_say_so():
    base = load_config(CONFIG_DIR / "cpu.yaml")
    for name in ("criteo", "avazu", "kdd12"):
        assert load_config(preset_path(name, "cpu")) == base
    assert load_config(preset_path("frappe", "cpu")).train.emb_l2 != base.train.emb_l2
