"""Session fixtures of the trainer tests."""

import pytest

from tests.trainer.synthetic import write_synthetic_run


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """A learnable 6-field pipeline-output dir (no Beam), shared by the session."""
    return write_synthetic_run(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def multivalued_dir(tmp_path_factory):
    """The synthetic dir plus a multi-valued field `seq` (1-4 ids, padded to 4) that drives the label."""
    return write_synthetic_run(tmp_path_factory.mktemp("multivalued"), seq_len=4)


@pytest.fixture(scope="session")
def multivalued_run(multivalued_dir, tmp_path_factory):
    """`trainer --stage=train --model dcn` (the supernet, Hard) on multivalued_dir: a finished run."""
    from trainer import cli
    from trainer.config import preset_path

    out = tmp_path_factory.mktemp("multivalued_run") / "run"
    code = cli.main(["--stage=train", "--model", "dcn", "--data", str(multivalued_dir), "--config",
                     str(preset_path("criteo", "cpu")), "--out", str(out), "--model.emb_dim=4",
                     "--train.batch_size=128", "--train.epochs=3", "--train.patience=3"])
    assert code == 0
    return out
