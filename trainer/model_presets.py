"""Per-model settings of the official OptFusion code, as config overrides (trainer/configs/model_presets.yaml).

The official `hyperparam.md` tunes each baseline's learning rate and L2 per
dataset; a comparison at one shared lr handicaps the models it does not
suit. The file is the one home of those values; a config with
`train.model_presets: true` (paper.yaml, hence every *_paper.yaml and
official.yaml) takes them for the dataset and model being trained.
"""

from __future__ import annotations

import pathlib
from typing import Any

import yaml

from trainer.config import CONFIG_DIR, ConfigError

PRESETS_FILE = CONFIG_DIR / "model_presets.yaml"
SHORTHAND = {"lr": ("train.lr", "train.emb_lr"), "l2": ("train.l2", "train.emb_l2")}
"""hyperparam.md gives one lr and one L2 per model; the official code passes each to both its
`--lr_emb`/`--lr_nn` and `--l2_emb`/`--l2_nn`."""
RETRAIN_KEYS = {"hard": "optfusion_hard", "soft": "optfusion_soft"}
"""The entries of OptFusion's retrain per mode (hyperparam.md's AutoFusion-Hard / -Soft rows)."""


def read_presets(path: pathlib.Path = PRESETS_FILE) -> dict[str, dict[str, dict[str, Any]]]:
    """dataset -> model key -> {shorthand or section.key: value}, checked for shape."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"model presets {path}: {err}") from err
    for dataset, models in data.items():
        if not isinstance(models, dict) or not all(isinstance(v, dict) and v for v in models.values()):
            raise ConfigError(f"model presets {path}: {dataset} must map model names to non-empty mappings")
    return data


def preset_overrides(dataset: str, key: str, path: pathlib.Path = PRESETS_FILE) -> list[str]:
    """The `section.key=value` overrides of model `key` on `dataset`; [] where the file gives none."""
    entry = read_presets(path).get(dataset, {}).get(key, {})
    return [f"{target}={yaml.safe_dump(value).splitlines()[0]}"
            for name, value in entry.items() for target in SHORTHAND.get(name, (name,))]
