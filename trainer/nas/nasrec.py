"""NASRec (Zhang et al., "NASRec: Weight Sharing Neural Architecture Search for Recommender Systems",
WWW 2023), reduced for CPU budgets.

Kept from the paper and its official code (facebookresearch/NasRec): choice
blocks of a dense and a sparse node over NASRec's block set (linear, sigmoid
gating and dot product as dense ops; linear-3d (EFC) and a transformer head as
sparse ops: trainer/nas/space.py METHOD_OPS["nasrec"]); one weight-sharing
supernet trained once with any-path sampling (per step and block: a uniform
number of distinct earlier nodes as inputs, the others zero-padded, one op
per node); then regularized evolution over subnets, each scored on the
validation split with the supernet's weights, no retraining; the best subnet
is written as a design that `trainer retrain` trains from scratch.

Reduced for CPU budgets (docs/NAS.md): widths are one `nas.dense_dim`, not
elastic; a block's sparse inputs are summed, not concatenated on the field
axis; the supernet's ops are all computed and weighted by the sampled one-hot
(no per-step op skipping); no supernet warm-up on the full path and no
fine-tuning of subnets before scoring; the budgets (`nas:`) are far below the
paper's (population 128, 240 generations of 8 children).
"""

from __future__ import annotations

import pathlib
from typing import Any

import keras

from pipeline.dataset_info import DatasetInfo
from trainer.config import Config
from trainer.distribute import active
from trainer.loop import Phase, epoch_summary
from trainer.nas.blocks import NasSupernet
from trainer.nas.evolution import evolve
from trainer.nas.space import METHOD_OPS, NasArchitecture

SUPERNET = "supernet"


def search(config: Config, info: DatasetInfo, fields: list[dict[str, Any]], out: pathlib.Path, *,
           resume: bool) -> dict[str, Any]:
    """Trains the supernet (resumable like any phase), then evolves subnets scored with its weights."""
    keras.utils.set_random_seed(config.seed)
    dense_ops, sparse_ops = METHOD_OPS["nasrec"]
    with active().scope():
        model = NasSupernet(config.model, [f["name"] for f in fields], [int(f["vocab_size"]) for f in fields],
                            config.nas.blocks, dense_ops, sparse_ops, config.nas.dense_dim,
                            max_lens=[int(f.get("max_len", 1)) for f in fields])
    phase = Phase(SUPERNET, model, config, info, out / "checkpoints" / SUPERNET, out / "tensorboard",
                  train_arch=False)
    if resume:
        phase.restore()
    state = phase.fit()

    def evaluate(design: NasArchitecture, index: int) -> dict[str, float]:
        model.set_choice(design)
        valid = phase.evaluate("valid")
        return {"valid_auc": valid["auc"], "valid_logloss": valid["logloss"]}

    result = evolve(config, "nasrec", out, evaluate, resume=resume)
    return {**result, "supernet": epoch_summary(state, config.train.monitor)}
