"""A retrained supernet as it is exported: the same logits, fewer bytes read per request.

`serving_form(model)` (used by `serving export` through
`trainer.model_io.serving_form`) rewrites a Hard or Soft `Supernet` into a
`ServingForm`, equal to float rounding:

- H is linear in its fused input (Dense(1)), so H's CONCAT term folds into
  one vector, w . (x W_c) = x . (W_c w): the exported graph reads a [k * d]
  vector where the trained model reads a [k * d, d] matrix (3.1 MB of
  float32 for the CPU preset's eight inputs of H).
- Every other CONCAT runs as k matmuls over its kernel's row blocks
  (`Fusion`'s `concat_blocks`), faster at serving batch sizes.
- Where H is a CONCAT alone, a CrossNet S that only H reads and whose input
  is a CONCAT (x = f W, f its k inputs side by side) folds into the head as
  well: its share of the logit is h_S . (x0 * (x . w) + b + x)
  = (f . W w)(x0 . h_S) + f . W h_S + b . h_S, so the [k d, d] matrix W
  (2.3 MB for the CPU preset's S3) becomes a [k d, 2] one and b . h_S joins
  the head's bias.

The folds rest on CrossNet's formula and on Dense(1) being H's block: a
change to either breaks the equality, which tests/trainer/test_serving_form.py
checks directly, architecture by architecture.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from trainer.architecture import OPS, Architecture
from trainer.model.fusion import Fusion
from trainer.model.supernet import Supernet, SupernetConfig


@keras.saving.register_keras_serializable(package="optfusion")
class ServingForm(Supernet):
    """A Hard or Soft supernet with the folds of the module docstring; built with
    zero derived weights: `serving_form` fills them from a trained model.

    Attributes:
        fold_head: H's CONCAT is the vector `head_concat` (= W_c . w_head).
        fold_shallow: the CrossNet components folded into the head, each read
            through `shallow_fold[comp]` = ([W w, W h_S], h_S).
    """

    def __init__(self, config: SupernetConfig, field_names: Sequence[str], vocab_sizes: Sequence[int],
                 architecture: Architecture | None = None, mode: str = "hard", **kwargs) -> None:
        if mode == "search":
            raise ValueError("A serving form is the form of a retrained model (mode 'hard' or 'soft'); "
                             f"a search has none. Received: mode={mode!r}")
        super().__init__(config, field_names, vocab_sizes, architecture=architecture, mode=mode, **kwargs)

    def _build_components(self, op_names: dict[str, tuple[str, ...]]) -> None:
        op_names = dict(op_names)
        self.fold_head = "concat" in op_names["H"] and bool(self._sources["H"])
        self.fold_shallow = _foldable(self, op_names) if op_names["H"] == ("concat",) else []
        if self.fold_head:
            op_names["H"] = tuple(o for o in op_names["H"] if o != "concat")
        self._order = [c for c in self._order if c not in self.fold_shallow]  # only H reads them
        super()._build_components(op_names)
        self.shallow_fold: dict[str, tuple[keras.Variable, keras.Variable]] = {}
        if not self.fold_head:
            return
        d = len(self.field_names) * self.config.emb_dim
        kept = [s for s in self._sources["H"] if s not in self.fold_shallow]
        self.head_concat = self.add_weight(name="head_concat", shape=(len(kept) * d, 1),
                                           initializer="zeros", trainable=False)
        self.shallow_fold = {
            comp: (self.add_weight(name=f"fold_{comp}", shape=(len(self._sources[comp]) * d, 2),
                                   initializer="zeros", trainable=False),
                   self.add_weight(name=f"fold_{comp}_x0", shape=(d, 1), initializer="zeros",
                                   trainable=False))
            for comp in self.fold_shallow
        }
        with keras.name_scope(self.name):  # the head's paths as when built in call (weights copy by path)
            self.blocks["H"].build((None, d))  # its bias is read even where no other op of H runs

    def _fusion(self, comp: str, op_names: tuple[str, ...]) -> Fusion:
        return Fusion(op_names, self.config.att_dim, self.config.prod_norm, concat_blocks=True,
                      name=f"fusion_{comp}")

    @property
    def derived_weights(self) -> list[keras.Variable]:
        """The weights `serving_form` computes (the others it copies)."""
        folded = [v for pair in self.shallow_fold.values() for v in pair]
        return [self.head_concat, *folded] if self.fold_head else []

    def _logit(self, outputs: dict, trace: dict | None = None):
        """H's logit: head(mixture without CONCAT) + p_concat * x . head_concat, plus the folded
        CrossNet layers' shares."""
        if not self.fold_head:
            return super()._logit(outputs, trace)
        if trace is not None:  # H has no fused input left to trace
            raise ValueError("A folded serving form has no fused input of H to trace; "
                             "call fusion_spread on the trained model")
        inputs = [outputs[s] for s in self._sources["H"] if s not in self.fold_shallow]
        p = dict(zip(OPS, self._soft["H"], strict=True)) if "H" in self._soft else {"concat": 1.0}
        logit = ops.matmul(ops.concatenate(inputs, axis=-1), self.head_concat) * p["concat"]
        for comp, (projections, x0_head) in self.shallow_fold.items():
            f = ops.concatenate([outputs[s] for s in self._sources[comp]], axis=-1)
            xw_xh = ops.matmul(f, projections)  # [B, 2]: x . w and x . h_S
            logit = logit + xw_xh[:, :1] * ops.matmul(outputs["E"], x0_head) + xw_xh[:, 1:]
        head = self.blocks["H"]
        if "H" not in self.fusions:  # CONCAT alone: the logit plus the head's bias
            return logit + head.bias
        fusion = self.fusions["H"]  # a Soft mixture's other ops, with their weights
        return logit + head(fusion(inputs, op_weights=[p[o] for o in fusion.op_names]))


def _foldable(model: Supernet, op_names: dict[str, tuple[str, ...]]) -> list[str]:
    """Shallow components that fold into a CONCAT head: CrossNet layers fed by a CONCAT, read by H alone."""
    sources = model.component_inputs
    readers = {s for c, inputs in sources.items() if c != "H" for s in inputs}
    return [c for c in sources if c.startswith("S") and c != "S0" and c not in readers
            and model.config.shallow == "crossnet" and op_names.get(c) == ("concat",)]


def serving_form(model: Supernet) -> Supernet:
    """`model` as exported (module docstring); the model itself while searching, without
    any CONCAT, or when it is a serving form already."""
    if (isinstance(model, ServingForm) or model.mode == "search"
            or not any("concat" in f.op_names for f in model.fusions.values())):
        return model
    served = ServingForm(model.config, model.field_names, model.vocab_sizes, architecture=model.architecture(),
                         mode=model.mode, max_lens=model.max_lens, name=model.name)
    values = {v.path: v for v in model.weights}
    for comp, fusion in served.fusions.items():  # CONCAT kernels as row blocks
        if "concat" in fusion.op_names:
            d = int(fusion.concat_kernels[0].shape[0])
            kernel = model.fusions[comp].concat_kernel
            for i, block in enumerate(fusion.concat_kernels):
                values[block.path] = kernel[i * d:(i + 1) * d]
    derived = {v.path for v in served.derived_weights}
    for v in served.weights:
        if v.path not in derived:
            v.assign(values[v.path])
    if served.fold_head:
        _fill_head_fold(model, served)
    return served


def _fill_head_fold(model: Supernet, served: ServingForm) -> None:
    """Sets the served model's folded head from the trained model's weights (module docstring)."""
    d = len(model.field_names) * model.config.emb_dim
    h_inputs = model.component_inputs["H"]
    head = ops.matmul(model.fusions["H"].concat_kernel, model.blocks["H"].kernel)  # [k d, 1]
    slots = {s: head[i * d:(i + 1) * d] for i, s in enumerate(h_inputs)}
    served.head_concat.assign(ops.concatenate([slots[s] for s in h_inputs if s not in served.shallow_fold], axis=0))
    bias = model.blocks["H"].bias
    for comp, (projections, x0_head) in served.shallow_fold.items():
        w_c, cross = model.fusions[comp].concat_kernel, model.blocks[comp]
        projections.assign(ops.concatenate([ops.matmul(w_c, cross.kernel), ops.matmul(w_c, slots[comp])], axis=1))
        x0_head.assign(slots[comp])
        bias = bias + ops.matmul(ops.expand_dims(cross.bias, 0), slots[comp])[0]
    served.blocks["H"].bias.assign(bias)
