"""Run configuration: YAML file -> typed dataclasses, `--key=value` overrides.

Why typed: a misspelt key in a YAML experiment (FuxiCTR passes everything on as
`**params`) silently trains the default; here every key must name a field, and
every value must convert to that field's type, or the run stops before
training with a one-line reason naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import pathlib
import types
import typing
from typing import Any, Literal

import yaml

from pipeline.atomic import write_text_atomic
from pipeline.errors import UsageError
from trainer.architecture import Op
from trainer.model.supernet import SupernetConfig
from trainer.strategies import PS_MIN_SHARD_BYTES, Strategy

CONFIG_DIR = pathlib.Path(__file__).parent / "configs"


class ConfigError(UsageError):
    """A config file or override is missing, malformed or inconsistent."""


@dataclasses.dataclass
class TrainConfig:
    """Model-weight optimisation, input pipeline and stopping rule."""

    batch_size: int = 4096
    eval_batch_size: int = 16384
    epochs: int = 30
    # Early stopping (FuxiCTR's rule): the best epoch is the one with the best validation `monitor`;
    # `patience` epochs without a better one stop the phase, and the best epoch's weights are restored.
    # auc_minus_logloss (default, as FuxiCTR and BARS) guards LogLoss too: AUC alone can keep an
    # over-confident epoch (Frappe: valid LogLoss 0.305 at epoch 2, 0.407 at the kept epoch 14). Where AUC
    # keeps rising long after that, a preset may monitor auc and leave LogLoss to `calibrate` (frappe_cpu.yaml).
    monitor: Literal["auc_minus_logloss", "auc", "logloss"] = "auc_minus_logloss"
    patience: int = 2  # epochs without a better validation `monitor` before stopping
    # Reduce-LR-on-plateau: after `lr_decay_patience` epochs without a better monitor (counted since the best
    # epoch or the last reduction), the model optimizers' lr and emb_lr are multiplied by `lr_decay_factor`;
    # never on the epoch that stops, so it needs lr_decay_patience < patience. 1.0 turns it off. Search's
    # architecture optimizer keeps search.arch_lr (docs/DESIGN.md §3, "Early stopping").
    lr_decay_factor: float = 0.1
    lr_decay_patience: int = 1
    # After training (retrain / train): fit an increasing map of the logit on the validation split, served
    # inside the export (trainer/calibration.py): beta (a * log p - b * log(1 - p) + c), isotonic (pooled
    # adjacent violators, served piecewise-linear) or temperature (logit / T); "none" serves the model's own.
    # Temperature by default: on 1k-row validation splits (the Criteo and Avazu samples) beta and isotonic
    # overfit (RESULTS.md, "Calibration method chosen on development seeds").
    calibrate: Literal["beta", "isotonic", "temperature", "none"] = "temperature"
    lr: float = 1e-3  # Adam lr of every non-embedding model weight
    emb_lr: float = 1e-3  # Adam lr of the embedding table
    l2: float = 0.0  # L2 on non-embedding model weights: gradient += l2 * w (the reference's Adam weight_decay)
    emb_l2: float = 0.0  # L2 on the embedding table, same meaning
    # Apply the per-model settings of trainer/configs/model_presets.yaml (the official code's hyperparam.md)
    # for this dataset and --model (or OptFusion's retrain mode) over this config; the command line's
    # overrides still win. The resolved config.yaml records the values with this off, so they apply once.
    model_presets: bool = False
    # Retrain start when --init is not given: fresh weights or the search run's (`--init=search`).
    retrain_init: Literal["fresh", "search"] = "fresh"
    shuffle_buffer: int = 100_000
    jit_compile: bool = False  # XLA-compile the train step
    max_steps_per_epoch: int | None = None  # cap for smoke runs and benchmarks
    log_every: int = 50  # steps between TensorBoard loss points
    # tf.distribute; see trainer/distribute.py
    strategy: Strategy = "default"
    ps_min_shard_bytes: int = PS_MIN_SHARD_BYTES  # parameter_server: a variable of 2x this is split over the ps tasks


@dataclasses.dataclass
class SearchConfig:
    """Architecture search: its optimizer and the paper's ablations."""

    arch_lr: float = 3e-4  # Adam lr of alpha and beta
    fixed_op: Op | None = None  # search connections only
    sequential: bool = False  # connections first (with fixed_op or add), then ops, edges frozen
    # Hard op per component: "beta" = argmax(beta), the paper; "remove" / "alone" = the valid AUC the
    # trained supernet loses without each op / has with it alone (trainer/selection.py, docs/DESIGN.md §3).
    # Frozen after benchmarks/hard_rule.py chose it on development seeds 101-105 by validation AUC only
    # (benchmarks/RESULTS.md, "Frappe: the Hard rule chosen on development seeds"): neither remove
    # (-0.0011, paired t p = 0.36) nor alone (-0.0016, p = 0.21) beat argmax(beta), so the paper's rule stays.
    hard_select: Literal["beta", "alone", "remove"] = "beta"
    # Scores within this many standard errors of the best tie, and the larger beta wins: the margin is
    # hard_select_tie_se x the DeLong standard error of the paired validation AUC difference
    # (trainer/selection.py tie_margin), recorded per component in architecture.json; 0 = no margin.
    # One standard error, as Breiman's one-SE rule: a difference smaller than its noise does not override beta.
    hard_select_tie_se: float = 1.0


@dataclasses.dataclass
class NasConfig:
    """The budgets of `trainer search --method=autoctr|nasrec` (trainer/nas/). The defaults are the paper scale
    of NASRec's official evolution script (7 blocks, population 128, 240 generations of 8 children, tournaments
    of 64); cpu.yaml sets the CPU budget. Both methods share them, so their costs compare."""

    blocks: int = 7  # choice blocks of a design (trainer/nas/space.py)
    dense_dim: int = 256  # width of every dense node
    population: int = 128  # random designs evaluated first; the evolution keeps the latest this many (aging)
    cycles: int = 1920  # children evaluated after the initial population
    sample_size: int = 64  # tournament: the best of this many of the population is the next parent
    candidate_steps: int = 2000  # autoctr: train batches per candidate per epoch (its data subsample)
    candidate_epochs: int = 1  # autoctr: epochs per candidate (early stopping as train.*)


@dataclasses.dataclass
class Config:
    """One run: seed, supernet shape, training and search settings."""

    seed: int = 42
    model: SupernetConfig = dataclasses.field(default_factory=SupernetConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    search: SearchConfig = dataclasses.field(default_factory=SearchConfig)
    nas: NasConfig = dataclasses.field(default_factory=NasConfig)

    def validate(self) -> None:
        """Cross-field checks the types alone cannot express."""
        positive = {
            "train.batch_size": self.train.batch_size,
            "train.eval_batch_size": self.train.eval_batch_size,
            "train.epochs": self.train.epochs,
            "train.patience": self.train.patience,
            "train.lr_decay_patience": self.train.lr_decay_patience,
            "train.shuffle_buffer": self.train.shuffle_buffer,
            "train.log_every": self.train.log_every,
        }
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key} must be >= 1. Received: {value}")
        if self.train.max_steps_per_epoch is not None and self.train.max_steps_per_epoch < 1:
            raise ConfigError(
                f"train.max_steps_per_epoch must be >= 1 or null. Received: {self.train.max_steps_per_epoch}"
            )
        for key in ("lr", "emb_lr"):
            if getattr(self.train, key) <= 0:
                raise ConfigError(f"train.{key} must be > 0. Received: {getattr(self.train, key)}")
        for key in ("l2", "emb_l2"):
            if getattr(self.train, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0. Received: {getattr(self.train, key)}")
        if not 0 < self.train.lr_decay_factor <= 1:
            raise ConfigError(f"train.lr_decay_factor must be in (0, 1] (1 = no decay). "
                              f"Received: {self.train.lr_decay_factor}")
        if not 0 <= self.search.hard_select_tie_se < float("inf"):
            raise ConfigError(f"search.hard_select_tie_se must be a finite number >= 0. "
                              f"Received: {self.search.hard_select_tie_se}")
        for key in ("blocks", "dense_dim", "population", "sample_size", "candidate_steps", "candidate_epochs"):
            if getattr(self.nas, key) < 1:
                raise ConfigError(f"nas.{key} must be >= 1. Received: {getattr(self.nas, key)}")
        if self.nas.cycles < 0 or self.nas.sample_size > self.nas.population:
            raise ConfigError(f"nas.cycles must be >= 0 and nas.sample_size <= nas.population. Received: "
                              f"cycles {self.nas.cycles}, sample_size {self.nas.sample_size}, "
                              f"population {self.nas.population}")
        if self.search.arch_lr <= 0:
            raise ConfigError(f"search.arch_lr must be > 0. Received: {self.search.arch_lr}")


def preset_path(dataset: str, scale: str = "cpu") -> pathlib.Path:
    """The shipped preset of `dataset` at `scale` ("cpu", or "paper" for the GPU-scale setting of the paper)."""
    return CONFIG_DIR / f"{dataset}_{scale}.yaml"


BASE_KEY = "base"
"""A config's optional parent file (relative to it): its values first, this file's on top."""
DATASET_FIELD = "{dataset}"
"""In a `base:` name, the dataset being trained on (official.yaml: `base: "{dataset}_paper.yaml"`)."""


def _read_mapping(path: pathlib.Path, seen: tuple[pathlib.Path, ...] = (),
                  dataset: str | None = None) -> dict[str, Any]:
    """The YAML mapping of `path` merged over its `base:` chain (one source of truth per default)."""
    if not path.is_file():
        shipped = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"config file {path} does not exist (shipped presets: {shipped})")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: `{BASE_KEY}:` chain loops back to itself")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: `{BASE_KEY}:` must be a file name. Received: {base!r}")
    if DATASET_FIELD in base:
        if dataset is None:
            raise ConfigError(f"{path} builds on {base!r}, a preset per dataset: use it with trainer --data")
        named = path.parent / base.replace(DATASET_FIELD, dataset)
        if not named.is_file():
            shipped = sorted(p.name for p in path.parent.glob(base.replace(DATASET_FIELD, "*")))
            raise ConfigError(f"{path} builds on {base!r}, but dataset {dataset!r} has no {named.name} "
                              f"(it is for {shipped})")
        base = named.name
    merged = _read_mapping(path.parent / base, (*seen, path.resolve()), dataset)
    for section, values in data.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


def load_config(path: str | pathlib.Path, overrides: typing.Sequence[str] = (), dataset: str | None = None) -> Config:
    """Reads a YAML config (and its `base:` chain, `{dataset}` in it named by `dataset`), applies
    `key=value` overrides, validates."""
    path = pathlib.Path(path)
    data = _read_mapping(path, dataset=dataset)
    for override in overrides:
        _apply_override(data, override)
    try:
        config = _build(Config, data, prefix="")
        config.validate()
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    return config


def to_dict(config: Config) -> dict[str, Any]:
    """Plain dict (tuples as lists) for writing the resolved config.yaml."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def dump_config(config: Config, path: pathlib.Path) -> None:
    """Writes the resolved config, temp-then-rename."""
    write_text_atomic(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def _apply_override(data: dict[str, Any], override: str) -> None:
    """`train.lr=1e-3` -> data["train"]["lr"] = 0.001 (value parsed as YAML)."""
    key, sep, raw = override.removeprefix("--").partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} must look like --section.key=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {override!r}: value is not valid YAML") from err
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
    node[parts[-1]] = value


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Instantiates dataclass `cls` from `data`, rejecting unknown keys."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]} (known keys at {where}: {', '.join(sorted(names))})"
        )
    kwargs = {name: _convert(hints[name], value, f"{prefix}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from err


def _convert(hint: Any, value: Any, key: str) -> Any:
    """Converts one YAML value to the field type `hint`, or says why not."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {list(args)}. Received: {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list. Received: {value!r}")
        item = args[0] if args else Any
        items = [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false. Received: {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer. Received: {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-3" as a string
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number. Received: {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string. Received: {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {hint!r}")
