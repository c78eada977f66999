"""Fusion of a component's inputs by ADD, PROD, CONCAT and ATT (paper table 1).

All ops of one component work on one stacked [B, k, d] tensor of its k
candidate inputs, each multiplied by its connection mask m_i (STE(alpha) in
search, absent once connections are frozen). A disconnected input leaves
every op unchanged: it adds 0 to ADD, is replaced by 1 in PROD, is a zero
block of CONCAT's input and is masked out of ATT's softmax; its mask still
carries the STE gradient to alpha. With no connected input the fused result
is zero.
"""

from __future__ import annotations

import keras
from keras import ops

from trainer.architecture import OPS

_MASKED_SCORE = -1e9


@keras.saving.register_keras_serializable(package="optfusion")
class Fusion(keras.layers.Layer):
    """Fuses k inputs of width d into one of width d, by a mixture of ops.

    Only the weights of the listed ops are created: CONCAT a [k * d, d]
    matrix (no bias), ATT the paper's a_i = softmax_i(w2 . ReLU(W1 x_i + b1))
    with W1 [d, att_dim], b1, w2 shared across the k inputs.

    Args:
        op_names: names from OPS to compute; with several, call() needs op_weights.
        att_dim: hidden width of the attention scorer (default 64, far below
            d, to keep ATT cheap: the reference's per-input d x d MLPs cost
            most of its 43M parameters).
        kernel_initializer: initializer of CONCAT's W and ATT's W1, w2.
    """

    def __init__(self, op_names: tuple[str, ...] | list[str] = OPS, att_dim: int = 64,
                 kernel_initializer="glorot_uniform", **kwargs) -> None:
        super().__init__(**kwargs)
        op_names = tuple(op_names)
        if not op_names or any(o not in OPS for o in op_names) or len(set(op_names)) != len(op_names):
            raise ValueError(
                f"`op_names` must be distinct names from {OPS}. Received: op_names={op_names}"
            )
        if att_dim < 1:
            raise ValueError(f"`att_dim` must be >= 1. Received: att_dim={att_dim}")
        self.op_names = op_names
        self.att_dim = int(att_dim)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape) -> None:
        k, d = len(input_shape), input_shape[0][-1]
        if "concat" in self.op_names:
            self.concat_kernel = self.add_weight(
                name="concat_kernel", shape=(k * d, d), initializer=self.kernel_initializer
            )
        if "att" in self.op_names:
            self.att_w1 = self.add_weight(
                name="att_w1", shape=(d, self.att_dim), initializer=self.kernel_initializer
            )
            self.att_b1 = self.add_weight(name="att_b1", shape=(self.att_dim,), initializer="zeros")
            self.att_w2 = self.add_weight(
                name="att_w2", shape=(self.att_dim, 1), initializer=self.kernel_initializer
            )

    def call(self, inputs, connected=None, op_weights=None):
        """inputs: k tensors [B, d]; connected: [k] of 0/1 (STE output) or
        None (all on); op_weights: [len(op_names)] mixture weights (needed for
        several ops)."""
        x = ops.stack(inputs, axis=1)  # [B, k, d]
        if connected is not None:
            x = x * ops.reshape(connected, (1, -1, 1))
        results = [getattr(self, f"_{name}")(x, connected) for name in self.op_names]
        if len(results) == 1:
            return results[0]
        if op_weights is None:
            raise ValueError(f"Fusion of several ops {self.op_names} needs op_weights. Received: None")
        return sum(op_weights[i] * r for i, r in enumerate(results))

    def _add(self, x, connected):
        return ops.sum(x, axis=1)

    def _prod(self, x, connected):
        if connected is None:
            return ops.prod(x, axis=1)
        off = ops.reshape(1.0 - connected, (1, -1, 1))
        # Empty product is 1: zero it when nothing is connected (no gradient path).
        any_on = ops.stop_gradient(ops.max(connected))
        return ops.prod(x + off, axis=1) * any_on

    def _concat(self, x, connected):
        k, d = x.shape[1], x.shape[2]
        return ops.matmul(ops.reshape(x, (-1, k * d)), self.concat_kernel)

    def _att(self, x, connected):
        hidden = ops.relu(ops.matmul(x, self.att_w1) + self.att_b1)  # [B, k, att_dim]
        scores = ops.squeeze(ops.matmul(hidden, self.att_w2), axis=-1)  # [B, k]
        if connected is not None:
            scores = ops.where(ops.reshape(connected, (1, -1)) > 0, scores, _MASKED_SCORE)
        weights = ops.softmax(scores, axis=1)
        return ops.sum(x * ops.expand_dims(weights, -1), axis=1)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "op_names": list(self.op_names),
            "att_dim": self.att_dim,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }
