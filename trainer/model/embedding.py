"""One embedding table shared by all fields, with per-field id offsets."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="optfusion")
class FieldEmbedding(keras.layers.Layer):
    """Looks up [B, F] field ids in one [sum(vocab_sizes), emb_dim] table.

    One table (not one per field) keeps the embedding a single variable, so
    the trainer can give it its own learning rate and L2; field f's ids are
    shifted by the sum of the vocabulary sizes before it.

    Args:
        vocab_sizes: ids of field f lie in [0, vocab_sizes[f]).
        emb_dim: embedding width per field.
        std: stddev of the normal initializer (1e-2, the reference code's effective value).
    """

    def __init__(self, vocab_sizes: Sequence[int], emb_dim: int, std: float = 1e-2,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        vocab_sizes = [int(v) for v in vocab_sizes]
        if not vocab_sizes or min(vocab_sizes) < 1:
            raise ValueError(
                f"`vocab_sizes` must be a non-empty list of positive sizes. Received: {vocab_sizes}"
            )
        if emb_dim < 1:
            raise ValueError(f"`emb_dim` must be >= 1. Received: emb_dim={emb_dim}")
        self.vocab_sizes = vocab_sizes
        self.emb_dim = int(emb_dim)
        self.std = float(std)
        self._offsets = np.cumsum([0] + vocab_sizes[:-1]).astype("int64")

    def build(self, input_shape) -> None:
        self.table = self.add_weight(
            name="table",
            shape=(sum(self.vocab_sizes), self.emb_dim),
            initializer=keras.initializers.RandomNormal(stddev=self.std),
        )

    def call(self, ids):
        """ids: int [B, F] -> float [B, F * emb_dim] (fields flattened in order)."""
        rows = ops.cast(ids, "int64") + ops.convert_to_tensor(self._offsets)
        emb = ops.take(self.table, rows, axis=0)
        return ops.reshape(emb, (-1, len(self.vocab_sizes) * self.emb_dim))

    def get_config(self) -> dict:
        return {**super().get_config(), "vocab_sizes": self.vocab_sizes, "emb_dim": self.emb_dim,
                "std": self.std}
