"""The block set of trainer/nas/space.py as Keras layers, a fixed design (`NasNet`) and NASRec's supernet.

Both models are `ZooModel`s: the same field embedding (one table, its own lr
and L2) and the same variable groups as every baseline, so the training loop,
checkpoints, export and serving take them unchanged. Every dense op ends in
width `dense_dim` and every sparse op keeps [B, F, e], so any node can feed
any later block and the supernet can mix a block's ops with one weight each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from trainer.model.components import CIN, CrossNet
from trainer.model.supernet import SupernetConfig
from trainer.nas.space import DENSE_OPS, READS, SPARSE_OPS, NasArchitecture
from trainer.zoo.base import ZooModel


@keras.saving.register_keras_serializable(package="optfusion")
class NodeOp(keras.layers.Layer):
    """One op of the block set: `call(dense [B, W] or None, sparse [B, F, e], x0 [B, F, e])`.

    Dense ops -> [B, dense_dim]: mlp (Dense + ReLU), gating (NASRec's sigmoid
    gating, Dense * sigmoid(Dense)), crossnet (a DCN cross layer on its own input,
    projected), dot (pairwise dot products of the fields and the projected dense
    input, projected), fm (FM's second-order vector, projected). Sparse ops ->
    [B, F, e]: efc (a linear map over the field axis, NASRec's linear-3d), attention
    (one self-attention head over the fields, residual), cin (the supernet's CIN
    layer with x0 = the stem), identity.

    Args:
        op: one of DENSE_OPS or SPARSE_OPS.
        dense_dim: output width of the dense ops.
        num_fields: F.
        emb_dim: e.
    """

    def __init__(self, op: str, dense_dim: int, num_fields: int, emb_dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if op not in DENSE_OPS + SPARSE_OPS:
            raise ValueError(f"Unknown op; expected one of {DENSE_OPS + SPARSE_OPS}. Received: {op!r}")
        self.op, self.dense_dim, self.num_fields, self.emb_dim = op, int(dense_dim), int(num_fields), int(emb_dim)
        f, e = self.num_fields, self.emb_dim
        if op in ("mlp", "gating"):
            self.dense = keras.layers.Dense(dense_dim, name="dense")
        if op == "gating":
            self.gate = keras.layers.Dense(dense_dim, name="gate")
        if op in ("crossnet", "dot", "fm"):
            self.project = keras.layers.Dense(dense_dim, name="project")
        if op == "crossnet":
            self.cross = CrossNet(name="cross")
        if op == "dot":
            self.to_field = keras.layers.Dense(e, name="to_field")
            rows, cols = np.triu_indices(f + 1, k=1)
            self.pairs = (rows * (f + 1) + cols).astype("int32")
        if op == "cin":
            self.cin = CIN(f, name="cin")
        if op == "efc":
            self.kernel = self.add_weight(name="kernel", shape=(f, f), initializer="glorot_uniform")
            self.bias = self.add_weight(name="bias", shape=(f, 1), initializer="zeros")
        if op == "attention":
            self.qkv = [self.add_weight(name=n, shape=(e, e), initializer="glorot_uniform") for n in ("q", "k", "v")]

    def call(self, dense: Any, sparse: Any, x0: Any) -> Any:
        op, f, e = self.op, self.num_fields, self.emb_dim
        if op == "mlp":
            return ops.relu(self.dense(dense))
        if op == "gating":
            return self.dense(dense) * ops.sigmoid(self.gate(dense))
        if op == "crossnet":
            return self.project(self.cross(dense, dense))
        if op == "dot":
            z = ops.concatenate([sparse, ops.expand_dims(self.to_field(dense), 1)], axis=1)
            gram = ops.reshape(ops.einsum("bfe,bge->bfg", z, z), (-1, (f + 1) * (f + 1)))
            return self.project(ops.take(gram, self.pairs, axis=1))
        if op == "fm":
            return self.project(0.5 * (ops.square(ops.sum(sparse, axis=1)) - ops.sum(ops.square(sparse), axis=1)))
        if op == "efc":
            return ops.einsum("bfe,fg->bge", sparse, self.kernel) + self.bias
        if op == "attention":
            q, k, v = (ops.einsum("bfe,ed->bfd", sparse, w) for w in self.qkv)
            scores = ops.softmax(ops.einsum("bfd,bgd->bfg", q, k) / float(np.sqrt(e)), axis=-1)
            return ops.einsum("bfg,bgd->bfd", scores, v) + sparse
        if op == "cin":
            return ops.reshape(self.cin(ops.reshape(x0, (-1, f * e)), ops.reshape(sparse, (-1, f * e))), (-1, f, e))
        return sparse  # identity

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "op": self.op, "dense_dim": self.dense_dim, "num_fields": self.num_fields,
                "emb_dim": self.emb_dim}


def _sum(tensors: list[Any]) -> Any:
    total = tensors[0]
    for t in tensors[1:]:
        total = total + t
    return total


class _BlockModel(ZooModel):
    """What both models share: the stem (embeddings as [B, F, e] and [B, F * e]) and the head."""

    def __init__(self, config: SupernetConfig, field_names: Sequence[str], vocab_sizes: Sequence[int],
                 dense_dim: int, max_lens: Sequence[int] | None = None, **kwargs: Any) -> None:
        super().__init__(config, field_names, vocab_sizes, max_lens=max_lens, **kwargs)
        if dense_dim < 1:
            raise ValueError(f"`dense_dim` must be >= 1. Received: {dense_dim}")
        self.dense_dim = int(dense_dim)
        self.head = keras.layers.Dense(1, name="head")

    def _node(self, op: str, name: str) -> NodeOp:
        return NodeOp(op, self.dense_dim, self.num_fields, self.config.emb_dim, name=name)

    def _stem(self, features: dict[str, Any]) -> tuple[Any, Any]:
        sparse = self.field_embeddings(self.ids(features))
        return ops.reshape(sparse, (-1, self.width)), sparse

    def _logit(self, dense: Any, sparse: Any) -> Any:
        return self.head(ops.concatenate([dense, ops.reshape(sparse, (-1, self.width))], axis=1))


@keras.saving.register_keras_serializable(package="optfusion")
class NasNet(_BlockModel):
    """A fixed design of the block space (a searched `NasArchitecture`); nodes without a path to the head are not built.

    Args:
        architecture: the design (or its dict).
        dense_dim: width of every dense node (config nas.dense_dim).
    """

    def __init__(self, config: SupernetConfig, field_names: Sequence[str], vocab_sizes: Sequence[int],
                 architecture: NasArchitecture | dict[str, Any], dense_dim: int,
                 max_lens: Sequence[int] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("name", "nasnet")
        super().__init__(config, field_names, vocab_sizes, dense_dim, max_lens=max_lens, **kwargs)
        self.design = architecture if isinstance(architecture, NasArchitecture) else \
            NasArchitecture.from_dict(architecture)
        self.keep = self.design.reachable()
        self.nodes = {}
        for i, block in enumerate(self.design.blocks, start=1):
            for kind, op in (("dense", block.dense_op), ("sparse", block.sparse_op)):
                if (kind, i) in self.keep:
                    self.nodes[f"{kind}{i}"] = self._node(op, f"{kind}{i}_{op}")
        self.build_now()

    def call(self, features: dict[str, Any], training: bool = False) -> Any:
        dense0, sparse0 = self._stem(features)
        dense, sparse = {0: dense0}, {0: sparse0}
        for i, block in enumerate(self.design.blocks, start=1):
            for kind, op in (("dense", block.dense_op), ("sparse", block.sparse_op)):
                if (kind, i) not in self.keep:
                    continue
                x = ops.concatenate([dense[j] for j in block.dense_in], axis=1) if "dense" in READS[op] else None
                s = _sum([sparse[j] for j in block.sparse_in]) if "sparse" in READS[op] else None
                (dense if kind == "dense" else sparse)[i] = self.nodes[f"{kind}{i}"](x, s, sparse0)
        last = self.design.num_blocks
        return self._logit(dense[last], sparse[last])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "architecture": self.design.to_dict(), "dense_dim": self.dense_dim}


@keras.saving.register_keras_serializable(package="optfusion")
class NasSupernet(_BlockModel):
    """NASRec's weight-sharing supernet: every op of every block, every earlier node as an input.

    In training each step samples one subnet (`sample_choice`, in the graph):
    per block, any-path inputs (a uniform number of distinct earlier nodes, the
    rest fed as zeros, as the official code pads them) and one dense and one
    sparse op (the others weighted 0). Out of training the subnet is the one
    held in the choice variables (`set_choice`; default every input, ops
    averaged), so one trained supernet scores many subnets on validation.

    Args:
        num_blocks: N.
        dense_ops, sparse_ops: the op candidates of every block.
        dense_dim: width of every dense node.
    """

    def __init__(self, config: SupernetConfig, field_names: Sequence[str], vocab_sizes: Sequence[int],
                 num_blocks: int, dense_ops: Sequence[str], sparse_ops: Sequence[str], dense_dim: int,
                 max_lens: Sequence[int] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("name", "nas_supernet")
        super().__init__(config, field_names, vocab_sizes, dense_dim, max_lens=max_lens, **kwargs)
        self.num_blocks, self.dense_ops, self.sparse_ops = int(num_blocks), list(dense_ops), list(sparse_ops)
        n = self.num_blocks
        self.nodes = {f"{kind}{i}_{op}": self._node(op, f"{kind}{i}_{op}")
                      for i in range(1, n + 1)
                      for kind, ops_ in (("dense", self.dense_ops), ("sparse", self.sparse_ops)) for op in ops_}
        shapes = {"dense_in": (n, n), "sparse_in": (n, n), "dense_op": (n, len(self.dense_ops)),
                  "sparse_op": (n, len(self.sparse_ops))}
        self.choice = {k: self.add_weight(name=f"choice_{k}", shape=s, initializer="zeros", trainable=False)
                       for k, s in shapes.items()}
        self.set_choice(None)
        self.build_now()

    def set_choice(self, design: NasArchitecture | None) -> None:
        """The subnet used out of training: `design`, or None for the full path (every input, ops averaged)."""
        n = self.num_blocks
        values = {"dense_in": np.tril(np.ones((n, n)), 0), "sparse_in": np.tril(np.ones((n, n)), 0),
                  "dense_op": np.full((n, len(self.dense_ops)), 1 / len(self.dense_ops)),
                  "sparse_op": np.full((n, len(self.sparse_ops)), 1 / len(self.sparse_ops))}
        if design is not None:
            if design.num_blocks != n:
                raise ValueError(f"the design has {design.num_blocks} blocks, the supernet {n}")
            values = {k: np.zeros_like(v) for k, v in values.items()}
            for i, b in enumerate(design.blocks):
                values["dense_in"][i, list(b.dense_in)] = 1
                values["sparse_in"][i, list(b.sparse_in)] = 1
                values["dense_op"][i, self.dense_ops.index(b.dense_op)] = 1
                values["sparse_op"][i, self.sparse_ops.index(b.sparse_op)] = 1
        for key, value in values.items():
            self.choice[key].assign(value.astype("float32"))

    def sample_choice(self) -> dict[str, Any]:
        """One any-path subnet as the choice tensors (graph ops: a new one each step)."""
        n = self.num_blocks
        rows: dict[str, list[Any]] = {"dense_in": [], "sparse_in": []}
        for i in range(1, n + 1):
            for key in rows:
                k = tf.random.uniform((), 1, i + 1, dtype=tf.int32)
                rank = tf.argsort(tf.argsort(tf.random.uniform((i,))))  # a random order of the i earlier nodes
                rows[key].append(tf.pad(tf.cast(rank < k, tf.float32), [[0, n - i]]))
        one_hot = {f"{kind}_op": tf.one_hot(tf.random.uniform((n,), 0, len(c), dtype=tf.int32), len(c))
                   for kind, c in (("dense", self.dense_ops), ("sparse", self.sparse_ops))}
        return {**{k: tf.stack(v) for k, v in rows.items()}, **one_hot}

    def call(self, features: dict[str, Any], training: bool = False) -> Any:
        choice = self.sample_choice() if training else {k: ops.convert_to_tensor(v) for k, v in self.choice.items()}
        dense0, sparse0 = self._stem(features)
        dense, sparse = [dense0], [sparse0]
        for i in range(1, self.num_blocks + 1):
            din, sin = choice["dense_in"][i - 1], choice["sparse_in"][i - 1]
            x = ops.concatenate([dense[j] * din[j] for j in range(i)], axis=1)
            s = _sum([sparse[j] * sin[j] for j in range(i)])
            for kind, candidates, out in (("dense", self.dense_ops, dense), ("sparse", self.sparse_ops, sparse)):
                weights = choice[f"{kind}_op"][i - 1]
                out.append(_sum([weights[k] * self.nodes[f"{kind}{i}_{op}"](x, s, sparse0)
                                 for k, op in enumerate(candidates)]))
        return self._logit(dense[-1], sparse[-1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_blocks": self.num_blocks, "dense_ops": self.dense_ops,
                "sparse_ops": self.sparse_ops, "dense_dim": self.dense_dim}
