"""Regularized evolution (Real et al., AAAI 2019), the search loop AutoCTR and NASRec share, and its run directory.

`population` random designs first; then each child mutates the best of
`sample_size` designs drawn from the latest `population` (the oldest age out).
Candidate i draws from its own generator, seeded by (seed, method, i), and
every evaluated candidate is appended to RUN/evolution.json temp-then-rename,
so a killed search resumed with `--resume` evaluates exactly the candidates it
had not finished, in the same order, and finds the same design. A design met
again is not evaluated again: its first score is reused.
"""

from __future__ import annotations

import json
import logging
import pathlib
import random
import time
from collections.abc import Callable
from typing import Any

from pipeline.atomic import write_text_atomic
from trainer.config import Config
from trainer.loop import MONITORS
from trainer.nas.space import NasArchitecture, mutate, random_architecture

log = logging.getLogger("trainer")

EVOLUTION_FILE = "evolution.json"

Evaluate = Callable[[NasArchitecture, int], dict[str, float]]
"""(design, candidate index) -> {"valid_auc", "valid_logloss"} of the design on the validation split."""


def score(config: Config, record: dict[str, Any]) -> float:
    """A candidate's fitness: the run's `train.monitor` of its validation AUC and LogLoss (higher is better)."""
    value = MONITORS[config.train.monitor](record)
    return value if value == value else float("-inf")  # a NaN (diverged candidate) never wins


def evolve(config: Config, method: str, out: pathlib.Path, evaluate: Evaluate, *, resume: bool) -> dict[str, Any]:
    """Runs (or, with `resume`, continues) the evolution; writes the best design to OUT/architecture.json.

    Returns the best candidate's record plus the number evaluated and cached."""
    from trainer.model_io import ARCH_FILE, ARCH_TEXT_FILE

    n = config.nas
    path = out / EVOLUTION_FILE
    history: list[dict[str, Any]] = json.loads(path.read_text())["candidates"] if resume and path.is_file() else []
    if history:
        log.info("[%s] resuming after %d evaluated candidates", method, len(history))
    by_key = {NasArchitecture.from_dict(c["architecture"]).key(): c for c in history}
    total = n.population + n.cycles
    while len(history) < total:
        i = len(history)
        rng = random.Random(f"{config.seed}:{method}:{i}")
        parent = None
        if i < n.population:
            design = random_architecture(rng, method, n.blocks)
        else:
            contenders = rng.sample(history[-n.population:], n.sample_size)
            parent = max(contenders, key=lambda c: score(config, c))
            design = mutate(rng, NasArchitecture.from_dict(parent["architecture"]))
        known = by_key.get(design.key())
        start = time.perf_counter()
        metrics = ({k: known[k] for k in ("valid_auc", "valid_logloss")} if known is not None
                   else evaluate(design, i))
        record = {"index": i, "parent": None if parent is None else parent["index"], "cached": known is not None,
                  "architecture": design.to_dict(), **metrics, "seconds": time.perf_counter() - start}
        history.append(record)
        by_key.setdefault(design.key(), record)
        write_text_atomic(path, json.dumps({"method": method, "candidates": history}, indent=1) + "\n")
        log.info("[%s] candidate %d/%d%s: valid AUC %.4f LogLoss %.4f", method, i + 1, total,
                 " (seen before)" if known is not None else "", metrics["valid_auc"], metrics["valid_logloss"])
    best = max(history, key=lambda c: score(config, c))
    design = NasArchitecture.from_dict(best["architecture"])
    design = NasArchitecture(method, design.blocks, f"{method} search: candidate {best['index']} of {total}, "
                             f"valid AUC {best['valid_auc']:.4f}, LogLoss {best['valid_logloss']:.4f}")
    design.save(out / ARCH_FILE)
    write_text_atomic(out / ARCH_TEXT_FILE, design.render() + "\n")
    return {"best": best, "candidates": len(history), "cached": sum(c["cached"] for c in history),
            "architecture": str(out / ARCH_FILE), "rendering": design.render()}
