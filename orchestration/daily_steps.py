"""The daily loop's steps as command lines of the project's three CLIs, and where each day's files go.

One home for the commands that scripts/daily_demo.py and the Airflow DAG (orchestration/ctr_daily_dag.py)
run: both build their argv here. Standard library only, because the DAG imports it inside Airflow's own
virtualenv, where neither TensorFlow nor the project is installed; the CLIs run in the project's venv.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import tempfile
from collections.abc import Sequence

# `pipeline validate` (EXIT_ANOMALIES) and `trainer evaluate --candidate` (EXIT_NOT_BLESSED) exit 3 to stop
# the day; not importable here (another venv), so tests/test_daily_steps.py checks that both still say 3.
STOP_EXIT_CODE = 3
USAGE_EXIT_CODE = 2  # pipeline.errors.EXIT_USAGE: bad input, which a retry does not mend
BLESSING_FILE = "blessing.json"  # trainer.blessing.BLESSING_FILE, in the candidate run
DATASET = "criteo"
MODEL_NAME = "ctr"
PUSHED_FILE = "pushed.json"  # in the work dir: served version -> the run and data behind it
ROLLBACK_FILE = "ROLLBACK.json"  # serving/push.py's record of rollbacks, read to follow a rollback to its run


def cli(python: str, package: str, *args: str) -> list[str]:
    """`python -m PACKAGE.cli ARGS`: one of the project's three CLIs, run by the project venv's python."""
    return [python, "-m", f"{package}.cli", *args]


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a day's files go under one work dir; `day` is a label (`day1`, or a date `2026-12-06`)."""

    work: pathlib.Path

    def raw(self, day: str) -> pathlib.Path:
        return self.work / f"{day}.tsv"

    def data(self, day: str) -> pathlib.Path:
        return self.work / "data" / day

    def run(self, day: str) -> pathlib.Path:
        return self.work / "runs" / day

    def search(self, day: str) -> pathlib.Path:
        return self.work / "runs" / f"{day}.search"

    def log(self, day: str, step: str) -> pathlib.Path:
        return self.work / f"{day}_{step}.log"

    @property
    def models(self) -> pathlib.Path:
        """TF Serving's base path: models/NAME/VERSION."""
        return self.work / "models"


def generate(raw: pathlib.Path, rows: int, seed: int, drift: Sequence[str] = ()) -> list[str]:
    """`pipeline generate`: a synthetic day (a new seed per day; `drift` as its --drift)."""
    return ["generate", "--rows", str(rows), "--seed", str(seed), "--output", str(raw),
            *[a for d in drift for a in ("--drift", d)]]


def pipeline_job(raw: pathlib.Path, data: pathlib.Path, reference: pathlib.Path | None) -> list[str]:
    """The Beam job on the day's raw file, validated against `reference` (the served run's data) if any."""
    validate = ["--validate_against", str(reference)] if reference else []
    return ["--dataset", DATASET, "--input", str(raw), "--output", str(data), *validate]


def search(data: pathlib.Path, out: pathlib.Path, overrides: Sequence[str] = ()) -> list[str]:
    """`trainer search`: a new OptFusion architecture (weekly, and on the first day)."""
    return ["search", "--data", str(data), "--out", str(out), *overrides]


def train(data: pathlib.Path, out: pathlib.Path, *, model: str | None, init: pathlib.Path | None,
          architecture: pathlib.Path | None = None, overrides: Sequence[str] = ()) -> list[str]:
    """The day's model: `retrain` of a new search's `architecture`, else `train` (a zoo `model`, or
    `init`'s design when `model` is None); warm-started from the run `init` (embedding rows by token)."""
    warm = [f"--init=run:{init}"] if init else []
    if architecture is not None:
        return ["retrain", "--data", str(data), "--architecture", str(architecture), "--mode", "hard",
                "--out", str(out), *warm, *overrides]
    design = ["--model", model] if model else []
    return ["train", "--data", str(data), *design, "--out", str(out), *warm, *overrides]


def evaluate(data: pathlib.Path, candidate: pathlib.Path, baseline: pathlib.Path | None) -> list[str]:
    """The blessing: `candidate` against `baseline` (the served run or model) on the day's held-out split."""
    against = ["--baseline", str(baseline)] if baseline else []
    return ["evaluate", "--data", str(data), "--candidate", str(candidate), *against]


def push(run: pathlib.Path, data: pathlib.Path, models: pathlib.Path, model_name: str = MODEL_NAME) -> list[str]:
    """`serving push`: the blessed run into the next version dir (refused without its BLESSED blessing.json)."""
    return ["push", "--run", str(run), "--blessing", str(run / BLESSING_FILE), "--data", str(data),
            "--model_base_path", str(models), "--model_name", model_name]


def versions(models: pathlib.Path, model_name: str = MODEL_NAME) -> list[int]:
    """The version dirs on disk, ascending (TF Serving's default policy serves the highest)."""
    model_dir = models / model_name
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit()) if model_dir.is_dir() else []


@dataclasses.dataclass(frozen=True)
class Served:
    """The served version and the run and pipeline data it was pushed from."""

    version: int
    run: pathlib.Path
    data: pathlib.Path


def record_push(layout: Layout, version: int, run: pathlib.Path, data: pathlib.Path) -> None:
    """Adds `version` -> (run, data) to PUSHED_FILE (written to a temp file, then renamed)."""
    doc = {str(v): {"run": r, "data": d} for v, (r, d) in pushed(layout).items()}
    doc[str(version)] = {"run": str(run), "data": str(data)}
    fd, tmp = tempfile.mkstemp(dir=layout.work, prefix=f".{PUSHED_FILE}.")
    with os.fdopen(fd, "w") as out:
        json.dump(doc, out, indent=1)
        out.write("\n")
    os.replace(tmp, layout.work / PUSHED_FILE)


def pushed(layout: Layout) -> dict[int, tuple[str, str]]:
    """PUSHED_FILE: version -> (run, data) of every push of this loop."""
    path = layout.work / PUSHED_FILE
    doc = json.loads(path.read_text()) if path.exists() else {}
    return {int(version): (entry["run"], entry["data"]) for version, entry in doc.items()}


def served(layout: Layout, model_name: str = MODEL_NAME) -> Served | None:
    """The highest version and its run, following `serving rollback` copies to their source version;
    None before the first push. A version this loop did not push (a hand push) is an error."""
    on_disk = versions(layout.models, model_name)
    if not on_disk:
        return None
    runs = pushed(layout)
    rollbacks_file = layout.models / model_name / ROLLBACK_FILE
    rollbacks = json.loads(rollbacks_file.read_text()) if rollbacks_file.exists() else []
    sources = {int(r["version"]): int(r["source"]) for r in rollbacks}
    version = on_disk[-1]
    while version not in runs and version in sources:
        version = sources[version]
    if version not in runs:
        raise LookupError(f"served version {on_disk[-1]} of {layout.models / model_name} was not pushed by "
                          f"this loop ({layout.work / PUSHED_FILE} does not name it): push it with the loop, "
                          "or roll back to one it did")
    run, data = runs[version]
    return Served(on_disk[-1], pathlib.Path(run), pathlib.Path(data))
