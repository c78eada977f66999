"""tf.data input from the pipeline's gzipped TFRecords.

Batch first, then one `tf.io.parse_example` per batch (per-example parsing is
~25x slower here); files read in parallel with a deterministic interleave and
shuffled with a per-epoch seed, so epoch k sees the same order whether the run
was interrupted before it or not.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from pipeline.dataset_info import PAD_ID, DatasetInfo, DatasetInfoError, FieldInfo

Features = dict[str, tf.Tensor]


def split_files(info: DatasetInfo, split: str) -> list[str]:
    """Sorted shard paths of `split`; raises if there are none."""
    files = sorted(tf.io.gfile.glob(info.split_pattern(split)))
    if not files:
        raise DatasetInfoError(
            f"no {split} shards match {info.split_pattern(split)} (is {info.data_dir} a finished pipeline run?)"
        )
    return files


def _field_shape(field: FieldInfo) -> list[int]:
    """[] for a single-valued field, [max_len] for a multi-valued one."""
    return [field.max_len] if field.max_len > 1 else []


def feature_spec(info: DatasetInfo) -> dict[str, tf.io.FixedLenFeature]:
    """One int64 scalar (or `max_len` padded ids) per field, plus the label."""
    spec = {f.name: tf.io.FixedLenFeature(_field_shape(f), tf.int64) for f in info.fields}
    if info.labeled:
        spec[info.label_key] = tf.io.FixedLenFeature([], tf.int64)
    return spec


def input_signature(info: DatasetInfo) -> dict[str, tf.TensorSpec]:
    """The model's input: int64 [B] per field, [B, max_len] for a multi-valued one."""
    return {f.name: tf.TensorSpec([None, *_field_shape(f)], tf.int64, f.name) for f in info.fields}


def dummy_features(info: DatasetInfo) -> dict[str, tf.Tensor]:
    """A one-row batch of id 0 per field, to build a model's weights."""
    return {f.name: tf.zeros([1, *_field_shape(f)], tf.int64) for f in info.fields}


def make_dataset(
    info: DatasetInfo,
    split: str,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    shuffle_buffer: int = 100_000,
    in_file_order: bool = False,
    file_shard: tuple[int, Any] | None = None,
) -> tf.data.Dataset:
    """Batches of `split` (any name in `info.splits`).

    Labeled data yields (features {field: int64 [B] or [B, max_len]},
    labels float32 [B]); unlabeled data (`info.labeled` False, e.g. a
    `pipeline transform` output of scoring logs) yields the features alone:
    no made-up label that a metric could be computed on.
    `in_file_order` reads the shards one after the other in name order (each
    in file order) instead of interleaving them, so that batch rows follow
    the stored record order (batch scoring numbers its output rows so).
    `file_shard` (count, index) keeps every count-th file from `index` on
    (after the shuffle of the file list, the same for every reader): a
    parameter-server worker reads and decodes only its own files.
    """
    files = split_files(info, split)
    spec = feature_spec(info)
    label_key = info.label_key

    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=False)
    if file_shard is not None:
        ds = ds.shard(*file_shard)
    ds = ds.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type="GZIP"),
        cycle_length=1 if in_file_order else min(len(files), 4),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
    ds = ds.batch(batch_size)

    def parse(serialized: tf.Tensor) -> tuple[Features, tf.Tensor]:
        parsed = tf.io.parse_example(serialized, spec)
        labels = tf.cast(parsed.pop(label_key), tf.float32)
        return parsed, labels

    def parse_features(serialized: tf.Tensor) -> Features:
        return tf.io.parse_example(serialized, spec)

    ds = ds.map(parse if info.labeled else parse_features, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    # How a multi-worker job splits it is the loop's choice (distribute.auto_shard_options).
    return ds.prefetch(tf.data.AUTOTUNE)


def check_data(info: DatasetInfo) -> None:
    """Fails before training if the shards disagree with stats.json.

    Reads the first record of each split: its features must be exactly the
    listed fields (plus the label if labeled), each with `max_len` ids in
    [0, vocab_size) (multi-valued: padded at the end with PAD_ID, possibly
    all pads).
    """
    expected = set(info.field_names) | ({info.label_key} if info.labeled else set())
    for split in info.splits:
        path = split_files(info, split)[0]
        try:
            record = next(iter(tf.data.TFRecordDataset(path, compression_type="GZIP").take(1)))
        except StopIteration:
            raise DatasetInfoError(f"{path} holds no records") from None
        except tf.errors.OpError as err:
            raise DatasetInfoError(f"{path} is not a readable gzipped TFRecord: {err.message}") from err
        example = tf.train.Example.FromString(record.numpy())
        present = set(example.features.feature)
        if present != expected:
            missing = sorted(expected - present)
            extra = sorted(present - expected)
            raise DatasetInfoError(
                f"{path} does not match {info.data_dir}/stats.json ({len(info.fields)} fields): "
                f"missing {missing[:5]}, unexpected {extra[:5]}"
            )
        for field in info.fields:
            ids = list(example.features.feature[field.name].int64_list.value)
            real = [i for i in ids if i != PAD_ID] if field.max_len > 1 else ids
            padded_at_end = ids[:len(real)] == real  # an all-pad row is valid (an empty sequence)
            if len(ids) != field.max_len or not padded_at_end or not all(0 <= i < field.vocab_size for i in real):
                raise DatasetInfoError(
                    f"{path}: field {field.name} holds {ids[:5]}, not {field.max_len} id(s) in "
                    f"[0, {field.vocab_size}){' padded at the end with -1' if field.max_len > 1 else ''} as "
                    "stats.json says (were the shards written by another pipeline run?)"
                )
