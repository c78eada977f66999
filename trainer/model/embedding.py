"""One embedding table shared by all fields, with per-field id offsets and
pooling of multi-valued fields."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from tensorflow.python.distribute.sharded_variable import ShardedVariable

from pipeline.dataset_info import PAD_ID

POOLINGS = ("mean", "sum")


def stack_ids(features: Mapping[str, Any], field_names: Sequence[str], max_lens: Sequence[int]) -> Any:
    """{field: int [B] (or all [B, 1]), multi-valued: [B, max_len]} -> int [B, sum(max_lens)], fields in order.

    All single-valued (the common case): one stack and one reshape, since at
    batch 1 the serving cost is per graph op, not per value.
    """
    if all(length == 1 for length in max_lens):
        return ops.reshape(ops.stack([features[f] for f in field_names], axis=1), (-1, len(field_names)))
    return ops.concatenate(
        [ops.reshape(features[f], (-1, length)) for f, length in zip(field_names, max_lens, strict=True)], axis=1
    )


def dummy_ids(field_names: Sequence[str], max_lens: Sequence[int]) -> dict[str, Any]:
    """A one-row batch of id 0 per field ([1] or [1, max_len]), to build a model's weights."""
    return {f: ops.zeros((1,) if length == 1 else (1, length), dtype="int64")
            for f, length in zip(field_names, max_lens, strict=True)}


@keras.saving.register_keras_serializable(package="optfusion")
class FieldEmbedding(keras.layers.Layer):
    """Looks up field ids in one [sum(vocab_sizes), emb_dim] table, one vector per field.

    One table (not one per field) keeps the embedding a single variable, so
    the trainer can give it its own learning rate and L2; field f's ids are
    shifted by the sum of the vocabulary sizes before it.

    A multi-valued field (`max_lens[f]` > 1, e.g. a click sequence) comes as
    `max_lens[f]` ids padded at the end with PAD_ID (-1); its vector is the
    mean (or sum, `pooling`) of the embeddings of its non-pad ids, zeros when
    every id is a pad. Pads read no table row, so they get no gradient.

    Args:
        vocab_sizes: ids of field f lie in [0, vocab_sizes[f]).
        emb_dim: embedding width per field.
        std: stddev of the normal initializer (1e-2, the reference code's effective value).
        max_lens: ids per field (default 1 each: every field single-valued).
        pooling: "mean" or "sum" over the ids of a multi-valued field.
    """

    def __init__(self, vocab_sizes: Sequence[int], emb_dim: int, std: float = 1e-2,
                 max_lens: Sequence[int] | None = None, pooling: str = "mean", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        vocab_sizes = [int(v) for v in vocab_sizes]
        if not vocab_sizes or min(vocab_sizes) < 1:
            raise ValueError(
                f"`vocab_sizes` must be a non-empty list of positive sizes. Received: {vocab_sizes}"
            )
        if emb_dim < 1:
            raise ValueError(f"`emb_dim` must be >= 1. Received: emb_dim={emb_dim}")
        max_lens = [1] * len(vocab_sizes) if max_lens is None else [int(m) for m in max_lens]
        if len(max_lens) != len(vocab_sizes) or min(max_lens) < 1:
            raise ValueError(
                f"`max_lens` must hold one length >= 1 per field ({len(vocab_sizes)}). Received: {max_lens}"
            )
        if pooling not in POOLINGS:
            raise ValueError(f"`pooling` must be one of {POOLINGS}. Received: pooling={pooling!r}")
        self.vocab_sizes = vocab_sizes
        self.emb_dim = int(emb_dim)
        self.std = float(std)
        self.max_lens = max_lens
        self.pooling = pooling
        offsets = np.cumsum([0] + vocab_sizes[:-1]).astype("int64")
        self._offsets = offsets
        if any(m > 1 for m in max_lens):
            field_of_column = np.repeat(np.arange(len(vocab_sizes)), max_lens)
            self._column_offsets = offsets[field_of_column]
            # [columns, fields]: 1 where the column holds an id of the field; pooling is one einsum.
            self._pool = np.eye(len(vocab_sizes), dtype="float32")[field_of_column]

    @property
    def multi_valued(self) -> bool:
        return any(m > 1 for m in self.max_lens)

    def build(self, input_shape: Any) -> None:
        self.table = self.add_weight(
            name="table",
            shape=(sum(self.vocab_sizes), self.emb_dim),
            initializer=keras.initializers.RandomNormal(stddev=self.std),
        )

    def call(self, ids: Any) -> Any:
        """ids: int [B, sum(max_lens)] (`stack_ids`) -> float [B, F * emb_dim] (fields flattened in order)."""
        fields = len(self.vocab_sizes)
        if not self.multi_valued:
            rows = ops.cast(ids, "int64") + ops.convert_to_tensor(self._offsets)
            emb = self._gather(rows)
            return ops.reshape(emb, (-1, fields * self.emb_dim))
        ids = ops.cast(ids, "int64")
        real = ops.not_equal(ids, PAD_ID)
        # A pad reads its field's first row, then its vector is multiplied by 0: no gradient reaches the table.
        rows = ops.where(real, ids, ops.zeros_like(ids)) + ops.convert_to_tensor(self._column_offsets)
        mask = ops.cast(real, self.compute_dtype)
        emb = self._gather(rows) * ops.expand_dims(mask, -1)  # [B, T, d]
        pool = ops.convert_to_tensor(self._pool, dtype=self.compute_dtype)
        pooled = ops.einsum("btd,tf->bfd", emb, pool)
        if self.pooling == "mean":
            counts = ops.matmul(mask, pool)  # [B, F] real ids per field
            pooled = pooled / ops.expand_dims(ops.maximum(counts, 1.0), -1)
        return ops.reshape(pooled, (-1, fields * self.emb_dim))

    def _gather(self, rows: Any) -> Any:
        """Table rows. A table partitioned over parameter servers is gathered on
        each shard's ps task (`ops.take` would first copy the whole table to the worker)."""
        value = getattr(self.table, "value", None)
        if isinstance(value, ShardedVariable):
            return tf.nn.embedding_lookup(value, rows)
        return ops.take(self.table, rows, axis=0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "vocab_sizes": self.vocab_sizes, "emb_dim": self.emb_dim,
                "std": self.std, "max_lens": self.max_lens, "pooling": self.pooling}
