"""Logistic regression on the field ids: the floor every fusion model must clear."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from trainer.model.supernet import SupernetConfig
from trainer.zoo.base import ZooModel


@keras.saving.register_keras_serializable(package="optfusion")
class LR(ZooModel):
    """logit = b + sum_f w[id_f]: one weight per id of every field, no embedding."""

    def __init__(self, config: SupernetConfig, field_names: Sequence[str],
                 vocab_sizes: Sequence[int], **kwargs: Any) -> None:
        kwargs.setdefault("name", "lr")
        super().__init__(config, field_names, vocab_sizes, linear=True, embedding=False, **kwargs)
        self.build_now()

    def call(self, features: dict[str, Any], training: bool = False) -> Any:
        return self.linear_logit(self.ids(features))
