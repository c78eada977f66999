"""What every baseline of the zoo shares with the supernet's training loop.

The loop (trainer/loop.py) trains any model that maps {field: int64 [B]
(multi-valued: [B, max_len])} to logits [B, 1] and sorts its weights into
`embedding_variables` (own learning rate and L2), `dense_variables` and
`arch_variables` (empty: nothing is searched). The baselines are built from the supernet's own parts
(`FieldEmbedding`, `CrossNet`, `CIN`, `DeepBlock`) and sized by the same
`SupernetConfig` (emb_dim, n, emb_std, deep_batchnorm, dropout), so that a
comparison with OptFusion changes the wiring, not the capacity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from trainer.model.components import DeepBlock
from trainer.model.embedding import FieldEmbedding, dummy_ids, stack_ids
from trainer.model.supernet import SupernetConfig


class ZooModel(keras.Model):
    """Base of the baselines: field embeddings, an optional linear term, variable groups.

    Args:
        config: sizes shared with the supernet (emb_dim, n, emb_std, deep_batchnorm, dropout).
        field_names: model order of the int64 feature keys.
        vocab_sizes: ids of field f lie in [0, vocab_sizes[f]).
        linear: also build a first-order term (one weight per id, plus a bias).
        embedding: build the emb_dim-wide field embedding (False for LR).
        max_lens: ids per field (default 1 each); multi-valued fields are
            pooled by `config.pooling` in the embedding and the linear term.
    """

    def __init__(
        self,
        config: SupernetConfig,
        field_names: Sequence[str],
        vocab_sizes: Sequence[int],
        linear: bool = False,
        embedding: bool = True,
        max_lens: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if len(field_names) != len(vocab_sizes) or not field_names:
            raise ValueError(
                "`field_names` and `vocab_sizes` must be non-empty and of equal length. "
                f"Received: {len(field_names)} names, {len(vocab_sizes)} sizes"
            )
        self.config = config
        self.field_names = list(field_names)
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.max_lens = [1] * len(self.field_names) if max_lens is None else [int(m) for m in max_lens]
        self.num_fields = len(self.field_names)
        self.width = self.num_fields * config.emb_dim
        self.embedding = self._table(config.emb_dim, "embedding") if embedding else None
        self.linear = self._table(1, "linear") if linear else None
        self.linear_bias = self.add_weight(name="linear_bias", shape=(1,), initializer="zeros") if linear else None

    def _table(self, width: int, name: str) -> FieldEmbedding:
        c = self.config
        return FieldEmbedding(self.vocab_sizes, width, std=c.emb_std, max_lens=self.max_lens, pooling=c.pooling,
                              name=name)

    def ids(self, features: dict[str, Any]) -> Any:
        """{field: [B] or [B, max_len]} -> int [B, sum(max_lens)] in model order."""
        return stack_ids(features, self.field_names, self.max_lens)

    def flat_embeddings(self, ids: Any) -> Any:
        """`ids` -> float [B, F * emb_dim], fields in order (multi-valued ones pooled)."""
        assert self.embedding is not None
        return self.embedding(ids)

    def field_embeddings(self, ids: Any) -> Any:
        """`ids` -> float [B, F, emb_dim]."""
        return ops.reshape(self.flat_embeddings(ids), (-1, self.num_fields, self.config.emb_dim))

    def linear_logit(self, ids: Any) -> Any:
        """First-order term sum_f w[id_f] + b -> [B, 1] (a multi-valued field's w pooled)."""
        assert self.linear is not None and self.linear_bias is not None
        return ops.sum(self.linear(ids), axis=1, keepdims=True) + self.linear_bias

    def mlp(self, prefix: str) -> list[DeepBlock]:
        """n deep layers of width d = F * emb_dim whatever their input's width, the supernet's D_i
        blocks chained (the same hidden units in every model, as FuxiCTR's `hidden_units`)."""
        c = self.config
        return [DeepBlock(c.deep_batchnorm, c.dropout, units=self.width, name=f"{prefix}{i + 1}")
                for i in range(c.n)]

    def add_mlp_tower(self) -> None:
        """The deep tower of DeepFM, xDeepFM and IPNN: `mlp("D")` then Dense(1) (`mlp_logit`)."""
        self.deep = self.mlp("D")
        self.head = keras.layers.Dense(1, name="head")

    def mlp_logit(self, x: Any, training: bool) -> Any:
        """[B, width] -> [B, 1] through the tower of `add_mlp_tower`."""
        for block in self.deep:
            x = block(x, training=training)
        return self.head(x)

    def build_now(self) -> None:
        """Builds every weight with a one-row dummy batch, so the variable lists are complete."""
        self(dummy_ids(self.field_names, self.max_lens), training=False)

    @property
    def embedding_variables(self) -> list[keras.Variable]:
        """Embedding tables (own learning rate and L2)."""
        return [layer.table for layer in (self.embedding, self.linear) if layer is not None]

    @property
    def dense_variables(self) -> list[keras.Variable]:
        """Every other trainable weight."""
        special = {id(v) for v in self.embedding_variables}
        return [v for v in self.trainable_variables if id(v) not in special]

    @property
    def arch_variables(self) -> list[keras.Variable]:
        """Nothing is searched in a baseline."""
        return []

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": self.config.to_dict(),
            "field_names": self.field_names,
            "vocab_sizes": self.vocab_sizes,
            "max_lens": self.max_lens,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ZooModel:
        config = dict(config)
        return cls(config=SupernetConfig.from_dict(config.pop("config")), **config)
