"""DeepFM: Guo et al., "DeepFM: A Factorization-Machine based Neural Network for CTR Prediction", IJCAI 2017."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from trainer.model.supernet import SupernetConfig
from trainer.zoo.base import ZooModel


def fm_second_order(emb: Any) -> Any:
    """[B, F, e] -> [B, 1]: sum_{i<j} <v_i, v_j> = 1/2 sum_k ((sum_i v_ik)^2 - sum_i v_ik^2)."""
    square_of_sum = ops.square(ops.sum(emb, axis=1))
    sum_of_square = ops.sum(ops.square(emb), axis=1)
    return 0.5 * ops.sum(square_of_sum - sum_of_square, axis=1, keepdims=True)


@keras.saving.register_keras_serializable(package="optfusion")
class DeepFM(ZooModel):
    """logit = linear + FM second order + MLP(flattened embeddings), one shared embedding."""

    def __init__(self, config: SupernetConfig, field_names: Sequence[str],
                 vocab_sizes: Sequence[int], **kwargs: Any) -> None:
        kwargs.setdefault("name", "deepfm")
        super().__init__(config, field_names, vocab_sizes, linear=True, **kwargs)
        self.add_mlp_tower()
        self.build_now()

    def call(self, features: dict[str, Any], training: bool = False) -> Any:
        ids = self.ids(features)
        emb = self.field_embeddings(ids)
        deep = self.mlp_logit(ops.reshape(emb, (-1, self.width)), training)
        return self.linear_logit(ids) + fm_second_order(emb) + deep
