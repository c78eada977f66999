"""Fusion of a component's inputs by ADD, PROD, CONCAT and ATT (paper table 1).

All ops of one component work on its k candidate inputs, each multiplied by
its connection mask m_i (STE(alpha) in search, absent once connections are
frozen), and on their concatenation [B, k * d] (CONCAT's matmul, ATT's scores). A disconnected input leaves
every op unchanged: it adds 0 to ADD, is replaced by 1 in PROD, is a zero
block of CONCAT's input and is masked out of ATT's softmax; its mask still
carries the STE gradient to alpha. With no connected input the fused result
is zero.

Scale-preserving PROD (`prod_norm`, a documented deviation from the paper and
the reference, docs/DESIGN.md section 3): the raw Hadamard product of k small
inputs (embeddings of std 1e-2, ReLU outputs) is ~1e-7 of one input, so PROD
acts as a zero op in the search mixture and a Hard PROD over many inputs
trains to a constant. With `prod_norm`, per example, the product keeps its
direction and takes the geometric mean of its connected inputs' RMS as its
own RMS:
    PROD(x_1..x_k) = g * p / rms(p),  p = prod_i x_i / r_i,
    r_i = sqrt(mean(x_i^2) + eps),  g = (prod_i r_i)^(1/k),
the scales (r_i, rms(p)) held constant in the backward pass: per-example
factors, not learned ones. Dividing each input first keeps p in float range;
dividing p by its own RMS keeps the scale when inputs are correlated (E, S0
and S1 are nearly equal at init: the product of k normalised copies of one
Gaussian has an RMS in the thousands for k = 8). An input that is all zeros
for an example (a dead ReLU, a component with no input) counts as 1, like a
disconnected one, instead of zeroing the product for good.
"""

from __future__ import annotations

import keras
from keras import ops

from trainer.architecture import OPS

_MASKED_SCORE = -1e9
_PROD_EPS = 1e-8  # soft floor of squared scales: a near-zero input is not blown up (gain <= 1e4)


@keras.saving.register_keras_serializable(package="optfusion")
class Fusion(keras.layers.Layer):
    """Fuses k inputs of width d into one of width d, by a mixture of ops.

    Only the weights of the listed ops are created: CONCAT a [k * d, d]
    matrix (no bias), ATT the paper's a_i = softmax_i(w2 . ReLU(W1 x_i + b1))
    with W1 [d, att_dim], b1, w2 shared across the k inputs.

    Args:
        op_names: names from OPS to compute; with several, call() needs op_weights.
        att_dim: hidden width of the attention scorer; None = d, the paper's
            width (W1 is d x d, shared across inputs, unlike the reference's
            per-input MLPs that cost most of its 43M parameters).
        prod_norm: scale-preserving PROD (see the module docstring); False is
            the paper's raw product.
        kernel_initializer: initializer of CONCAT's W and ATT's W1, w2.
        concat_blocks: CONCAT's W held as k [d, d] row blocks W_i (weights
            `concat_kernel_<i>`) and computed as sum_i x_i W_i instead of one
            [B, k * d] x [k * d, d] matmul; same result to float rounding.
            The serving form (trainer/model/serving_form.py, which fills the blocks):
            at batch 1 the matmul only streams W, and k matmuls of [d, d]
            blocks took 0.2 ms less than one over the 2.3 MB W of the CPU
            preset (2-core VM, oneDNN); training batches run as one matmul.
    """

    def __init__(self, op_names: tuple[str, ...] | list[str] = OPS, att_dim: int | None = None,
                 prod_norm: bool = False, kernel_initializer="glorot_uniform",
                 concat_blocks: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        op_names = tuple(op_names)
        if not op_names or any(o not in OPS for o in op_names) or len(set(op_names)) != len(op_names):
            raise ValueError(
                f"`op_names` must be distinct names from {OPS}. Received: op_names={op_names}"
            )
        if att_dim is not None and att_dim < 1:
            raise ValueError(f"`att_dim` must be >= 1 or None (= d). Received: att_dim={att_dim}")
        self.op_names = op_names
        self.att_dim = None if att_dim is None else int(att_dim)
        self.prod_norm = bool(prod_norm)
        self.concat_blocks = bool(concat_blocks)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape) -> None:
        k, d = len(input_shape), input_shape[0][-1]
        if "concat" in self.op_names and self.concat_blocks:
            self.concat_kernels = [
                self.add_weight(name=f"concat_kernel_{i}", shape=(d, d), initializer=self.kernel_initializer)
                for i in range(k)
            ]
        elif "concat" in self.op_names:
            self.concat_kernel = self.add_weight(
                name="concat_kernel", shape=(k * d, d), initializer=self.kernel_initializer
            )
        if "att" in self.op_names and k > 1:  # one input always gets weight 1
            hidden = d if self.att_dim is None else self.att_dim
            self.att_w1 = self.add_weight(
                name="att_w1", shape=(d, hidden), initializer=self.kernel_initializer
            )
            self.att_b1 = self.add_weight(name="att_b1", shape=(hidden,), initializer="zeros")
            self.att_w2 = self.add_weight(
                name="att_w2", shape=(hidden, 1), initializer=self.kernel_initializer
            )

    def call(self, inputs, connected=None, op_weights=None):
        """inputs: k tensors [B, d]; connected: [k] of 0/1 (STE output) or
        None (all on); op_weights: [len(op_names)] mixture weights (needed for
        several ops)."""
        k = len(inputs)
        on = [None] * k if connected is None else [connected[i] for i in range(k)]
        masked = list(inputs) if connected is None else [x * m for x, m in zip(inputs, on, strict=True)]
        flat = ops.concatenate(masked, axis=-1) if k > 1 else masked[0]  # [B, k * d]
        results = [getattr(self, f"_{name}")(masked, flat, on) for name in self.op_names]
        if len(results) == 1:
            return results[0]
        if op_weights is None:
            raise ValueError(f"Fusion of several ops {self.op_names} needs op_weights. Received: None")
        return sum(op_weights[i] * r for i, r in enumerate(results))

    # Each op gets the masked inputs, their concatenation and the per-input
    # switches. Loops over inputs instead of reductions over a stacked
    # [B, k, d] tensor: in an interleaved A/B of the n = 3, d = 624 search
    # step this took ~1.9x fewer CPU-seconds with XLA off (reduce_prod's
    # gradient is costly) and was no slower with XLA on. Nor does a stacked form
    # serve faster: used at inference only, it cut the Soft serving benchmark
    # model from 1,523 to 654 graph ops, yet was 3-5% slower at batch 1 in an
    # interleaved A/B (eager and session loader): the CONCAT matmuls, not the
    # op count, dominate there.

    def _add(self, masked, flat, on):
        return sum(masked[1:], masked[0])

    def _prod(self, masked, flat, on):
        if self.prod_norm:
            return self._prod_scaled(masked, on)
        result = None
        for x, m in zip(masked, on, strict=True):
            term = x if m is None else x + (1.0 - m)  # a disconnected input counts as 1
            result = term if result is None else result * term
        if on[0] is None:
            return result
        # The empty product is 1: zero it when nothing is connected (no gradient path).
        return result * ops.stop_gradient(ops.max(ops.stack(on)))

    def _prod_scaled(self, masked, on):
        """Scale-preserving PROD (module docstring)."""
        result, log_g, count, any_on = None, 0.0, 0.0, 0.0
        for x, m in zip(masked, on, strict=True):
            square = ops.stop_gradient(ops.mean(ops.square(x), axis=-1, keepdims=True))  # [B, 1]
            live = ops.cast(square > 0, x.dtype)  # a disconnected input is all zeros too
            log_r = 0.5 * ops.log(square + _PROD_EPS)
            term = x * ops.exp(-log_r) + (1.0 - live)
            if m is not None:  # keeps the STE path to alpha: x is already x * m
                term = term * m + (1.0 - m)
                live = live * m
            result = term if result is None else result * term
            log_g, count, any_on = log_g + live * log_r, count + live, ops.maximum(any_on, live)
        rms = ops.sqrt(ops.stop_gradient(ops.mean(ops.square(result), axis=-1, keepdims=True)) + _PROD_EPS)
        # g / rms(p): zero if no input is live
        return result * (ops.exp(log_g / ops.maximum(count, 1.0)) / rms * ops.stop_gradient(any_on))

    def _concat(self, masked, flat, on):
        if not self.concat_blocks:
            return ops.matmul(flat, self.concat_kernel)
        products = [ops.matmul(x, w) for x, w in zip(masked, self.concat_kernels, strict=True)]
        return sum(products[1:], products[0])

    def _att(self, masked, flat, on):
        k, d = len(masked), masked[0].shape[-1]
        if k == 1:
            return masked[0]
        hidden = ops.relu(ops.matmul(ops.reshape(flat, (-1, d)), self.att_w1) + self.att_b1)
        scores = ops.reshape(ops.matmul(hidden, self.att_w2), (-1, k))  # [B, k]
        if on[0] is not None:
            scores = ops.where(ops.reshape(ops.stack(on), (1, k)) > 0, scores, _MASKED_SCORE)
        weights = ops.softmax(scores, axis=1)
        return sum(weights[:, i : i + 1] * x for i, x in enumerate(masked))

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "op_names": list(self.op_names),
            "att_dim": self.att_dim,
            "prod_norm": self.prod_norm,
            "concat_blocks": self.concat_blocks,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }
