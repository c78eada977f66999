"""Building, saving and loading a run's model (the run-directory contract, docs/DESIGN.md §1 Architecture).

A run directory is self-describing: `run.json` (stage, mode, fields and vocab
sizes), the resolved `config.yaml`, `architecture.json` and the best epoch's
weights `model.weights.h5`, plus `calibration.json` (the map of the logit
the served probabilities apply, trainer/calibration.py) when the run was
calibrated. `load_model` rebuilds the same Keras 3 model from
those files alone, so serving needs neither the data dir nor the trainer CLI.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import keras
import numpy as np
import yaml

from pipeline.atomic import atomic_path
from pipeline.errors import UsageError
from trainer.architecture import Architecture
from trainer.config import Config, ConfigError, load_config
from trainer.distribute import active
from trainer.model.serving_form import serving_form as supernet_serving_form
from trainer.model.supernet import Supernet
from trainer.nas import NAS_METHODS
from trainer.nas.blocks import NasNet
from trainer.nas.space import NasArchitecture
from trainer.zoo import KERAS_MODELS, ZOO

RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
ARCH_FILE = "architecture.json"
ARCH_TEXT_FILE = "architecture.txt"
WEIGHTS_FILE = "model.weights.h5"
SEARCH_WEIGHTS_FILE = "search.weights.npz"
_SOURCES_KEY = "__component_inputs__"


def build_model(config: Config, fields: list[dict[str, Any]], **kwargs: Any) -> keras.Model:
    """`_build_model` with its variables created under the active tf.distribute strategy."""
    with active().scope():
        return _build_model(config, fields, **kwargs)


def _build_model(
    config: Config,
    fields: list[dict[str, Any]],
    *,
    mode: str,
    architecture: Architecture | None = None,
    fixed_op: str | None = None,
    search_ops_only: bool = False,
    zoo_model: str | None = None,
    nas_design: NasArchitecture | None = None,
) -> keras.Model:
    """The supernet of `config` over `fields` ([{name, vocab_size, max_len (default 1)}]), weights built;
    with `zoo_model`, that baseline of trainer/zoo instead (sized by the same config); with `nas_design`,
    that AutoCTR / NASRec design (trainer/nas/blocks.py, width config.nas.dense_dim)."""
    names = [f["name"] for f in fields]
    sizes = [int(f["vocab_size"]) for f in fields]
    max_lens = [int(f.get("max_len", 1)) for f in fields]
    try:
        if nas_design is not None:
            model = NasNet(config.model, names, sizes, nas_design, config.nas.dense_dim, max_lens=max_lens)
        elif zoo_model is not None:
            model_class = ZOO[zoo_model].model_class
            if model_class is None:
                raise ValueError(f"{zoo_model!r} is an architecture file, not a zoo model class")
            model = model_class(config.model, names, sizes, max_lens=max_lens)
        else:
            model = Supernet(
                config.model,
                names,
                sizes,
                architecture=architecture,
                mode=mode,
                fixed_op=fixed_op,
                search_ops_only=search_ops_only,
                max_lens=max_lens,
            )
    except ValueError as err:  # the model's own argument checks
        raise ConfigError(f"the model section does not fit this run: {err}") from err
    return model  # both kinds build their weights in __init__


def save_weights(model: keras.Model, run_dir: pathlib.Path) -> None:
    """Writes the model weights temp-then-rename."""
    with atomic_path(run_dir / WEIGHTS_FILE) as tmp:
        model.save_weights(str(tmp))


def save_search_weights(model: keras.Model, run_dir: pathlib.Path) -> None:
    """The search model's weights by variable path, plus each component's
    inputs (the row blocks of its CONCAT kernel), for `--init=search`."""
    arrays: dict[str, Any] = {v.path: np.asarray(v.numpy()) for v in model.weights}
    arrays[_SOURCES_KEY] = np.array(json.dumps(model.component_inputs))
    with atomic_path(run_dir / SEARCH_WEIGHTS_FILE) as tmp, tmp.open("wb") as f:
        np.savez(f, **arrays)


def warm_start(model: keras.Model, path: pathlib.Path) -> list[str]:
    """Copies the weights of a search run's search.weights.npz into `model`
    (see copy_weights_by_path); returns the paths left fresh."""
    with np.load(path) as data:
        saved = {k: data[k] for k in data.files}
    searched = json.loads(str(saved.pop(_SOURCES_KEY)))
    try:
        return copy_weights_by_path(model, saved, searched)
    except ValueError as err:
        raise UsageError(f"{path}: {err}") from err


def serving_form(model: keras.Model) -> keras.Model:
    """The model as it is exported: a retrained Supernet in its serving form (H's CONCAT
    and the CrossNet layers only H reads folded into the head, other CONCATs as row
    blocks; same logits, fewer bytes read per request: trainer/model/serving_form.py);
    any other model as it is."""
    return supernet_serving_form(model) if isinstance(model, Supernet) else model


def copy_weights_by_path(model: Any, saved: dict[str, np.ndarray], saved_inputs: dict[str, list[str]]) -> list[str]:
    """Assigns `saved` (variable path -> value) to `model`'s weights of the same path
    (--init=search, and --init=run:PATH through trainer/warmstart.py).

    Same-shaped weights are copied as they are; a CONCAT kernel keeps the row
    blocks of the inputs that remain connected (`saved_inputs`: each
    component's inputs in the saved model, in block order). Weights the
    saved model lacks stay as they are; their paths are returned.
    """
    kept = getattr(model, "component_inputs", {})  # a Keras baseline has no CONCAT blocks
    fresh = []
    for v in model.weights:
        value = saved.get(v.path)
        if value is None:
            fresh.append(v.path)
            continue
        if value.shape != tuple(v.shape) and v.path.endswith("/concat_kernel"):
            comp = v.path.split("/")[-2].removeprefix("fusion_")
            missing = set(kept[comp]) - set(saved_inputs.get(comp, []))
            if missing:
                raise ValueError(f"{comp} fuses {sorted(missing)}, inputs the saved model did not have")
            d = value.shape[1]
            value = np.concatenate([value[i * d:(i + 1) * d] for i in map(saved_inputs[comp].index, kept[comp])])
        if value.shape != tuple(v.shape):
            raise ValueError(
                f"{v.path} has shape {value.shape} there, {tuple(v.shape)} in the model being trained "
                "(was it made with another model config or architecture?)"
            )
        v.assign(value)
    return fresh


def load_model(run_dir: str | pathlib.Path) -> keras.Model:
    """The trained model of a `trainer --stage=retrain|train` run, weights loaded.

    Call it as `model({field: int64[batch]}, training=False)` -> logits [batch, 1].
    """
    run_dir = pathlib.Path(run_dir)
    run_path = run_dir / RUN_FILE
    if not run_path.is_file():
        raise UsageError(f"{run_dir} is not a trainer run directory: {RUN_FILE} is missing")
    run = json.loads(run_path.read_text())
    if run.get("stage") not in ("retrain", "train"):
        raise UsageError(
            f"{run_dir} is a {run.get('stage')!r} run; load_model needs a retrain or train run "
            "(run `trainer --stage=retrain --architecture RUN/architecture.json ...` first)"
        )
    if not (run_dir / WEIGHTS_FILE).is_file():
        raise UsageError(f"{run_dir / WEIGHTS_FILE} is missing: the run did not finish (rerun it with --resume)")
    # Runs written before model.prod_norm / model.bridge_norm existed used the paper's raw PROD / EDCN bridge.
    model_section = (yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}).get("model") or {}
    legacy = [f"--model.{key}=false" for key in ("prod_norm", "bridge_norm") if key not in model_section]
    config = load_config(run_dir / CONFIG_FILE, legacy)
    zoo_model = run.get("model")
    nas_design = NasArchitecture.load(run_dir / ARCH_FILE) if zoo_model in NAS_METHODS else None
    fusion = zoo_model not in KERAS_MODELS and nas_design is None
    model = build_model(config, run["fields"], mode=run["mode"] or "hard",
                        architecture=Architecture.load(run_dir / ARCH_FILE) if fusion else None,
                        zoo_model=zoo_model if zoo_model in KERAS_MODELS else None, nas_design=nas_design)
    model.load_weights(str(run_dir / WEIGHTS_FILE))
    return model
