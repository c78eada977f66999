"""A small learnable pipeline-output directory, written without Beam.

Fast tests of the trainer need TFRecords + stats.json in the pipeline's
layout (docs/DESIGN.md §2 Preprocessing, outputs) but not the minute of fixed cost of a TFT run. The label
depends on the ids through a fixed random logistic model, so a working
trainer clearly beats AUC 0.5.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import tensorflow as tf

VOCAB_SIZES = (7, 11, 13, 17, 5, 9)
SPLIT_ROWS = {"train": 3000, "valid": 800, "test": 800}


def write_synthetic_run(out: pathlib.Path, seed: int = 0, shards: int = 2) -> pathlib.Path:
    """Writes `{split}-0000k-of-...tfrecord.gz` shards and stats.json into `out`."""
    rng = np.random.default_rng(seed)
    names = [f"f{i}" for i in range(len(VOCAB_SIZES))]
    weights = [rng.normal(0.0, 1.2, size=v) for v in VOCAB_SIZES]
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in SPLIT_ROWS.items():
        ids = np.stack([rng.integers(0, v, size=rows) for v in VOCAB_SIZES], axis=1)
        logit = sum(w[ids[:, i]] for i, w in enumerate(weights)) + 1.5 * weights[0][ids[:, 0]] * weights[1][ids[:, 1]]
        labels = (rng.random(rows) < 1.0 / (1.0 + np.exp(-(logit - 0.5)))).astype(np.int64)
        for shard in range(shards):
            path = out / f"{split}-{shard:05d}-of-{shards:05d}.tfrecord.gz"
            with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
                for r in range(shard, rows, shards):
                    feature = {n: _int64(ids[r, i]) for i, n in enumerate(names)}
                    feature["label"] = _int64(labels[r])
                    writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    stats = {
        "dataset": "synthetic",
        "label_key": "label",
        "fields": [{"name": n, "vocab_size": v} for n, v in zip(names, VOCAB_SIZES)],
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    return out


def _int64(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
