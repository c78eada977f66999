"""Hard op selection by perturbation on the trained supernet (`search.hard_select`).

Why: on small samples the search peaks after one epoch (~32 beta steps on
the Criteo sample), so softmax(beta) is often nearly tied (H: 0.24 / 0.28 /
0.20 / 0.28) and argmax(beta), the paper's Hard rule, picks an op the model
did not need. After Wang et al., "Rethinking Architecture Selection in
Differentiable NAS" (ICLR 2021), each component's op can instead be chosen
by what the trained supernet does with it on the validation split: by how
much the validation AUC drops when that op is removed from the mixture
("remove", that paper's criterion), or with each op alone in that component
("alone": ATT alone scores a hair above ADD at H, yet retrains worse). The
default stays "beta": chosen on development seeds, neither beat it
(benchmarks/hard_rule.py; RESULTS.md "Frappe: the Hard rule chosen on
development seeds"). Scores within `search.hard_select_tie_se` standard
errors of the best (`tie_margin`: DeLong, paired) count as tied and the tie
goes to the larger beta (`pick_op`). Components are decided one at a time, H first,
each fixed to its op before the next is tried, so the last evaluation is
the Hard architecture on the supernet's weights. Deviation from Wang et
al.: no fine-tuning of the supernet between decisions (a few validation
passes instead of epochs). docs/DESIGN.md §3 Supernet: deviations.
"""

from __future__ import annotations

import json
import logging
import pathlib
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.dataset_info import DatasetInfo
from pipeline.errors import UsageError
from trainer.architecture import ONE_HOT_LOGIT, OPS, Architecture, pick_op
from trainer.config import load_config
from trainer.loop import Phase
from trainer.metrics import delong, roc_auc
from trainer.model_io import ARCH_FILE, CONFIG_FILE, RUN_FILE, SEARCH_WEIGHTS_FILE, build_model, warm_start

log = logging.getLogger("trainer")

RULES = ("beta", "alone", "remove")
"""`search.hard_select` values: beta = argmax(beta) (the paper); alone, remove: see the module doc."""


def _logits(rule: str, beta: np.ndarray, op: int) -> np.ndarray:
    """Beta logits that leave `op` alone in the mixture ("alone") or take it out ("remove")."""
    if rule == "alone":
        return np.where(np.arange(len(OPS)) == op, ONE_HOT_LOGIT, 0.0).astype(beta.dtype)
    out = beta.copy()
    out[op] = beta.min() - 2 * ONE_HOT_LOGIT  # softmax weight ~e^-40: the others renormalised
    return out


Predict = Callable[[], tuple[np.ndarray, np.ndarray]]
"""Evaluates the supernet on the validation split: (labels, logits), rows in a fixed order."""


def tie_margin(labels: np.ndarray, logits: list[np.ndarray], scores: list[float], tie_se: float) -> float:
    """`tie_se` standard errors of the validation AUC differences that decide a component.

    The scores are AUCs of one supernet on the same rows (an op alone, or
    every op but one), so they are compared paired: the largest DeLong
    standard error of the difference between the best-scoring op's AUC and
    another op's (trainer/metrics.py delong) sets the margin. The scores'
    differences are 1e-4..1e-3, as are these standard errors (Frappe,
    ~5.8k validation rows: 4e-5..1.5e-3), so a margin of 0 let noise
    override beta; one AUC's own (unpaired) standard error, ~0.003 there
    and ~0.02 on 1k rows, would tie nearly everything.
    """
    if tie_se == 0:
        return 0.0
    _, cov = delong(labels, np.stack(logits))
    best = int(np.argmax(scores))
    var = [cov[best, best] + cov[i, i] - 2 * cov[best, i] for i in range(len(scores)) if i != best]
    return float(tie_se * np.sqrt(max(0.0, *var)))


def select_ops(model: Any, valid_predict: Predict, architecture: Architecture, rule: str,
               tie_se: float = 0.0) -> Architecture:
    """`architecture` with a selection recorded (rule "alone" or "remove"), or
    unchanged for rule "beta" or a model without beta (a fixed-op search).

    `model` is the search supernet holding its best weights (`model.beta`:
    component -> logits variable); `valid_predict()` evaluates it. Only
    components with a path to H and at least one input are scored; each
    one's tie margin (`tie_margin`, `tie_se` standard errors) is recorded in
    `selection_margin`. Every beta is restored before returning.
    """
    if rule not in RULES:
        raise ValueError(f"search.hard_select must be one of {RULES}. Received: {rule!r}")
    if not (np.isfinite(tie_se) and tie_se >= 0):
        raise ValueError(f"search.hard_select_tie_se must be a finite number >= 0. Received: {tie_se}")
    keep = architecture.reachable()
    comps = [c for c in reversed(list(model.beta)) if c in keep and architecture.inputs(c)]  # H first
    if rule == "beta" or not comps:
        return architecture
    saved = {c: np.array(v.numpy()) for c, v in model.beta.items()}
    scores: dict[str, list[float]] = {}
    margins: dict[str, float] = {}
    try:
        for comp in comps:
            base = roc_auc(*valid_predict()) if rule == "remove" else 0.0
            labels, logits = np.empty(0), []
            for op in range(len(OPS)):
                model.beta[comp].assign(_logits(rule, saved[comp], op))
                labels, op_logits = valid_predict()
                logits.append(np.asarray(op_logits, dtype=np.float64).reshape(-1))
            aucs = [roc_auc(labels, x) for x in logits]
            # Higher is better: the AUC alone, or the AUC lost without the op.
            scores[comp] = aucs if rule == "alone" else [base - a for a in aucs]
            margins[comp] = tie_margin(labels, logits, scores[comp], tie_se)
            chosen = pick_op(scores[comp], saved[comp].tolist(), margins[comp])
            model.beta[comp].assign(_logits("alone", saved[comp], chosen))
            log.info("hard_select=%s: %s -> %s (%s; tie margin %.4f)", rule, comp, OPS[chosen].upper(),
                     " ".join(f"{o} {a:.4f}" for o, a in zip(OPS, aucs, strict=True)), margins[comp])
    finally:
        for comp, value in saved.items():
            model.beta[comp].assign(value)
    return Architecture(n=architecture.n, alpha=architecture.alpha, beta=architecture.beta,
                        description=architecture.description, selection=scores, selection_margin=margins)


def select_from_run(search_dir: pathlib.Path, info: DatasetInfo, rule: str, tie_se: float = 0.0) -> Architecture:
    """The architecture of a finished search run with its Hard ops chosen by
    `rule` and `tie_se`, from its saved best weights (search.weights.npz): a search run
    made before `search.hard_select` existed, or under another rule, needs no
    rerun. `info` must be the data the search ran on (its validation split)."""
    weights = search_dir / SEARCH_WEIGHTS_FILE
    if not weights.is_file():
        raise UsageError(f"{weights} is missing: select_from_run needs a finished search run "
                         "(rerun `trainer --stage=search`)")
    config = load_config(search_dir / CONFIG_FILE)
    fields = json.loads((search_dir / RUN_FILE).read_text())["fields"]
    architecture = Architecture.load(search_dir / ARCH_FILE)
    if config.search.sequential:  # the operations phase: connections frozen from phase one
        model = build_model(config, fields, mode="search", search_ops_only=True,
                            architecture=Architecture.load(search_dir / "architecture_connections.json"))
    else:
        model = build_model(config, fields, mode="search", fixed_op=config.search.fixed_op)
    warm_start(model, weights)
    with tempfile.TemporaryDirectory() as tmp:
        phase = Phase("select", model, config, info, pathlib.Path(tmp) / "c", pathlib.Path(tmp) / "t",
                      train_arch=False)
        plain = Architecture(n=architecture.n, alpha=architecture.alpha, beta=architecture.beta,
                             description=architecture.description)
        return select_ops(model, lambda: phase.predict("valid"), plain, rule, tie_se)


def rule_architecture(search_dir: pathlib.Path, info: DatasetInfo, rule: str,
                      tie_se: float | None = None) -> pathlib.Path:
    """The file of a finished search's architecture with its Hard ops chosen by `rule` (and
    `tie_se`, default the search config's): architecture_beta.json or
    architecture_<rule>@<tie_se>se.json beside its architecture.json
    (so `--init=search` still finds the search weights), written once, so that several rules
    retrain from the SAME search and compare paired."""
    if tie_se is None:
        tie_se = load_config(search_dir / CONFIG_FILE).search.hard_select_tie_se
    path = search_dir / ("architecture_beta.json" if rule == "beta" else f"architecture_{rule}@{tie_se:g}se.json")
    if not path.is_file():
        if rule == "beta":  # argmax(beta): no supernet evaluation needed
            arch = Architecture.load(search_dir / ARCH_FILE)
            arch = Architecture(n=arch.n, alpha=arch.alpha, beta=arch.beta, description=arch.description)
        else:
            arch = select_from_run(search_dir, info, rule, tie_se)
        arch.save(path)
    return path
