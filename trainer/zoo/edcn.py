"""EDCN: Chen et al., "Enhancing Explicit and Implicit Feature Interactions via Information
Sharing for Parallel Deep CTR Models", CIKM 2021."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from trainer.model.components import CrossNet, DeepBlock
from trainer.model.fusion import Fusion
from trainer.model.supernet import SupernetConfig
from trainer.zoo.base import ZooModel


@keras.saving.register_keras_serializable(package="optfusion")
class Regulation(keras.layers.Layer):
    """Field-wise gating: out = flatten(F * softmax(g / tau)_f * x_f), g initialised to ones.

    The paper's gate is softmax(g / tau) alone: with F fields it shrinks every
    field by 1/F at the start (1/39 on Criteo), and with embeddings of std
    1e-2, the Hadamard bridge, and Adam's epsilon, the model trained to a
    constant predictor on the Criteo sample. Scaled by F, the gate starts as
    the identity and still learns which fields each tower reads.

    Args:
        num_fields: F; the input is [B, F * e].
        tau: softmax temperature (the paper's default 1).
    """

    def __init__(self, num_fields: int, tau: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_fields < 1 or tau <= 0:
            raise ValueError(f"need num_fields >= 1 and tau > 0. Received: {num_fields}, {tau}")
        self.num_fields = int(num_fields)
        self.tau = float(tau)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.gate = self.add_weight(name="gate", shape=(self.num_fields,), initializer="ones")

    def call(self, x: Any) -> Any:
        f = self.num_fields
        weights = f * ops.softmax(self.gate / self.tau)
        return ops.reshape(ops.reshape(x, (-1, f, x.shape[-1] // f)) * weights[None, :, None],
                           (-1, x.shape[-1]))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_fields": self.num_fields, "tau": self.tau}


@keras.saving.register_keras_serializable(package="optfusion")
class EDCN(ZooModel):
    """Parallel cross and deep towers of n layers that share information after each layer.

    Layer i: a regulation gate per tower picks its fields from the previous
    bridge output (from the embeddings for i = 1); the cross layer (x0 = the
    cross tower's regulated embeddings) and the deep layer run side by side;
    the bridge fuses their outputs by Hadamard product (the paper's default).
    The logit reads [cross_n || deep_n || bridge_n].

    The bridge keeps its scale (`model.bridge_norm`, default true; false is
    the paper's raw product): per example it is the Hadamard product rescaled to
    the geometric mean of its two inputs' RMS, the supernet's scale-preserving
    PROD (trainer/model/fusion.py). The raw product of two inputs of RMS ~1e-2
    has RMS ~1e-4 and feeds the next layer, so with embeddings of std 1e-2 the
    bridge RMS fell 7.9e-5 -> 4.5e-9 -> 1.9e-17 over three layers at init
    (issue 19) and EDCN trained on almost nothing but its last cross and deep
    outputs. FuxiCTR keeps the scale with batch norm in the regulation module
    instead; the per-example rescaling needs no running statistics, so a
    model behaves the same in training and serving from the first step.
    """

    def __init__(self, config: SupernetConfig, field_names: Sequence[str],
                 vocab_sizes: Sequence[int], **kwargs: Any) -> None:
        kwargs.setdefault("name", "edcn")
        super().__init__(config, field_names, vocab_sizes, **kwargs)
        f, c = self.num_fields, config
        self.cross_gates = [Regulation(f, name=f"cross_gate{i + 1}") for i in range(c.n)]
        self.deep_gates = [Regulation(f, name=f"deep_gate{i + 1}") for i in range(c.n)]
        self.cross = [CrossNet(name=f"S{i + 1}") for i in range(c.n)]
        self.deep = [DeepBlock(c.deep_batchnorm, c.dropout, name=f"D{i + 1}") for i in range(c.n)]
        self.bridges = [Fusion(("prod",), prod_norm=c.bridge_norm, name=f"bridge{i + 1}") for i in range(c.n)]
        self.head = keras.layers.Dense(1, name="head")
        self.build_now()

    def layers_out(self, features: dict[str, Any], training: bool = False) -> list[tuple[Any, Any, Any]]:
        """(cross_i, deep_i, bridge_i) of every layer i = 1..n, each [B, F * emb_dim]."""
        shared = self.flat_embeddings(self.ids(features))
        x0, outputs = None, []
        for cross_gate, deep_gate, cross, deep, bridge in zip(
            self.cross_gates, self.deep_gates, self.cross, self.deep, self.bridges, strict=True
        ):
            x_cross, x_deep = cross_gate(shared), deep_gate(shared)
            if x0 is None:
                x0 = x_cross
            x_cross = cross(x0, x_cross)
            x_deep = deep(x_deep, training=training)
            shared = bridge([x_cross, x_deep])
            outputs.append((x_cross, x_deep, shared))
        return outputs

    def call(self, features: dict[str, Any], training: bool = False) -> Any:
        return self.head(ops.concatenate(self.layers_out(features, training)[-1], axis=1))
