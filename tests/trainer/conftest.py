"""Session fixtures of the trainer tests."""

import pytest

from tests.trainer.synthetic import write_synthetic_run


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """A learnable 6-field pipeline-output dir (no Beam), shared by the session."""
    return write_synthetic_run(tmp_path_factory.mktemp("synthetic"))
