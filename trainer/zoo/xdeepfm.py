"""xDeepFM: Lian et al., "xDeepFM: Combining Explicit and Implicit Feature Interactions for
Recommender Systems", KDD 2018."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from trainer.model.supernet import SupernetConfig
from trainer.zoo.base import ZooModel


@keras.saving.register_keras_serializable(package="optfusion")
class CompressedInteraction(keras.layers.Layer):
    """The paper's CIN: X^k_h = sum_{i,j} W^{k,h}_{ij} (X^{k-1}_i o X^0_j), sum-pooled per map.

    Unlike the supernet's one-layer `CIN` component (which keeps width d so it
    can be fused), this is xDeepFM's stack: `layer_maps[k]` feature maps in
    layer k, each pooled over the embedding axis, all layers concatenated.

    Args:
        layer_maps: feature maps per layer, each >= 1.
    """

    def __init__(self, layer_maps: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not layer_maps or min(layer_maps) < 1:
            raise ValueError(f"`layer_maps` must be positive sizes. Received: {list(layer_maps)}")
        self.layer_maps = [int(h) for h in layer_maps]

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        fields = input_shape[1]
        if fields is None:
            raise ValueError(f"CIN needs a known number of fields. Received: input_shape={input_shape}")
        previous = fields
        self.kernels = []
        for k, maps in enumerate(self.layer_maps):
            self.kernels.append(self.add_weight(
                name=f"kernel_{k}", shape=(previous * fields, maps), initializer="glorot_uniform"))
            previous = maps

    def call(self, x0: Any) -> Any:
        """x0: [B, F, e] -> [B, sum(layer_maps)]."""
        fields, dim = x0.shape[1], x0.shape[2]
        x, pooled = x0, []
        for kernel in self.kernels:
            z = ops.reshape(x[:, :, None, :] * x0[:, None, :, :], (-1, x.shape[1] * fields, dim))
            x = ops.einsum("bne,nh->bhe", z, kernel)
            pooled.append(ops.sum(x, axis=2))
        return ops.concatenate(pooled, axis=1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "layer_maps": self.layer_maps}


@keras.saving.register_keras_serializable(package="optfusion")
class XDeepFM(ZooModel):
    """logit = linear + CIN (n layers of F maps) + MLP(flattened embeddings)."""

    def __init__(self, config: SupernetConfig, field_names: Sequence[str],
                 vocab_sizes: Sequence[int], **kwargs: Any) -> None:
        kwargs.setdefault("name", "xdeepfm")
        super().__init__(config, field_names, vocab_sizes, linear=True, **kwargs)
        self.cin = CompressedInteraction([len(self.field_names)] * config.n, name="cin")
        self.cin_head = keras.layers.Dense(1, use_bias=False, name="cin_head")
        self.add_mlp_tower()
        self.build_now()

    def call(self, features: dict[str, Any], training: bool = False) -> Any:
        ids = self.ids(features)
        emb = self.field_embeddings(ids)
        deep = self.mlp_logit(ops.reshape(emb, (-1, self.width)), training)
        return self.linear_logit(ids) + self.cin_head(self.cin(emb)) + deep
