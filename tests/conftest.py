"""Session-wide fixtures shared by every part's tests.

The preprocessing job has about a minute of fixed cost, so it runs once per
session here and every test that needs preprocessed data reuses the result.
"""

from __future__ import annotations

import pathlib
import random
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
GENERATED_ROWS = 20_000
GENERATED_SEED = 0
CRITEO_SAMPLE = "criteo/train_head10k.tsv"


def run_pipeline(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Runs the `pipeline` CLI in a subprocess (a TFT run may segfault at interpreter exit)."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"pipeline {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


def shared_data(relative: str) -> pathlib.Path:
    """Path of a file under ../shared/data, or skip the test naming the missing path."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"shared data {path} is absent")
    return path


@pytest.fixture(scope="session")
def criteo_generated_file(tmp_path_factory) -> pathlib.Path:
    """A generated raw Criteo TSV (20k rows, seed 0): TAB, no header, label I1..I13 C1..C26."""
    from pipeline.generate import generate

    path = tmp_path_factory.mktemp("criteo_generated") / "train.txt"
    generate(GENERATED_ROWS, path, seed=GENERATED_SEED, progress=False)
    return path


@pytest.fixture(scope="session")
def criteo_runs(criteo_generated_file, tmp_path_factory) -> dict[str, pathlib.Path]:
    """`pipeline --dataset criteo` on the generated file and, where ../shared/data has it, on the
    real 10k-row sample, side by side (finished output dirs by name). Much of each run's fixed cost
    is one thread: both at once took 119 s against 69 + 64 s one after the other (2 loaded cores)."""
    from tests.pipeline.conftest import run_pipelines

    sources = {"generated": criteo_generated_file, "sample": SHARED_DATA / CRITEO_SAMPLE}
    sources = {name: path for name, path in sources.items() if path.exists()}
    tmp = tmp_path_factory.mktemp("criteo_runs")
    outs = {name: tmp / name / "data" for name in sources}
    run_pipelines({name: ["--dataset", "criteo", "--input", str(path), "--output", str(outs[name])]
                   for name, path in sources.items()}, tmp)
    return outs


@pytest.fixture(scope="session")
def criteo_other_seed_dir(criteo_generated_file, tmp_path_factory) -> pathlib.Path:
    """`pipeline --dataset criteo --seed 1` on `criteo_generated_file`: the schema and fields of
    `criteo_preprocessed_dir` but another split, so other vocabularies and another transform fingerprint."""
    out = tmp_path_factory.mktemp("criteo_other_seed") / "data"
    run_pipeline("--dataset", "criteo", "--input", str(criteo_generated_file), "--output", str(out), "--seed", "1")
    return out


@pytest.fixture(scope="session")
def criteo_preprocessed_dir(criteo_runs) -> pathlib.Path:
    """`pipeline --dataset criteo` run on `criteo_generated_file`; the finished output dir."""
    return criteo_runs["generated"]


@pytest.fixture(scope="session")
def criteo_sample_dir(criteo_runs) -> pathlib.Path:
    """`pipeline --dataset criteo` on ../shared/data/criteo/train_head10k.tsv (skips where absent)."""
    shared_data(CRITEO_SAMPLE)
    return criteo_runs["sample"]


@pytest.fixture(scope="session")
def criteo_run_dir(criteo_preprocessed_dir, tmp_path_factory) -> pathlib.Path:
    """A tiny Soft retrain (every edge, every op mixed) of the preprocessed Criteo data: a finished run
    that the serving contract tests export and the scoring tests reuse (one training, not one each)."""
    from trainer.architecture import (
        Architecture,
        candidate_inputs,
        connectable_components,
        fusing_components,
    )
    from trainer.cli import run

    out = tmp_path_factory.mktemp("criteo_retrain")
    n, rng = 2, random.Random(0)
    Architecture(
        n=n,
        alpha={c: {s: 0.5 for s in candidate_inputs(c, n)} for c in connectable_components(n)},
        beta={c: [rng.gauss(0, 1) for _ in range(4)] for c in fusing_components(n)},
        description="every edge, a soft mix of every op",
    ).save(out / "arch.json")
    run(["--stage=retrain", "--data", str(criteo_preprocessed_dir), "--architecture",
         str(out / "arch.json"), "--mode", "soft", "--out", str(out / "run"), "--model.n=2",
         "--model.emb_dim=4", "--train.epochs=1", "--train.max_steps_per_epoch=5",
         "--train.batch_size=256"])
    return out / "run"
