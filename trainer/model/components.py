"""Shallow (cross) and deep components of the supernet.

Every component maps to the same width d = fields x emb_dim, so any component
can feed any higher one. Shallow components take (x0, x): x0 is E's output,
x the fused input; the deep component takes x only. `make_shallow` is the seam
the ablation "shallow component" swaps (paper table 6).
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="optfusion")
class CrossNet(keras.layers.Layer):
    """DCN cross layer: x0 * (w . x) + b + x (one weight vector, rank one).

    Args:
        kernel_initializer: initializer of w.
        bias_initializer: initializer of b.
    """

    def __init__(self, kernel_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, x0_shape, x_shape=None) -> None:
        d = x0_shape[-1]
        self.kernel = self.add_weight(name="kernel", shape=(d, 1), initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(d,), initializer=self.bias_initializer)

    def call(self, x0, x):
        return x0 * ops.matmul(x, self.kernel) + self.bias + x

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }


@keras.saving.register_keras_serializable(package="optfusion")
class CrossNetV2(CrossNet):
    """DCN-v2 cross layer: x0 * (W x + b) + x (full d x d matrix)."""

    def build(self, x0_shape, x_shape=None) -> None:
        d = x0_shape[-1]
        self.kernel = self.add_weight(name="kernel", shape=(d, d), initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(d,), initializer=self.bias_initializer)

    def call(self, x0, x):
        return x0 * (ops.matmul(x, self.kernel) + self.bias) + x


@keras.saving.register_keras_serializable(package="optfusion")
class CIN(keras.layers.Layer):
    """xDeepFM compressed interaction layer with as many maps as fields.

    out[f] = sum_{h,m} W[h, m, f] (x[h] * x0[m]) + b[f] over field vectors of
    width emb_dim, so the output keeps the width d = fields x emb_dim. It
    materialises a [B, F, F, emb_dim] tensor: mind memory at large batches.

    Args:
        num_fields: F; the input width must be a multiple of it.
    """

    def __init__(self, num_fields: int, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if num_fields < 1:
            raise ValueError(f"`num_fields` must be >= 1. Received: num_fields={num_fields}")
        self.num_fields = int(num_fields)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, x0_shape, x_shape=None) -> None:
        f = self.num_fields
        if x0_shape[-1] % f:
            raise ValueError(
                f"CIN input width must be a multiple of num_fields={f}. Received: {x0_shape}"
            )
        self.emb_dim = x0_shape[-1] // f
        self.kernel = self.add_weight(name="kernel", shape=(f * f, f), initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(f, 1), initializer="zeros")

    def call(self, x0, x):
        f, e = self.num_fields, self.emb_dim
        x0 = ops.reshape(x0, (-1, 1, f, e))
        x = ops.reshape(x, (-1, f, 1, e))
        z = ops.reshape(ops.transpose(x * x0, (0, 3, 1, 2)), (-1, e, f * f))
        out = ops.transpose(ops.matmul(z, self.kernel), (0, 2, 1)) + self.bias
        return ops.reshape(out, (-1, f * e))

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_fields": self.num_fields,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }


@keras.saving.register_keras_serializable(package="optfusion")
class DeepBlock(keras.layers.Layer):
    """Dense(units) + [BatchNorm] + ReLU + [Dropout].

    Args:
        batchnorm: add BatchNormalization before the ReLU.
        dropout: dropout rate after the ReLU, in [0, 1).
        units: output width; None = the input width (the supernet's d). A
            baseline whose MLP reads a wider input (IPNN's products) sets d,
            so that its hidden layers are as wide as every other model's.
    """

    def __init__(self, batchnorm: bool = False, dropout: float = 0.0, units: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout}")
        if units is not None and units < 1:
            raise ValueError(f"`units` must be >= 1 or None (= input width). Received: units={units}")
        self.batchnorm = bool(batchnorm)
        self.dropout = float(dropout)
        self.units = None if units is None else int(units)

    def build(self, input_shape) -> None:
        units = input_shape[-1] if self.units is None else self.units
        self.dense = keras.layers.Dense(units, name="dense")
        self.dense.build(input_shape)
        self.norm = keras.layers.BatchNormalization(name="norm") if self.batchnorm else None
        if self.norm is not None:
            self.norm.build((*input_shape[:-1], units))
        self.drop = keras.layers.Dropout(self.dropout) if self.dropout else None

    def call(self, x, training=False):
        x = self.dense(x)
        if self.norm is not None:
            x = self.norm(x, training=training)
        x = ops.relu(x)
        if self.drop is not None:
            x = self.drop(x, training=training)
        return x

    def get_config(self) -> dict:
        return {**super().get_config(), "batchnorm": self.batchnorm, "dropout": self.dropout, "units": self.units}


SHALLOW = ("crossnet", "crossnetv2", "cin")


def make_shallow(kind: str, num_fields: int, name: str) -> keras.layers.Layer:
    """Builds the shallow component named by SupernetConfig.shallow."""
    if kind == "crossnet":
        return CrossNet(name=name)
    if kind == "crossnetv2":
        return CrossNetV2(name=name)
    if kind == "cin":
        return CIN(num_fields, name=name)
    raise ValueError(f"Unknown shallow component; expected one of {SHALLOW}. Received: {kind!r}")
