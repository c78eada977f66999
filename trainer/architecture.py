"""The OptFusion search space and one point in it (an `Architecture`).

Why a module of its own: the search stage writes an architecture, the retrain
and train stages read one, fixed designs (parallel DCN, stacked DCN-v2, every
ablation) are just architecture files, and serving never needs the model code.
So the topology rules and the JSON format live here, free of Keras.

Topology for n cells (docs/DESIGN.md §3 Supernet), levels in brackets:

    E [0] -> S0 [1] -> S_i, D_i [i + 1] for i = 1..n -> H [n + 2]

Every *fusing* component (S_1..S_n, D_1..D_n, H) may take any component of a
strictly lower level as input; S0 may take E only. Each such allowed edge has
one scalar alpha and is used when alpha > 0: 2 (n + 1)^2 + 1 edges (33 for
n = 3, the reference code's E -> S0 switch included). Each fusing component
has one beta logit per fusion operation in `OPS`; S0 has a single candidate
input and so no beta.

The Hard op of a component is argmax(beta) (the paper), unless the search
recorded a `selection`: a validation score of the trained supernet per op and
component (trainer/selection.py); then it is, among the ops scoring within
`selection_margin` of the best, the one of the largest beta (docs/DESIGN.md
§3 Supernet: deviations).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import typing
from typing import Any, Literal

from pipeline.atomic import write_text_atomic

Op = Literal["add", "prod", "concat", "att"]
OPS: tuple[str, ...] = typing.get_args(Op)
"""Fusion operations, in the order of each component's beta logits."""

ONE_HOT_LOGIT = 20.0
"""Beta logit of the chosen op in hand-written designs (others 0): softmax ~ one-hot."""


def components(n: int) -> list[str]:
    """All component names for n cells, in level order: E, S0, S1, D1, ..., H."""
    _check_n(n)
    names = ["E", "S0"]
    for i in range(1, n + 1):
        names += [f"S{i}", f"D{i}"]
    return names + ["H"]


def connectable_components(n: int) -> list[str]:
    """Components with switchable inputs (one alpha per candidate input)."""
    return components(n)[1:]


def fusing_components(n: int) -> list[str]:
    """Components that fuse several candidate inputs (and so own a beta)."""
    return components(n)[2:]


def level(component: str, n: int) -> int:
    """Level of a component: E 0, S0 1, S_i/D_i i + 1, H n + 2."""
    if component == "E":
        return 0
    if component == "H":
        return n + 2
    kind, index = component[:1], component[1:]
    if kind in ("S", "D") and index.isdigit():
        i = int(index)
        if (kind == "S" and 0 <= i <= n) or (kind == "D" and 1 <= i <= n):
            return i + 1
    raise ValueError(f"Unknown component {component!r} for n={n}. Received: {component!r}")


def candidate_inputs(component: str, n: int) -> list[str]:
    """Components allowed to feed `component`: every strictly lower level."""
    lvl = level(component, n)
    return [c for c in components(n) if level(c, n) < lvl]


def num_edges(n: int) -> int:
    """Number of alpha parameters: 2 (n + 1)^2 + 1 (33 for n = 3)."""
    return sum(len(candidate_inputs(c, n)) for c in connectable_components(n))


def softmax(logits: list[float]) -> list[float]:
    """Numerically stable softmax of a short list (no numpy needed)."""
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    total = sum(exps)
    return [v / total for v in exps]


def pick_op(scores: list[float] | None, beta: list[float], margin: float = 0.0) -> int:
    """Index of the Hard op: among the ops whose score is within `margin` of
    the best (all ops without scores), the one of the largest beta; then the
    first. A margin keeps differences below the validation noise from
    overriding beta, while an op that scores clearly worse is never taken."""
    candidates = list(range(len(beta)))
    if scores is not None:
        candidates = [i for i in candidates if scores[i] >= max(scores) - margin]
    return max(candidates, key=lambda i: (beta[i], -i))


def _margin(value: Any) -> float | dict[str, float]:
    """A file's selection_margin: one number (files before per-component margins) or component -> number."""
    return {c: float(v) for c, v in value.items()} if isinstance(value, dict) else float(value)


def _check_n(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"`n` must be an integer >= 1. Received: n={n!r}")


@dataclasses.dataclass
class Architecture:
    """Alpha per allowed edge and beta per fusing component.

    alpha["S0"] (the E -> S0 switch) may be left out: it then defaults to on.

    alpha, beta and the optional `selection` (per fusing component, one
    score per op in `OPS`, higher is better: the validation AUC the search's
    supernet loses without the op, or has with it alone) with its
    `selection_margin` (one for all components, or one per component: the
    tie margin `trainer/selection.py` derived from the validation AUC's
    standard error) are the source of truth;
    edges (1[alpha > 0]), the Hard op (`pick_op`) and the Soft weights
    (softmax beta) are derived and written to JSON only for the reader.
    """

    n: int
    alpha: dict[str, dict[str, float]]
    beta: dict[str, list[float]]
    description: str = ""
    selection: dict[str, list[float]] | None = None
    selection_margin: float | dict[str, float] = 0.0

    def __post_init__(self) -> None:
        _check_n(self.n)
        # docs/DESIGN.md §3 Supernet feeds S0 from E; a file without S0's switch keeps it on.
        self.alpha.setdefault("S0", {"E": 1.0})
        connectable, fusing = connectable_components(self.n), fusing_components(self.n)
        if set(self.alpha) != set(connectable) or set(self.beta) != set(fusing):
            raise ValueError(
                f"alpha must have exactly the components {connectable} and beta {fusing} "
                f"for n={self.n}. Received: alpha={sorted(self.alpha)}, beta={sorted(self.beta)}"
            )
        for comp in connectable:
            allowed = candidate_inputs(comp, self.n)
            given = self.alpha[comp]
            if set(given) != set(allowed):
                raise ValueError(
                    f"alpha[{comp!r}] must have one value per allowed input {allowed} "
                    f"(only lower levels may feed {comp}). Received: {sorted(given)}"
                )
            self.alpha[comp] = {src: float(given[src]) for src in allowed}
            if not all(math.isfinite(v) for v in self.alpha[comp].values()):
                raise ValueError(f"alpha of {comp} must be finite. Received: {self.alpha[comp]}")
            if comp not in fusing:
                continue
            if len(self.beta[comp]) != len(OPS):
                raise ValueError(
                    f"beta[{comp!r}] must have {len(OPS)} logits, one per op {OPS}. "
                    f"Received: {self.beta[comp]!r}"
                )
            self.beta[comp] = [float(v) for v in self.beta[comp]]
            if not all(math.isfinite(v) for v in self.beta[comp]):
                raise ValueError(f"beta of {comp} must be finite. Received: {self.beta[comp]}")
        margins = self.selection_margin.values() if isinstance(self.selection_margin, dict) else [self.selection_margin]
        if not all(math.isfinite(m) and m >= 0 for m in margins) or (
                isinstance(self.selection_margin, dict) and not set(self.selection_margin) <= set(fusing)):
            raise ValueError(f"selection_margin must be a finite number >= 0, or map fusing components {fusing} "
                             f"to one. Received: {self.selection_margin}")
        if self.selection is not None:
            self.selection = {c: [float(v) for v in s] for c, s in self.selection.items()}
            bad = {c: s for c, s in self.selection.items()
                   if c not in fusing or len(s) != len(OPS) or not all(math.isfinite(v) for v in s)}
            if bad:
                raise ValueError(
                    f"selection must map fusing components {fusing} to {len(OPS)} finite scores, one "
                    f"per op {OPS} (or be left out: Hard = argmax beta). Received: {bad}"
                )

    @classmethod
    def from_design(
        cls,
        n: int,
        inputs: dict[str, list[str]],
        ops: dict[str, str] | str,
        description: str = "",
    ) -> Architecture:
        """A hand-written design: connected inputs per component and one op each.

        Components missing from `inputs` get no input; alpha is 1 for a
        connection and 0 otherwise; beta is ONE_HOT_LOGIT for the chosen op
        (`ops` is one op for all, or per component; default the first op).
        """
        connectable = connectable_components(n)
        unknown = set(inputs) - set(connectable)
        if unknown:
            raise ValueError(f"Unknown components {sorted(unknown)}. Received: {inputs}")
        op_of = {c: ops for c in fusing_components(n)} if isinstance(ops, str) else dict(ops)
        alpha, beta = {}, {}
        for comp in connectable:
            chosen = inputs.get(comp, [])
            bad = set(chosen) - set(candidate_inputs(comp, n))
            if bad:
                raise ValueError(
                    f"{comp} cannot take {sorted(bad)} as input (same or higher level). "
                    f"Received: {chosen}"
                )
            alpha[comp] = {s: 1.0 if s in chosen else 0.0 for s in candidate_inputs(comp, n)}
            if comp == "S0":
                continue
            op = op_of.get(comp, OPS[0])
            if op not in OPS:
                raise ValueError(f"Unknown op for {comp}; expected one of {OPS}. Received: {op!r}")
            beta[comp] = [ONE_HOT_LOGIT if o == op else 0.0 for o in OPS]
        return cls(n=n, alpha=alpha, beta=beta, description=description)

    def with_op(self, op: str) -> Architecture:
        """The same connections with `op` everywhere (the paper's table 4 ablation)."""
        if op not in OPS:
            raise ValueError(f"Unknown op; expected one of {OPS}. Received: {op!r}")
        one_hot = [ONE_HOT_LOGIT if o == op else 0.0 for o in OPS]
        note = f"{self.description}; " if self.description else ""
        return Architecture(n=self.n, alpha={c: dict(a) for c, a in self.alpha.items()},
                            beta={c: list(one_hot) for c in self.beta},  # no selection: one op
                            description=f"{note}fixed op {op.upper()} on these connections")

    def inputs(self, component: str) -> list[str]:
        """Connected inputs of a component, in level order."""
        if component == "E":
            return []
        return [s for s, a in self.alpha[component].items() if a > 0]

    def edges(self) -> list[tuple[str, str]]:
        """Connected (source, destination) pairs among the alpha edges."""
        return [(s, c) for c in connectable_components(self.n) for s in self.inputs(c)]

    def hard_ops(self) -> dict[str, str]:
        """Hard choice per fusing component: `pick_op` of its selection scores
        where the search recorded them, else the op of the largest beta."""
        chosen = self.selection or {}
        return {c: OPS[pick_op(chosen.get(c), b, self.margin(c))] for c, b in self.beta.items()}

    def margin(self, component: str) -> float:
        """The selection's tie margin at `component` (0 where none was recorded)."""
        if isinstance(self.selection_margin, dict):
            return self.selection_margin.get(component, 0.0)
        return self.selection_margin

    def soft_weights(self) -> dict[str, list[float]]:
        """Soft mixture weights per fusing component: softmax(beta)."""
        return {c: softmax(b) for c, b in self.beta.items()}

    def reachable(self) -> set[str]:
        """Components with a path to H (H included); the rest are pruned."""
        seen = {"H"}
        stack = ["H"]
        while stack:
            for src in self.inputs(stack.pop()):
                if src not in seen:
                    seen.add(src)
                    stack.append(src)
        return seen

    def to_dict(self) -> dict:
        """JSON-ready dict: sources of truth first, then the derived views."""
        return {
            "n": self.n,
            "description": self.description,
            "ops": list(OPS),
            "alpha": self.alpha,
            "beta": self.beta,
            **({"selection": self.selection, "selection_margin": self.selection_margin}
               if self.selection is not None else {}),
            "edges": [list(e) for e in self.edges()],
            "hard_ops": self.hard_ops(),
            "soft_weights": {c: [round(w, 6) for w in ws] for c, ws in self.soft_weights().items()},
            "reachable": sorted(self.reachable(), key=components(self.n).index),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Architecture:
        """Inverse of to_dict; derived fields, if present, must agree with alpha/beta."""
        missing = {"n", "alpha", "beta"} - set(data)
        if missing:
            raise ValueError(f"Architecture lacks {sorted(missing)}. Received keys: {sorted(data)}")
        if "ops" in data and list(data["ops"]) != list(OPS):
            raise ValueError(f"Architecture ops must be {list(OPS)}. Received: {data['ops']}")
        arch = cls(
            n=data["n"],
            alpha={c: dict(v) for c, v in data["alpha"].items()},
            beta={c: list(v) for c, v in data["beta"].items()},
            description=str(data.get("description", "")),
            selection={c: list(v) for c, v in data["selection"].items()} if data.get("selection") else None,
            selection_margin=_margin(data.get("selection_margin", 0.0)),
        )
        derived = arch.to_dict()
        for key in ("edges", "hard_ops", "reachable"):
            if key in data and data[key] != derived[key]:
                raise ValueError(
                    f"Architecture field {key!r} disagrees with alpha/beta (it is derived: "
                    f"edit alpha/beta instead). Received: {data[key]}, derived: {derived[key]}"
                )
        return arch

    def to_json(self) -> str:
        """Indented JSON with short lists (beta, one edge) kept on one line."""
        return _dumps(self.to_dict(), "") + "\n"

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> None:
        """Writes JSON to a temp file beside `path`, then renames (atomic)."""
        write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Architecture:
        """Reads an architecture file with a one-line error naming the file."""
        path = pathlib.Path(path)
        try:
            return cls.from_json(path.read_text())
        except FileNotFoundError:
            raise ValueError(
                f"Architecture file {path} does not exist (pass a search run's "
                "architecture.json or one of trainer/architectures/*.json)"
            ) from None
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise ValueError(f"Invalid architecture file {path}: {err}") from None

    def render(self) -> str:
        """One-screen text view of the chosen DAG, top (H) to bottom (E)."""
        keep = self.reachable()
        hard, soft = self.hard_ops(), self.soft_weights()
        lines = [f"OptFusion architecture, n={self.n}: {len(self.edges())} of {num_edges(self.n)} edges on"]
        if self.description:
            lines.append(f"  {self.description}")
        for comp in reversed(components(self.n)):
            if comp not in keep and comp != "E":
                continue
            if comp == "E":
                lines.append("  E   embedding")
            elif comp == "S0":
                lines.append(f"  S0  <- {', '.join(self.inputs('S0')) or '(none: zero input)'}")
            else:
                srcs = ", ".join(self.inputs(comp)) or "(none: zero input)"
                mix = " ".join(f"{o} {w:.2f}" for o, w in zip(OPS, soft[comp], strict=True))
                picked = ""
                if self.selection and comp in self.selection:
                    picked = "   selection: " + " ".join(
                        f"{o} {v:.4f}" for o, v in zip(OPS, self.selection[comp], strict=True))
                lines.append(f"  {comp:<3} <- {hard[comp].upper()}({srcs})   soft: {mix}{picked}")
        pruned = [c for c in components(self.n) if c not in keep and c != "E"]
        lines.append("  pruned (no path to H): " + (", ".join(pruned) if pruned else "none"))
        return "\n".join(lines)


def _dumps(value, indent: str) -> str:
    """json.dumps(indent=2), except short lists and dicts of scalars stay on one line."""
    inner = indent + "  "
    flat = json.dumps(value)
    nested = isinstance(value, (dict, list)) and any(
        isinstance(v, (dict, list)) for v in (value.values() if isinstance(value, dict) else value)
    )
    if not nested and len(indent) + len(flat) <= 100:
        return flat
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {_dumps(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + _dumps(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value)
