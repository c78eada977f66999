"""The stages that write a run: search an architecture, retrain it, train a fixed design; refit a
finished run's calibration.

Each stage owns a run directory (see model_io) and returns a summary dict.
Search runs one phase (one-shot, or connections only with a fixed op) or two
(the sequential ablation: connections with a fixed op, then operations with
the connections frozen) and keeps the best epoch's weights by variable path.
Retrain and train are the same code: a frozen architecture, Hard or Soft,
fresh weights or (retrain `init="search"`) the search run's, best validation
epoch kept, a constant predictor refused, a calibration fitted on the
validation split (trainer/calibration.py), test metrics in metrics.json.
Calibrate refits that map on a finished run (another method, the same
model): calibration.json and metrics.json's calibration block are replaced.
"""

from __future__ import annotations

import functools
import json
import logging
import pathlib
import time
from typing import Any

import keras
import numpy as np

from pipeline import fingerprint
from pipeline.atomic import write_text_atomic
from pipeline.dataset_info import FINGERPRINT_KEY, DatasetInfo
from pipeline.errors import UsageError
from trainer import warmstart
from trainer.architecture import Architecture
from trainer.calibration import calibrate
from trainer.config import Config, dump_config
from trainer.data import make_dataset
from trainer.loop import Phase, TrainingFailed, epoch_summary
from trainer.metrics import roc_auc
from trainer.model_io import (
    ARCH_FILE,
    ARCH_TEXT_FILE,
    CONFIG_FILE,
    RUN_FILE,
    SEARCH_WEIGHTS_FILE,
    build_model,
    save_search_weights,
    save_weights,
    warm_start,
)
from trainer.nas import OPTFUSION_METHOD
from trainer.nas.space import NasArchitecture
from trainer.scoring import ScoringError, check_compatible, labeled_logits
from trainer.selection import select_ops

log = logging.getLogger("trainer")

METRICS_FILE = "metrics.json"


class RunDirError(UsageError):
    """The output directory cannot be used (exists, or does not match on resume)."""


def _write_json(path: pathlib.Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def _data_record(info: DatasetInfo) -> dict[str, Any]:
    """run.json's record of the data: dataset, dir, fields (max_len only where > 1, so single-valued
    runs read as before) and the transform graph's fingerprint, which evaluate, predict and export check."""
    fields = [{"name": f.name, "vocab_size": f.vocab_size, **({"max_len": f.max_len} if f.max_len > 1 else {})}
              for f in info.fields]
    return {"dataset": info.dataset, "data_dir": str(info.data_dir), "fields": fields,
            FINGERPRINT_KEY: fingerprint.of_data(info)}


def prepare_run_dir(out: pathlib.Path, run: dict[str, Any], config: Config, resume: bool) -> None:
    """Creates `out` (or checks it on resume) and writes run.json + config.yaml."""
    if resume:
        if not (out / RUN_FILE).is_file():
            raise RunDirError(f"--resume: {out} holds no {RUN_FILE}; start the run without --resume")
        old = json.loads((out / RUN_FILE).read_text())
        # A run that records no fingerprint (older) resumes on the field check alone.
        keys = ("stage", "mode", "model", "fields", *((FINGERPRINT_KEY,) if old.get(FINGERPRINT_KEY) else ()))
        for key in keys:
            if old.get(key) != run.get(key):
                raise RunDirError(
                    f"--resume: {out} was a run with a different {key} ({str(old.get(key))[:80]} in "
                    f"{out / RUN_FILE} vs {str(run.get(key))[:80]} now, with --data {run['data_dir']}); "
                    "use another --out"
                )
    elif out.exists() and any(out.iterdir()):
        raise RunDirError(f"{out} exists and is not empty; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / RUN_FILE, run)
    dump_config(config, out / CONFIG_FILE)


def run_search(config: Config, info: DatasetInfo, out: pathlib.Path, *, resume: bool = False,
               method: str = OPTFUSION_METHOD) -> dict[str, Any]:
    """Searches connections and operations; writes architecture.json/.txt. Another `method`
    (autoctr, nasrec) searches whole architectures instead (trainer/nas/search.py)."""
    run: dict[str, Any] = {"stage": "search", "mode": "search", **_data_record(info), "seed": config.seed,
                           **({"model": method} if method != OPTFUSION_METHOD else {})}
    prepare_run_dir(out, run, config, resume)
    if method != OPTFUSION_METHOD:
        from trainer.nas import search

        return search.run(method, config, info, out, resume=resume)
    s = config.search
    phases: list[tuple[str, dict[str, Any]]]
    if s.sequential:
        phases = [("connections", {"fixed_op": s.fixed_op or "add"}), ("operations", {"search_ops_only": True})]
    else:
        phases = [("search", {"fixed_op": s.fixed_op})]
    start = time.perf_counter()
    summary: dict[str, Any] = {"stage": "search", "run_dir": str(out), "phases": {}}
    architecture: Architecture | None = None
    for index, (name, kwargs) in enumerate(phases):
        arch_path = out / (ARCH_FILE if index == len(phases) - 1 else f"architecture_{name}.json")
        keras.utils.set_random_seed(config.seed + index)
        model = build_model(config, run["fields"], mode="search", architecture=architecture, **kwargs)
        phase = Phase(
            name, model, config, info, out / "checkpoints" / name, out / "tensorboard", train_arch=True,
            on_improve=functools.partial(_save_architecture, path=arch_path),
        )
        if resume:
            phase.restore()
        state = phase.fit()
        summary["phases"][name] = epoch_summary(state, config.train.monitor)
        architecture = Architecture.load(arch_path)
    assert architecture is not None
    architecture = select_ops(model, lambda: phase.predict("valid"), architecture, s.hard_select,
                              s.hard_select_tie_se)
    architecture.save(out / ARCH_FILE)
    save_search_weights(model, out)
    write_text_atomic(out / ARCH_TEXT_FILE, architecture.render() + "\n")
    summary.update(seconds=time.perf_counter() - start, architecture=str(out / ARCH_FILE),
                   rendering=architecture.render())
    return summary


def _save_architecture(model: keras.Model, path: pathlib.Path) -> None:
    model.architecture().save(path)


def run_fixed(
    stage: str,
    config: Config,
    info: DatasetInfo,
    architecture: Architecture | None,
    architecture_source: str,
    mode: str | None,
    out: pathlib.Path,
    *,
    resume: bool = False,
    init: str = "fresh",
    zoo_model: str | None = None,
    nas_design: NasArchitecture | None = None,
) -> dict[str, Any]:
    """Trains a frozen architecture (Hard or Soft), or a Keras baseline of the
    zoo (`zoo_model`, no architecture), or an AutoCTR / NASRec design (`nas_design`); writes metrics.json.

    init "search" starts from the weights of the search run that wrote
    `architecture_source` (its search.weights.npz), "run:PATH" from a finished
    run across a vocabulary change (trainer/warmstart.py), "fresh" from scratch.
    """
    model_name = nas_design.method if nas_design is not None else zoo_model
    run: dict[str, Any] = {"stage": stage, "mode": mode, "model": model_name, **_data_record(info),
                           "seed": config.seed, "architecture_source": architecture_source, "init": init}
    previous = warmstart.init_run_dir(init)
    rows = warmstart.plan(previous, info) if previous is not None else None  # bad input fails before the run dir
    if rows is not None:
        run["warm_start"] = {"from": str(previous), "fields": rows.fields}
    search_weights = pathlib.Path(architecture_source).parent / SEARCH_WEIGHTS_FILE
    if init == "search" and not search_weights.is_file():
        raise RunDirError(
            f"--init=search needs the search run's {SEARCH_WEIGHTS_FILE} beside {architecture_source}; "
            "pass a search run's architecture.json or use --init=fresh"
        )
    if init == "search":  # its embeddings are rows of its own vocabularies
        check_compatible(search_weights.parent, info,
                         hint="retrain on the search run's data dir, or use --init=fresh")
    prepare_run_dir(out, run, config, resume)
    design = architecture if architecture is not None else nas_design
    if design is not None:
        design.save(out / ARCH_FILE)
        write_text_atomic(out / ARCH_TEXT_FILE, design.render() + "\n")
    start = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    model = build_model(config, run["fields"], mode=mode or "hard", architecture=architecture,
                        zoo_model=zoo_model, nas_design=nas_design)
    if init == "search":
        fresh = warm_start(model, search_weights)
        log.info("init: weights of %s%s", search_weights, f" (fresh: {', '.join(fresh)})" if fresh else "")
    elif rows is not None and previous is not None:
        fresh = warmstart.apply(model, previous, rows)
        log.info("init: weights of run %s, embedding rows by token%s", previous,
                 f" (fresh: {', '.join(fresh)})" if fresh else "")
    phase = Phase(stage, model, config, info, out / "checkpoints" / stage, out / "tensorboard", train_arch=False)
    if resume:
        phase.restore()
    state = phase.fit()
    valid = phase.predict("valid")
    _refuse_constant(phase, *valid)
    test = phase.predict("test")
    save_weights(model, out)
    calibration = calibrate(config.train.calibrate, valid, test, out)  # fitted on valid only
    metrics = {
        "stage": stage,
        "mode": mode,
        "model": model_name,
        "test_auc": roc_auc(*test),  # the same under any T > 0
        "test_logloss": calibration["test"]["logloss"],  # the uncalibrated model, as the paper reports
        "test_rows": calibration["test"]["rows"],
        **epoch_summary(state, config.train.monitor),
        "params": int(model.count_params()),
        "calibration": calibration,
        "history": state.history,
    }
    _write_json(out / METRICS_FILE, metrics)
    return {"stage": stage, "run_dir": str(out), "seconds": time.perf_counter() - start, **metrics}


def run_calibrate(run_dir: pathlib.Path, info: DatasetInfo, method: str) -> dict[str, Any]:
    """Refits the finished run's calibration with `method` on `info`'s validation split (the run's own
    pipeline output); the model is unchanged, so only the calibrated figures move."""
    start = time.perf_counter()
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise ScoringError(f"{run_dir} is not a finished train or retrain run ({METRICS_FILE} is missing); "
                           "calibrate refits the map of a finished run")
    metrics = json.loads(metrics_path.read_text())
    previous = metrics.get("calibration", {}).get("method", "none")
    valid, test = labeled_logits(run_dir, info, ("valid", "test"))
    calibration = {**calibrate(method, valid, test, run_dir), "refit": {"previous": previous,
                                                                        "data_dir": str(info.data_dir)}}
    _write_json(metrics_path, {**metrics, "calibration": calibration})
    return {"stage": "calibrate", "run_dir": str(run_dir), "seconds": time.perf_counter() - start,
            "previous": previous, "calibration": calibration}


def _refuse_constant(phase: Phase, labels: np.ndarray, logits: np.ndarray) -> None:
    """Raises TrainingFailed, naming the fusion that loses its inputs, if the
    trained model predicts one constant on the validation split (`labels`, `logits`)."""
    if np.ptp(logits) > 0:
        return
    if not hasattr(phase.model, "fusion_spread"):  # a zoo baseline: no fusion to name
        raise TrainingFailed(
            f"[{phase.name}] the trained model predicts one constant ({float(logits[0]):.4g}) on all "
            f"{labels.size} validation rows; try another learning rate or L2"
        )
    features, _ = next(iter(make_dataset(phase.info, "valid", phase.config.train.eval_batch_size)))
    comp, op, ratio = phase.model.fusion_spread(features)[0]
    raise TrainingFailed(
        f"[{phase.name}] the trained model predicts one constant ({float(logits[0]):.4g}) on all "
        f"{labels.size} validation rows: component {comp} ({op.upper()}) keeps {ratio:.2g} of its inputs' "
        "variation across examples. For a PROD over small inputs keep model.prod_norm=true; or use "
        "--mode=soft, --init=search or another architecture."
    )
