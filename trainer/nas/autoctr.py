"""AutoCTR (Song et al., "Towards Automated Neural Interaction Discovery for Click-Through Rate Prediction",
KDD 2020), reduced for CPU budgets.

Kept from the paper: a DAG of its block types (MLP, CrossNet, dot product and
FM as dense blocks; EFC, CIN as blocks over the embeddings: trainer/nas/space.py
METHOD_OPS["autoctr"]), searched by evolution, every candidate trained from
scratch on a subsample of the train data and scored on the validation split,
under a population / cycle budget in the config (`nas:`, trainer/config.py).

Reduced or simplified, said so in docs/NAS.md: the learning-to-rank guided
mutation is plain random mutation of one block (regularized evolution:
tournament parent, aging population); the data subsample is
`nas.candidate_steps` shuffled batches per epoch for `nas.candidate_epochs`;
the block widths are one `nas.dense_dim`, not searched; each block has a dense
and a sparse node (the NASRec layout both methods share, so their designs
train and serve through one model class) rather than one node of either kind.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import shutil
from typing import Any

import keras

from pipeline.dataset_info import DatasetInfo
from trainer.config import Config
from trainer.loop import Phase, TrainingFailed, epoch_summary
from trainer.model_io import build_model
from trainer.nas.evolution import evolve
from trainer.nas.space import NasArchitecture

log = logging.getLogger("trainer")
CANDIDATES_DIR = "candidates"


def candidate_config(config: Config) -> Config:
    """The run's config with the candidates' budget: `nas.candidate_epochs` of `nas.candidate_steps` batches."""
    t, n = config.train, config.nas
    steps = n.candidate_steps if t.max_steps_per_epoch is None else min(n.candidate_steps, t.max_steps_per_epoch)
    return dataclasses.replace(config, train=dataclasses.replace(t, epochs=n.candidate_epochs,
                                                                  max_steps_per_epoch=steps))


class _NoRetracingWarning(logging.Filter):
    """Drops TF's "triggered tf.function retracing" warning: each candidate is a new model with new step
    functions by design, which that warning would report as a bug after the fifth candidate."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def search(config: Config, info: DatasetInfo, fields: list[dict[str, Any]], out: pathlib.Path, *,
           resume: bool) -> dict[str, Any]:
    """Evolution over designs, each trained from scratch on the subsample; the best design by validation."""
    short = candidate_config(config)
    tf_log = logging.getLogger("tensorflow")
    quiet = _NoRetracingWarning()

    def evaluate(design: NasArchitecture, index: int) -> dict[str, float]:
        work = out / CANDIDATES_DIR / f"c{index}"
        shutil.rmtree(work, ignore_errors=True)  # a candidate killed mid-training starts over
        keras.utils.set_random_seed(config.seed * 100_003 + index)
        model = build_model(short, fields, mode="hard", nas_design=design)
        phase = Phase(f"autoctr-c{index}", model, short, info, work / "checkpoints", work / "tensorboard",
                      train_arch=False)
        try:
            summary = epoch_summary(phase.fit(), short.train.monitor)
        except TrainingFailed as err:  # a diverging candidate loses; the search goes on
            log.warning("[autoctr] candidate %d failed: %s", index, err)
            summary = {"best_valid_auc": float("nan"), "best_valid_logloss": float("nan")}
        shutil.rmtree(work, ignore_errors=True)
        return {"valid_auc": summary["best_valid_auc"], "valid_logloss": summary["best_valid_logloss"]}

    tf_log.addFilter(quiet)
    try:
        return evolve(config, "autoctr", out, evaluate, resume=resume)
    finally:
        tf_log.removeFilter(quiet)
