"""Straight-through estimator for the fusion connections (paper eq. 10-11)."""

from __future__ import annotations

import keras
import tensorflow as tf


@tf.custom_gradient
def _ste(alpha: tf.Tensor) -> tuple[tf.Tensor, object]:
    def grad(upstream: tf.Tensor) -> tf.Tensor:
        return upstream

    return tf.cast(alpha > 0, alpha.dtype), grad


def ste(alpha: keras.Variable | tf.Tensor) -> tf.Tensor:
    """1[alpha > 0] forward, identity gradient backward.

    The variable is converted to a tensor first: a Keras 3 variable passed
    straight into a `tf.custom_gradient` function makes TF look for a
    `variables` keyword on the gradient function and fail.
    """
    return _ste(tf.convert_to_tensor(alpha))
