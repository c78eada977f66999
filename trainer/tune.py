"""`trainer --stage=tune`: keras-tuner over the paper's lr / L2 grid on validation AUC.

keras-tuner drives the trials with its own oracle (grid search by default:
the paper tunes on a grid) and keeps its state in `--out/tuner/`, so a
killed tune resumes: finished trials are not repeated and the one that was
running is retried, resuming its own run directory. Each trial is an ordinary
run of this trainer (the search stage for OptFusion, the train stage for a
zoo model) in `tuner/<project>/trial_<id>/run`, with the trial's values
applied as `--section.key=value` overrides. The best values are written as
`best.yaml`: the resolved config less TUNING_ONLY_KEYS, so `--config best.yaml`
gives every other stage the tuned settings (for OptFusion the retrain reuses
the search's lr and L2, as the paper does) under its own training budget.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import keras_tuner as kt
import yaml

from pipeline.atomic import write_text_atomic
from trainer.config import Config, ConfigError, dump_config, load_config, to_dict

OBJECTIVE = "val_auc"
BASE_CONFIG = "base.yaml"
BEST_CONFIG = "best.yaml"
GRID_FILE = pathlib.Path(__file__).resolve().parent / "configs" / "tune_grid.yaml"
CPU_GRID_FILE = GRID_FILE.with_name("tune_grid_reduced.yaml")
"""The reduced grid of `benchmarks/paper_tables.py --tuned` on CPU."""
# Left out of best.yaml: they only set the tuning trials' budget (`--epochs` gives each trial's
# epochs; a step cap shortens trials), not the model. A stage reading best.yaml takes the
# Config defaults for them (trainer/config.py) or its own `--train.epochs=N`.
TUNING_ONLY_KEYS = ("train.epochs", "train.max_steps_per_epoch")

TrialFn = Callable[[Config, pathlib.Path, bool], float]
"""(config, run dir, resume) -> best validation AUC of one trainer run."""


@dataclasses.dataclass(frozen=True)
class Grid:
    """Config paths -> candidate values, and paths that follow another path's value."""

    values: dict[str, list[Any]]
    tie: dict[str, str]

    @classmethod
    def load(cls, path: str | pathlib.Path) -> Grid:
        """Reads a grid YAML (`grid:` and optional `tie:`), checking every key against Config."""
        path = pathlib.Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"tune grid {path}: {err}") from err
        unknown = set(data) - {"grid", "tie"}
        values, tie = data.get("grid") or {}, data.get("tie") or {}
        if unknown or not isinstance(values, dict) or not isinstance(tie, dict) or not values:
            raise ConfigError(
                f"tune grid {path} must hold a non-empty `grid:` mapping of config paths to lists "
                f"and an optional `tie:` mapping. Received keys: {sorted(data)}"
            )
        for key, candidates in values.items():
            if not isinstance(candidates, list) or not candidates:
                raise ConfigError(f"tune grid {path}: grid.{key} must be a non-empty list")
        for key, source in tie.items():
            if source not in values:
                raise ConfigError(f"tune grid {path}: tie.{key} follows {source!r}, which is not in grid")
        return cls({k: list(v) for k, v in values.items()}, dict(tie))

    def overrides(self, chosen: Mapping[str, Any]) -> list[str]:
        """The `section.key=value` overrides of one point of the grid."""
        pairs = dict(chosen) | {key: chosen[source] for key, source in self.tie.items()}
        return [f"{key}={yaml.safe_dump(value).splitlines()[0]}" for key, value in pairs.items()]

    def size(self) -> int:
        return math.prod(len(v) for v in self.values.values())


class _GridOracle(kt.oracles.GridSearchOracle):
    """keras-tuner's grid oracle, with its place in the grid saved across a reload.

    keras-tuner 1.4.8's GridSearchOracle keeps the grid order of its trials
    (`_ordered_ids`, `_populate_next`) only in memory, so a reloaded tuner
    fails with a KeyError on its next trial. This saves and restores both
    (private attributes: tests/test_pinned_private_apis.py fails, naming this
    class, when a keras-tuner upgrade changes them).
    """

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        ids = self._ordered_ids
        state["grid_order"] = {
            "memory": list(ids._memory),
            "next": [[k, v] for k, v in ids._next_index.items() if k is not None],
            "last": ids._last_index,
        }
        state["populate_next"] = list(self._populate_next)
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        order = state.get("grid_order")
        if order:
            ids = self._ordered_ids
            ids._memory = list(order["memory"])
            ids._data_to_index = {data: index for index, data in enumerate(ids._memory)}
            ids._next_index.clear()
            ids._next_index.update({int(k): v for k, v in order["next"]})
            ids._last_index = order["last"]
        self._populate_next = list(state.get("populate_next", []))


class _StageTuner(kt.engine.base_tuner.BaseTuner):
    """A keras-tuner whose trial is one trainer run (its own training loop)."""

    def __init__(self, grid: Grid, base_config: pathlib.Path, trial_fn: TrialFn,
                 **kwargs: Any) -> None:
        self._grid = grid
        self._base = base_config
        self._trial_fn = trial_fn
        super().__init__(**kwargs)

    def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> dict[str, float]:
        config = load_config(self._base, self._grid.overrides(trial.hyperparameters.values))
        run_dir = pathlib.Path(self.get_trial_dir(trial.trial_id)) / "run"
        resume = (run_dir / "run.json").is_file()  # a trial cut short by a kill continues
        if not resume and run_dir.exists():  # killed before its run recorded itself: nothing to resume
            shutil.rmtree(run_dir)
        auc = self._trial_fn(config, run_dir, resume)
        return {OBJECTIVE: float(auc)}


def write_best_config(config: Config, path: pathlib.Path) -> None:
    """The tuned config without TUNING_ONLY_KEYS and with train.model_presets off (the per-model lr and
    L2 of model_presets.yaml would override the tuned ones), temp-then-rename, with a comment saying so."""
    doc = to_dict(config)
    for key in TUNING_ONLY_KEYS:
        section, name = key.split(".")
        doc[section].pop(name)
    doc["train"]["model_presets"] = False
    note = (f"# The best trial's config from `trainer --stage=tune`, without {', '.join(TUNING_ONLY_KEYS)}\n"
            "# (they only set the tuning trials' budget): pass --train.epochs=N with --config to change it.\n"
            "# train.model_presets is off: trainer/configs/model_presets.yaml does not replace the tuned lr and L2.\n")
    write_text_atomic(path, note + yaml.safe_dump(doc, sort_keys=False))


def tune(
    config: Config,
    grid: Grid,
    trial_fn: TrialFn,
    out: pathlib.Path,
    project: str,
    max_trials: int | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) the tuner in `out/tuner`; writes `out/best.yaml`; returns a summary."""
    out.mkdir(parents=True, exist_ok=True)
    base = out / BASE_CONFIG
    if base.is_file():
        if load_config(base) != config:
            raise ConfigError(
                f"{out} holds a tune with another base config ({base}); use another --out "
                "or the same --config and overrides"
            )
    else:
        dump_config(config, base)
    space = kt.HyperParameters()
    for key, candidates in grid.values.items():
        space.Choice(key, candidates, ordered=False)
    oracle = _GridOracle(
        objective=kt.Objective(OBJECTIVE, direction="max"),
        max_trials=max_trials or grid.size(),
        seed=config.seed,
        hyperparameters=space,
        allow_new_entries=False,
        tune_new_entries=False,
    )
    tuner = _StageTuner(grid, base, trial_fn, oracle=oracle, directory=str(out / "tuner"),
                        project_name=project, overwrite=False)
    tuner.search()
    trials = [t for t in tuner.oracle.trials.values() if t.score is not None]
    if not trials:
        failed = [t for t in tuner.oracle.trials.values() if t.message]
        detail = failed[-1].message.strip().splitlines()[-1] if failed else "no trial ran"
        raise RuntimeError(f"every tuning trial failed; the last error: {detail}")
    best = tuner.oracle.get_best_trials(1)[0]
    best_config = load_config(base, grid.overrides(best.hyperparameters.values))
    write_best_config(best_config, out / BEST_CONFIG)
    ranked = sorted(trials, key=lambda t: -t.score)
    return {
        "stage": "tune",
        "run_dir": str(out),
        "trials": [{"id": t.trial_id, "values": dict(t.hyperparameters.values), OBJECTIVE: t.score}
                   for t in ranked],
        "best": {"values": dict(best.hyperparameters.values), OBJECTIVE: best.score},
        "best_config": str(out / BEST_CONFIG),
    }

