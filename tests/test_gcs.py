"""Pipeline outputs on gs://, against a GCS emulator the test starts and stops (127.0.0.1, by PID).

TensorFlow's own gs:// client cannot be pointed at an emulator, so these
tests cover the path that can: Beam's FileSystems publish (marker last) and
`pipeline.remote.local_view` staging for the trainer and export
(docs/SCALING.md, "Object stores").
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import numpy as np
import pytest

from pipeline import remote
from pipeline.dataset_info import STATS_FILE, DatasetInfoError, read_dataset_info
from pipeline.errors import UsageError
from pipeline.features import DONE_FILE
from tests.conftest import GENERATED_ROWS, run_pipeline

BUCKET = "optfusion-test"


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    """The GCS emulator on a free 127.0.0.1 port for this module, stopped by PID at its end."""
    pytest.importorskip("gcp_storage_emulator", reason="gcp-storage-emulator is not installed (test extra)")
    with remote.local_emulator(BUCKET) as host:
        yield host


@pytest.fixture(scope="module")
def published(emulator, criteo_preprocessed_dir) -> str:
    """The session's preprocessed Criteo output, published to gs:// (no second Beam run)."""
    uri = f"gs://{BUCKET}/published/criteo"
    remote.publish(criteo_preprocessed_dir, uri)
    return uri


def _records(info, split: str) -> list[bytes]:
    import tensorflow as tf

    from trainer.data import split_files

    return [r.numpy() for r in tf.data.TFRecordDataset(split_files(info, split), compression_type="GZIP")]


def test_tf_cannot_reach_the_emulator_so_gs_is_staged(emulator):
    assert not remote.tf_can_read(f"gs://{BUCKET}/x")
    assert remote.tf_can_read("/local/dir") and remote.tf_can_read("ram://x")
    assert remote.local_view("/local/dir") == "/local/dir"


@pytest.mark.slow
def test_beam_job_writes_gs_with_marker_last(emulator, criteo_generated_file, tmp_path):
    uri = f"gs://{BUCKET}/job/criteo"
    run_pipeline("--dataset", "criteo", "--input", str(criteo_generated_file), "--output", uri)
    objects = remote.list_objects(uri)
    assert DONE_FILE in objects and STATS_FILE in objects
    assert any(name.startswith("transform_fn/") for name in objects)
    assert any(name.startswith("train-") and name.endswith(".tfrecord.gz") for name in objects)
    done = json.loads(remote.read_bytes(f"{uri}/{DONE_FILE}"))
    assert done["rows"] + done["rejected"] == GENERATED_ROWS
    info = read_dataset_info(remote.local_view(uri, tmp_path / "cache"))
    assert sum(len(_records(info, split)) for split in info.splits) == done["rows"]
    again = run_pipeline("--dataset", "criteo", "--input", str(criteo_generated_file), "--output", uri, check=False)
    assert again.returncode == 2 and "pass --overwrite" in again.stderr


def test_trainer_reads_the_staged_records(published, criteo_preprocessed_dir, tmp_path):
    from trainer.data import make_dataset

    view = remote.local_view(published, tmp_path / "cache")
    assert view != published
    info, local = read_dataset_info(view), read_dataset_info(criteo_preprocessed_dir)
    for split in info.splits:
        assert _records(info, split) == _records(local, split)
    stats = json.loads((criteo_preprocessed_dir / STATS_FILE).read_text())
    batches = list(make_dataset(info, "train", 512))
    assert sum(int(labels.shape[0]) for _, labels in batches) == stats["splits"]["train"]["rows"]
    assert remote.local_view(published, tmp_path / "cache") == view  # same marker: the cached copy


def test_export_reads_the_staged_transform_graph(published, criteo_preprocessed_dir, tmp_path):
    import tensorflow as tf
    import tensorflow_transform as tft

    from serving.examples import serialize_rows
    from serving.export import synthetic_rows

    info = read_dataset_info(remote.local_view(published, tmp_path / "cache"))
    staged = tft.TFTransformOutput(str(info.transform_output_dir))
    local = tft.TFTransformOutput(str(criteo_preprocessed_dir))
    raw_spec = {k: v for k, v in local.raw_feature_spec().items() if k != "label"}
    serialized = tf.constant(serialize_rows(synthetic_rows(raw_spec, 64, seed=3)))
    raw = tf.io.parse_example(serialized, raw_spec)
    got = staged.transform_features_layer()(dict(raw))
    want = local.transform_features_layer()(dict(raw))
    assert set(got) == set(want) and len(got) >= 39
    for name in want:
        np.testing.assert_array_equal(got[name].numpy(), want[name].numpy())


def test_output_without_marker_is_refused(emulator, criteo_preprocessed_dir, tmp_path):
    uri = f"gs://{BUCKET}/unfinished/criteo"
    remote.publish(criteo_preprocessed_dir, uri)
    remote._filesystems().delete([f"{uri}/{DONE_FILE}"])
    cache = tmp_path / "cache"
    with pytest.raises(DatasetInfoError, match=f"not a finished pipeline output.*{DONE_FILE}"):
        remote.local_view(uri, cache)
    assert not cache.exists() or not any(cache.iterdir())
    for overwrite in (False, True):
        with pytest.raises(UsageError, match="no finished pipeline run"):
            remote.publish(criteo_preprocessed_dir, uri, overwrite=overwrite)


def test_republish_needs_overwrite_and_gets_a_new_cache_entry(emulator, criteo_preprocessed_dir, tmp_path):
    uri = f"gs://{BUCKET}/republished/criteo"
    remote.publish(criteo_preprocessed_dir, uri)
    cache = tmp_path / "cache"
    first = remote.local_view(uri, cache)
    with pytest.raises(UsageError, match="pass --overwrite"):
        remote.publish(criteo_preprocessed_dir, uri)
    changed = tmp_path / "changed"
    changed.mkdir()
    for path in criteo_preprocessed_dir.rglob("*"):
        if path.is_file():
            target = changed / path.relative_to(criteo_preprocessed_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    done = json.loads((changed / DONE_FILE).read_text())
    done["finished_utc"] = "2000-01-01T00:00:00Z"
    (changed / DONE_FILE).write_text(json.dumps(done))
    (changed / "extra.txt").write_text("new run")
    remote.publish(changed, uri, overwrite=True)
    second = remote.local_view(uri, cache)
    assert second != first and (second / "extra.txt").read_text() == "new run"
    assert not (first / "extra.txt").exists()


@pytest.mark.slow
def test_trainer_cli_trains_from_gs_and_refuses_an_unfinished_prefix(emulator, criteo_preprocessed_dir, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    uri = f"gs://{BUCKET}/cli/criteo"
    remote.publish(criteo_preprocessed_dir, uri)
    env = {**os.environ, remote.CACHE_ENV: str(tmp_path / "cache")}

    def trainer(out: str) -> subprocess.CompletedProcess:
        code = "import sys; from trainer.cli import main; sys.exit(main())"
        return subprocess.run([sys.executable, "-c", code, "--stage=train", "--model", "lr", "--data", uri,
                               "--out", str(tmp_path / out), "--train.epochs=1"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)

    done = trainer("run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "run.json").is_file()
    remote._filesystems().delete([f"{uri}/{DONE_FILE}"])
    refused = trainer("run2")
    assert refused.returncode == 2 and "DONE.json marker, written last, is missing" in refused.stderr
