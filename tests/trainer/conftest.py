"""Session fixtures of the trainer tests."""

import pytest

from tests.trainer.synthetic import write_synthetic_run


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """A learnable 6-field pipeline-output dir (no Beam), shared by the session."""
    return write_synthetic_run(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def criteo_sample_dir(tmp_path_factory):
    """`pipeline --dataset criteo` on ../shared/data/criteo/train_head10k.tsv (skips where absent)."""
    from tests.conftest import run_pipeline, shared_data

    source = shared_data("criteo/train_head10k.tsv")
    out = tmp_path_factory.mktemp("criteo_sample") / "data"
    run_pipeline("--dataset", "criteo", "--input", str(source), "--output", str(out))
    return out
