"""Reference computations the integration tests compare the Beam job against."""

from __future__ import annotations

import collections
import glob
import math
import pathlib

import numpy as np

from pipeline.features import LABEL_KEY
from pipeline.raw_rows import iter_raw_examples, serialize_example
from pipeline.specs import DatasetSpec


def read_split(data_dir: pathlib.Path, split: str, names: list[str]) -> dict[str, np.ndarray]:
    """All rows of one split's TFRecords, parsed in batches."""
    import tensorflow as tf

    spec = {n: tf.io.FixedLenFeature([], tf.int64) for n in [*names, LABEL_KEY]}
    files = sorted(glob.glob(str(data_dir / f"{split}-*.tfrecord.gz")))
    out: dict[str, list] = {n: [] for n in spec}
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4096):
        parsed = tf.io.parse_example(batch, spec)
        for n in spec:
            out[n].append(parsed[n].numpy())
    return {n: np.concatenate(v) if v else np.zeros(0, np.int64) for n, v in out.items()}


def read_records(data_dir: pathlib.Path, split: str) -> dict[str, np.ndarray]:
    """All records of one split as DatasetInfo describes them: [rows] or [rows, max_len] ids, label if labeled."""
    import tensorflow as tf

    from pipeline.dataset_info import read_dataset_info

    info = read_dataset_info(data_dir)
    spec = {f.name: tf.io.FixedLenFeature([f.max_len] if f.max_len > 1 else [], tf.int64) for f in info.fields}
    if info.labeled:
        spec[LABEL_KEY] = tf.io.FixedLenFeature([], tf.int64)
    files = sorted(glob.glob(info.split_pattern(split)))
    out: dict[str, list] = {n: [] for n in spec}
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4096):
        parsed = tf.io.parse_example(batch, spec)
        for n in spec:
            out[n].append(parsed[n].numpy())
    return {n: np.concatenate(v) for n, v in out.items()}


def row_multiset(columns: dict[str, np.ndarray], names: list[str]) -> collections.Counter:
    """Rows as hashable tuples (a multi-valued field's ids as a tuple), counted."""
    def cell(values: np.ndarray, i: int):
        return tuple(values[i].tolist()) if values.ndim > 1 else int(values[i])

    rows = len(columns[names[0]])
    return collections.Counter(tuple(cell(columns[n], i) for n in names) for i in range(rows))


def reference_token(value, kind: str):
    """The token a raw value becomes under docs/DESIGN.md §Preprocessing (pure Python)."""
    if kind == "integer":
        return math.floor(math.log(value) ** 2) if value > 2 else value
    return value


def reference_vocab_sizes(
    rows: list[tuple[dict, int]], splits: np.ndarray, spec: DatasetSpec, min_count: int
) -> dict[str, int]:
    """2 (OOV, missing) + values kept from the training split, per vocabulary field."""
    sizes = {}
    for col in spec.raw_columns:
        if col.kind == "hour":
            continue
        counts = collections.Counter(
            reference_token(feats[col.name][0], col.kind)
            for (feats, _), split in zip(rows, splits, strict=True)
            if split == 0 and feats[col.name]
        )
        threshold = min_count if col.kind == "categorical" else 1
        sizes[col.name] = 2 + sum(1 for c in counts.values() if c >= threshold)
    return sizes


def raw_rows_of(paths: list[pathlib.Path], spec: DatasetSpec) -> list[tuple[dict, int]]:
    return [row for path in paths for row in iter_raw_examples(str(path), spec)]


def transform_with_graph(
    data_dir: pathlib.Path, rows: list[tuple[dict, int]], spec: DatasetSpec
) -> dict[str, np.ndarray]:
    """Applies the saved TFT graph to raw tf.Examples (the serving path)."""
    import tensorflow as tf
    import tensorflow_transform as tft

    output = tft.TFTransformOutput(str(data_dir))
    layer = output.transform_features_layer()
    raw_spec = output.raw_feature_spec()
    out: dict[str, list] = {n: [] for n in [*spec.field_names, LABEL_KEY]}
    for start in range(0, len(rows), 4096):
        examples = [serialize_example(f, label, spec) for f, label in rows[start:start + 4096]]
        transformed = layer(tf.io.parse_example(tf.constant(examples), raw_spec))
        for n in out:
            out[n].append(transformed[n].numpy())
    return {n: np.concatenate(v) for n, v in out.items()}


def as_row_counter(columns: dict[str, np.ndarray], names: list[str]) -> collections.Counter:
    return collections.Counter(zip(*(columns[n].tolist() for n in [*names, LABEL_KEY]), strict=True))
