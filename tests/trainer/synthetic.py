"""A small learnable pipeline-output directory, written without Beam.

Fast tests of the trainer need TFRecords + stats.json in the pipeline's
layout (docs/DESIGN.md §2 Preprocessing, outputs) but not the minute of fixed cost of a TFT run. The label
depends on the ids through a fixed random logistic model, so a working
trainer clearly beats AUC 0.5.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from pipeline.dataset_info import PAD_ID

VOCAB_SIZES = (7, 11, 13, 17, 5, 9)
SPLIT_ROWS = {"train": 3000, "valid": 800, "test": 800}
SEQ_FIELD, SEQ_VOCAB = "seq", 10


def write_synthetic_run(
    out: pathlib.Path, seed: int = 0, shards: int = 2, *, seq_len: int = 0, labeled: bool = True,
    splits: Mapping[str, int] = SPLIT_ROWS,
) -> pathlib.Path:
    """Writes `{split}-0000k-of-...tfrecord.gz` shards and stats.json into `out`.

    `seq_len` > 0 adds a multi-valued field SEQ_FIELD (1..seq_len ids, padded
    with PAD_ID) whose mean weight enters the label's logit; `labeled=False`
    writes no label (a `pipeline transform` output of unlabeled files);
    `splits` names the splits and their rows. The same seed gives the same
    hidden model, so a dir of other splits holds data of the same distribution.
    """
    rng = np.random.default_rng(seed)
    names = [f"f{i}" for i in range(len(VOCAB_SIZES))]
    weights = [rng.normal(0.0, 1.2, size=v) for v in VOCAB_SIZES]
    seq_weights = rng.normal(0.0, 2.0, size=SEQ_VOCAB) if seq_len else None
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        ids = np.stack([rng.integers(0, v, size=rows) for v in VOCAB_SIZES], axis=1)
        logit = sum(w[ids[:, i]] for i, w in enumerate(weights)) + 1.5 * weights[0][ids[:, 0]] * weights[1][ids[:, 1]]
        seq = None
        if seq_weights is not None:
            lengths = rng.integers(1, seq_len + 1, size=rows)
            seq = np.where(np.arange(seq_len) < lengths[:, None], rng.integers(0, SEQ_VOCAB, size=(rows, seq_len)),
                           PAD_ID)
            logit = logit + np.where(seq >= 0, seq_weights[np.maximum(seq, 0)], 0.0).sum(axis=1) / lengths
        labels = (rng.random(rows) < 1.0 / (1.0 + np.exp(-(logit - 0.5)))).astype(np.int64)
        for shard in range(shards):
            path = out / f"{split}-{shard:05d}-of-{shards:05d}.tfrecord.gz"
            with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
                for r in range(shard, rows, shards):
                    feature = {n: _int64(ids[r, i]) for i, n in enumerate(names)}
                    if seq is not None:
                        feature[SEQ_FIELD] = _int64(*seq[r])
                    if labeled:
                        feature["label"] = _int64(labels[r])
                    writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    fields = [{"name": n, "vocab_size": v} for n, v in zip(names, VOCAB_SIZES, strict=True)]
    if seq_len:
        fields.append({"name": SEQ_FIELD, "vocab_size": SEQ_VOCAB, "max_len": seq_len})
    stats = {"dataset": "synthetic", "label_key": "label", "fields": fields}
    if dict(splits) != SPLIT_ROWS or not labeled:
        stats.update(splits=list(splits), labeled=labeled)
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    return out


def _int64(*values: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))
