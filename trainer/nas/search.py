"""`trainer search --method=autoctr|nasrec` once its run directory is prepared (trainer/stages.py run_search)."""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

from pipeline.dataset_info import DatasetInfo
from trainer.config import Config


def run(method: str, config: Config, info: DatasetInfo, out: pathlib.Path, *, resume: bool) -> dict[str, Any]:
    """Searches with `method`; writes OUT/architecture.json (a NAS design), architecture.txt and evolution.json."""
    from trainer.model_io import RUN_FILE
    from trainer.nas import autoctr, nasrec

    fields = json.loads((out / RUN_FILE).read_text())["fields"]
    start = time.perf_counter()
    search = {"autoctr": autoctr.search, "nasrec": nasrec.search}[method]
    result = search(config, info, fields, out, resume=resume)
    budget = {k: getattr(config.nas, k) for k in ("blocks", "dense_dim", "population", "cycles", "sample_size")}
    if method == "autoctr":
        budget.update(candidate_steps=config.nas.candidate_steps, candidate_epochs=config.nas.candidate_epochs)
    return {"stage": "search", "method": method, "run_dir": str(out), "seconds": time.perf_counter() - start,
            "budget": budget, **result}
