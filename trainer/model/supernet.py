"""The OptFusion supernet: every allowed fusion connection and operation at once.

Component layout for n cells (all outputs of width d = fields x emb_dim),
levels in brackets, each component fed by lower levels only:

    E   [0]      embedding of all fields, flattened
    S0  [1]      shallow (cross) layer on E
    S_i [i + 1]  shallow layer, i = 1..n, input fused from E, S0, S_<i, D_<i
    D_i [i + 1]  deep layer (Dense(d) + ReLU), same candidate inputs as S_i
    H   [n + 2]  fuses E, S0, all S_i and D_i; Dense(1) gives the logit

Shallow layers use x0 = E. Every allowed edge has an alpha (used as
STE(alpha) = 1[alpha > 0]) and every fusing component a beta (mixture
softmax(beta) over ADD, PROD, CONCAT, ATT), see trainer/architecture.py.

Modes share one `call`:
- "search": alpha and beta are trainable variables (the one-shot search).
  Ablation variants: `search_ops_only=True` with an architecture (connections
  frozen from it, ops searched: the 2nd step of sequential selection) and
  `fixed_op=OP` (one op everywhere, connections searched).
- "hard": frozen architecture, argmax(beta) op per component.
- "soft": frozen architecture, fixed softmax(beta) mixture.
Whenever connections are frozen, components without a path to H are not built.

The serving-time rewrites of a retrained model (folds, row-block CONCATs)
live in trainer/model/serving_form.py; this module is the paper's model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import keras
from keras import ops

from trainer.architecture import (
    ONE_HOT_LOGIT,
    OPS,
    Architecture,
    candidate_inputs,
    connectable_components,
    fusing_components,
)
from trainer.model.components import SHALLOW, DeepBlock, make_shallow
from trainer.model.embedding import POOLINGS, FieldEmbedding, dummy_ids, stack_ids
from trainer.model.fusion import Fusion
from trainer.model.ste import ste

MODES = ("search", "hard", "soft")
BETA_STD = (2.0 / (1 + len(OPS))) ** 0.5
"""Untruncated xavier-normal std of a 1 x len(OPS) tensor (the paper's init; 0.632)."""


@dataclasses.dataclass(frozen=True)
class SupernetConfig:
    """Model hyperparameters (the architecture itself is an `Architecture`).

    Args:
        n: number of (S_i, D_i) cells, >= 1.
        emb_dim: embedding width per field; d = fields x emb_dim.
        shallow: shallow component, one of SHALLOW.
        alpha_init: initial value of every alpha (> 0: all edges on).
        att_dim: hidden width of ATT's shared scorer; None = d, the paper's
            width (CPU presets set a smaller one, for speed).
        deep_batchnorm: BatchNorm in deep components.
        dropout: dropout rate in deep components.
        emb_std: stddev of the normal embedding initializer: 1e-2, the
            reference's effective value (its command-line default overrides
            the 1e-4 of its embedding class).
        prod_norm: scale-preserving PROD (trainer/model/fusion.py), a
            documented deviation from the paper; False = the paper's raw
            product, which acts as a zero op over small inputs.
        bridge_norm: EDCN's bridge with the same scale-preserving product
            (trainer/zoo/edcn.py); False = the paper's raw Hadamard bridge.
        pooling: "mean" or "sum" of the embeddings of a multi-valued
            field's ids (trainer/model/embedding.py); single-valued fields
            are unaffected.
    """

    n: int = 3
    emb_dim: int = 16
    shallow: str = "crossnet"
    alpha_init: float = 0.5
    att_dim: int | None = None
    deep_batchnorm: bool = False
    dropout: float = 0.0
    emb_std: float = 1e-2
    prod_norm: bool = True
    bridge_norm: bool = True
    pooling: Literal["mean", "sum"] = "mean"

    def __post_init__(self) -> None:
        for key in ("n", "emb_dim", "att_dim"):
            value = getattr(self, key)
            if key == "att_dim" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{key}` must be an integer >= 1. Received: {key}={value!r}")
        if self.shallow not in SHALLOW:
            raise ValueError(f"`shallow` must be one of {SHALLOW}. Received: shallow={self.shallow!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={self.dropout}")
        if self.emb_std <= 0:
            raise ValueError(f"`emb_std` must be > 0. Received: emb_std={self.emb_std}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"`pooling` must be one of {POOLINGS}. Received: pooling={self.pooling!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SupernetConfig:
        """Builds a config, rejecting keys it does not know (typos)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"Unknown model config keys {sorted(unknown)}; known: {sorted(known)}. "
                f"Received: {data}"
            )
        return cls(**data)


@keras.saving.register_keras_serializable(package="optfusion")
class Supernet(keras.Model):
    """OptFusion supernet (search) or a frozen architecture (retrain).

    Args:
        config: model hyperparameters.
        field_names: model order of the int64 feature keys.
        vocab_sizes: ids of field f lie in [0, vocab_sizes[f]).
        architecture: required for "hard", "soft" and search_ops_only.
        mode: one of MODES.
        search_ops_only: search ops with the architecture's connections frozen.
        fixed_op: search connections with this op fixed everywhere.
        max_lens: ids per field (default 1 each); a multi-valued field is
            pooled by `config.pooling`.

    Call: features {field: int [B], multi-valued: [B, max_len]} -> logits [B, 1].
    """

    def __init__(
        self,
        config: SupernetConfig,
        field_names: Sequence[str],
        vocab_sizes: Sequence[int],
        architecture: Architecture | None = None,
        mode: str = "search",
        search_ops_only: bool = False,
        fixed_op: str | None = None,
        max_lens: Sequence[int] | None = None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("name", "supernet")
        super().__init__(**kwargs)
        _validate(config, field_names, vocab_sizes, architecture, mode, search_ops_only, fixed_op)
        self.config = config
        self.field_names = list(field_names)
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.max_lens = [1] * len(self.field_names) if max_lens is None else [int(m) for m in max_lens]
        self.mode = mode
        self.search_ops_only = bool(search_ops_only)
        self.fixed_op = fixed_op
        self._given = architecture
        n = config.n
        if self._frozen_edges:
            assert architecture is not None  # _validate: frozen edges come from an architecture
            keep = architecture.reachable()
            self._sources = {c: architecture.inputs(c) for c in connectable_components(n) if c in keep}
        else:
            self._sources = {c: candidate_inputs(c, n) for c in connectable_components(n)}
        self._order = list(self._sources)
        self._soft = architecture.soft_weights() if mode == "soft" and architecture is not None else {}
        self.embedding = FieldEmbedding(
            self.vocab_sizes, config.emb_dim, std=config.emb_std, max_lens=self.max_lens,
            pooling=config.pooling, name="embedding"
        )
        self.blocks: dict[str, keras.layers.Layer] = {}
        self.fusions: dict[str, Fusion] = {}
        self.alpha: dict[str, keras.Variable] = {}
        self.beta: dict[str, keras.Variable] = {}
        self._build_components(self._op_names())
        # Build every weight now, so that the variable lists are complete.
        self(dummy_ids(self.field_names, self.max_lens), training=False)

    @property
    def _frozen_edges(self) -> bool:
        return self.mode != "search" or self.search_ops_only

    def _op_names(self) -> dict[str, tuple[str, ...]]:
        """The ops each fusing component computes: its Hard op, the fixed op, or all of OPS."""
        n = self.config.n
        if self.mode == "hard":
            assert self._given is not None  # _validate: hard needs an architecture
            return {c: (op,) for c, op in self._given.hard_ops().items()}
        if self.fixed_op is not None:
            return {c: (self.fixed_op,) for c in fusing_components(n)}
        return {c: OPS for c in fusing_components(n)}

    def _build_components(self, op_names: dict[str, tuple[str, ...]]) -> None:
        """The layers of every component in `_order`, and alpha and beta where they are searched."""
        config = self.config
        for comp in self._order:
            if comp == "H":
                self.blocks[comp] = keras.layers.Dense(1, name="head")
            elif comp.startswith("S"):
                self.blocks[comp] = make_shallow(config.shallow, len(self.field_names), comp)
            else:
                self.blocks[comp] = DeepBlock(config.deep_batchnorm, config.dropout, name=comp)
            if comp != "S0" and self._sources[comp] and op_names[comp]:
                self.fusions[comp] = self._fusion(comp, op_names[comp])
            if not self._frozen_edges:
                self.alpha[comp] = self.add_weight(
                    name=f"alpha_{comp}",
                    shape=(len(self._sources[comp]),),
                    initializer=keras.initializers.Constant(config.alpha_init),
                )
            if comp in self.fusions and self.mode == "search" and self.fixed_op is None:
                self.beta[comp] = self.add_weight(
                    name=f"beta_{comp}",
                    shape=(len(OPS),),
                    initializer=keras.initializers.RandomNormal(stddev=BETA_STD),
                )

    def _fusion(self, comp: str, op_names: tuple[str, ...]) -> Fusion:
        return Fusion(op_names, self.config.att_dim, self.config.prod_norm, name=f"fusion_{comp}")

    def call(self, features, training=False):
        return self._forward(features, training)

    def _forward(self, features, training=False, trace: dict | None = None):
        """Logits; `trace`, if given, receives each component's fused input
        under its name and each component's output under ("out", name)."""
        emb = self.embedding(stack_ids(features, self.field_names, self.max_lens))
        outputs = {"E": emb}
        for comp in self._order[:-1]:  # H, always built and always last, gives the logit
            fused = self._fused_input(comp, outputs)
            block = self.blocks[comp]
            if comp.startswith("S"):
                outputs[comp] = block(emb, fused)
            else:
                outputs[comp] = block(fused, training=training)
            if trace is not None:
                trace[comp] = fused
        if trace is not None:
            trace.update({("out", c): v for c, v in outputs.items()})
        return self._logit(outputs, trace)

    def _logit(self, outputs: dict, trace: dict | None = None):
        """H: the head over its fused input."""
        fused = self._fused_input("H", outputs)
        if trace is not None:
            trace["H"] = fused
        return self.blocks["H"](fused)

    def _fused_input(self, comp: str, outputs: dict):
        """The component's input: the op mixture over its (connected) sources."""
        sources = self._sources[comp]
        if not sources:
            return ops.zeros_like(outputs["E"])
        connected = ste(self.alpha[comp]) if comp in self.alpha else None
        if comp == "S0":
            return outputs["E"] if connected is None else outputs["E"] * connected[0]
        if comp in self.beta:
            weights = ops.softmax(self.beta[comp])
        elif comp in self._soft:
            weights = ops.convert_to_tensor(self._soft[comp])
        else:
            weights = None
        return self.fusions[comp]([outputs[s] for s in sources], connected=connected, op_weights=weights)

    @property
    def component_inputs(self) -> dict[str, list[str]]:
        """Built components (level order, E excluded) and the inputs each fuses:
        every candidate while connections are searched, the connected ones once frozen."""
        return {c: list(self._sources[c]) for c in self._order}

    @property
    def arch_variables(self) -> list[keras.Variable]:
        """alpha and beta variables being searched ([] once frozen)."""
        return list(self.alpha.values()) + list(self.beta.values())

    @property
    def embedding_variables(self) -> list[keras.Variable]:
        """The single embedding table (own learning rate and L2)."""
        return [self.embedding.table]

    @property
    def dense_variables(self) -> list[keras.Variable]:
        """Every other trainable weight (cross, deep, fusion, head)."""
        special = {id(v) for v in self.arch_variables + self.embedding_variables}
        return [v for v in self.trainable_variables if id(v) not in special]

    def architecture(self) -> Architecture:
        """Current alpha/beta as an Architecture (the given one once frozen)."""
        n, given = self.config.n, self._given
        if self.alpha:
            alpha = {
                c: dict(zip(candidate_inputs(c, n), (float(v) for v in var.numpy()), strict=True))
                for c, var in self.alpha.items()
            }
        else:
            assert given is not None  # connections are frozen only from a given architecture
            alpha = given.alpha
        if self.fixed_op is not None:
            one_hot = [ONE_HOT_LOGIT if o == self.fixed_op else 0.0 for o in OPS]
            beta = {c: list(one_hot) for c in fusing_components(n)}
        else:
            beta = {
                c: [float(v) for v in self.beta[c].numpy()] if c in self.beta or given is None
                else given.beta[c]
                for c in fusing_components(n)
            }
        return Architecture(n=n, alpha=alpha, beta=beta, description=given.description if given else "",
                            selection=given.selection if given and not self.beta else None)  # frozen: its Hard ops

    def fusion_spread(self, features) -> list[tuple[str, str, float]]:
        """Per built fusing component: (name, op, spread ratio), smallest ratio
        first (components without inputs last: they are constant by design).

        The ratio is the batch spread (mean over coordinates of the std across
        examples) of the component's fused input over the largest spread of
        its inputs: ~0 where the fusion loses what its inputs vary by (a
        product that underflows, a component with no input). Names the
        culprit when a model predicts a constant.
        """
        trace: dict = {}
        self._forward(features, training=False, trace=trace)
        spread = {k: float(ops.convert_to_numpy(v).std(axis=0).mean()) for k, v in trace.items()}
        hard = self._given.hard_ops() if self._given is not None and self.mode == "hard" else {}
        report = []
        for comp in self._order:
            sources = self._sources[comp]
            spread_in = max((spread[("out", s)] for s in sources), default=0.0)
            op = "no input" if not sources else hard.get(comp) or self.fixed_op or (
                "identity" if comp == "S0" else "mixture")
            report.append((comp, op, spread[comp] / spread_in if spread_in > 0 else 0.0))
        return sorted(report, key=lambda r: (r[1] == "no input", r[2]))  # no input: constant by design

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "config": self.config.to_dict(),
            "field_names": self.field_names,
            "vocab_sizes": self.vocab_sizes,
            "architecture": self._given.to_dict() if self._given else None,
            "mode": self.mode,
            "search_ops_only": self.search_ops_only,
            "fixed_op": self.fixed_op,
            "max_lens": self.max_lens,
        }

    @classmethod
    def from_config(cls, config: dict) -> Supernet:
        config = dict(config)
        arch = config.pop("architecture")
        return cls(
            config=SupernetConfig.from_dict(config.pop("config")),
            architecture=Architecture.from_dict(arch) if arch else None,
            **config,
        )


def _validate(config, field_names, vocab_sizes, architecture, mode, search_ops_only, fixed_op):
    """Rejects argument combinations that name no well-defined model."""
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
    if len(field_names) != len(vocab_sizes) or not field_names:
        raise ValueError(
            "`field_names` and `vocab_sizes` must be non-empty and of equal length. "
            f"Received: {len(field_names)} names, {len(vocab_sizes)} sizes"
        )
    needs_arch = mode != "search" or search_ops_only
    if needs_arch and architecture is None:
        raise ValueError(
            f"mode={mode!r}, search_ops_only={search_ops_only} needs an architecture. Received: None"
        )
    if not needs_arch and architecture is not None:
        raise ValueError(
            "A full search takes no architecture (use search_ops_only=True to freeze its "
            f"connections). Received: architecture with n={architecture.n}"
        )
    if architecture is not None and architecture.n != config.n:
        raise ValueError(
            f"Architecture has n={architecture.n} but the config n={config.n}. "
            f"Received: architecture.n={architecture.n}"
        )
    if fixed_op is not None:
        if fixed_op not in OPS:
            raise ValueError(f"`fixed_op` must be one of {OPS} or None. Received: {fixed_op!r}")
        if mode != "search" or search_ops_only:
            raise ValueError(
                "`fixed_op` is a search variant (ops fixed, connections searched); it cannot "
                f"combine with mode={mode!r}, search_ops_only={search_ops_only}. "
                f"Received: fixed_op={fixed_op!r}"
            )
    if search_ops_only and mode != "search":
        raise ValueError(f"`search_ops_only` needs mode='search'. Received: mode={mode!r}")
