"""Session-wide fixtures shared by every part's tests.

The preprocessing job has about a minute of fixed cost, so it runs once per
session here and every test that needs preprocessed data reuses the result.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
GENERATED_ROWS = 20_000
GENERATED_SEED = 0


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
def criteo_preprocessed_dir(criteo_generated_file, tmp_path_factory) -> pathlib.Path:
    """`pipeline --dataset criteo` run on `criteo_generated_file`; the finished output dir."""
    out = tmp_path_factory.mktemp("criteo_preprocessed") / "data"
    run_pipeline("--dataset", "criteo", "--input", str(criteo_generated_file), "--output", str(out))
    return out
