"""Pipeline outputs on gs://, against a GCS emulator the test starts and stops (127.0.0.1, by PID).

TensorFlow's own gs:// client cannot be pointed at an emulator, so these
tests cover the path that can: Beam's FileSystems publish (marker last),
`pipeline.remote.local_view` staging for the trainer and export
(docs/SCALING.md, "Object stores"), and each FileSystems step of a direct
run (`--write_mode=direct`; what cannot reach the emulator is said below).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import replace as dataclasses_replace

import numpy as np
import pytest

from pipeline import remote
from pipeline.dataset_info import STATS_FILE, DatasetInfoError, read_dataset_info
from pipeline.errors import UsageError
from pipeline.features import DONE_FILE
from tests.conftest import GENERATED_ROWS, run_pipeline
from tests.gcs_emulator import local_emulator

BUCKET = "optfusion-test"


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    """The GCS emulator on a free 127.0.0.1 port for this module, stopped by PID at its end."""
    pytest.importorskip("gcp_storage_emulator", reason="gcp-storage-emulator is not installed (test extra)")
    with local_emulator(BUCKET) as host:
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


# --- direct writes (`--write_mode=direct`): every step that goes through Beam's FileSystems ---------------
#
# What cannot reach the emulator, and is therefore not run against it here: TFT writes
# transform_fn/, the metadata and its temp dir through tf.io.gfile (TensorFlow's gs:// client has
# the Google endpoints compiled in), and Beam's file sinks (WriteToFiles, WriteToText) finalize with
# FileSystems.rename, i.e. batched GCS copies that the emulator answers 404. So the scratch prefix is
# filled here through FileSystems with a real local run's records and graph, and partial stats in
# the Beam graph's format; the Beam job itself writing a direct scratch runs in
# tests/pipeline/test_output_safety.py (a local directory standing in for the bucket, separate
# worker processes). Real GCS is needed to see the workers' and TFT's writes to gs:// (BUILD.md).


def _direct_config(uri: str, **kwargs):
    from pipeline.job import RunConfig
    from pipeline.specs import load_spec

    return RunConfig(spec=load_spec("criteo"), inputs=("train.txt",), output=uri, write_mode="direct", **kwargs)


def _fill_scratch(work: str, run_dir, rejected: int = 0) -> dict:
    """A direct scratch as the workers leave it: a real run's records and graph, partial stats, rejected rows."""
    import dataclasses

    from pipeline.distributions import OTHER_BIN, histogram_file
    from pipeline.job_spec import INPUT_COUNTS_FILE, STATS_TMP, SplitStats, split_stats_file

    stats = json.loads((run_dir / STATS_FILE).read_text())
    names = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                   if p.is_file() and p.name not in (STATS_FILE, DONE_FILE))
    remote.copy_objects(str(run_dir), work, names)
    fields = [f["name"] for f in stats["fields"]]
    rows = {split: s["rows"] for split, s in stats["splits"].items()}
    for split, s in stats["splits"].items():
        doc = SplitStats(s["rows"], s["positives"], dict.fromkeys(fields, 0), dict.fromkeys(fields, 0),
                         dict.fromkeys(fields, s["rows"]))
        path = f"{work}/{STATS_TMP}/{split_stats_file(split)}"
        remote.write_bytes(path, json.dumps(dataclasses.asdict(doc)).encode())
        histograms = {name: [0] * OTHER_BIN + [s["rows"]] for name in fields}  # every row a value beyond the top
        remote.write_bytes(f"{work}/{STATS_TMP}/{histogram_file(split)}", json.dumps(histograms).encode())
    counts = [{"path": "train.txt", "lines": sum(rows.values()) + rejected,
               "rejected": {"bad_label": rejected}, "parsed": rows}]
    remote.write_bytes(f"{work}/{STATS_TMP}/{INPUT_COUNTS_FILE}", json.dumps(counts).encode())
    remote.write_bytes(f"{work}/_tft_tmp/tftransform_tmp/x", b"TFT temp")
    if rejected:
        remote.write_bytes(f"{work}/rejected/bad_label-00000-of-00001.txt", b"2\tx\n" * rejected)
    return stats


def _direct_job(config, work: str):
    from pipeline.job_spec import JobSpec

    return JobSpec(spec=config.spec, ranges=(), layouts={}, work_dir=work)


@pytest.fixture
def copy_log(monkeypatch) -> list[tuple[str, str, list[str]]]:
    """("copy"|"delete", target prefix, object names) of every copy and delete through pipeline.remote, in order."""
    log: list[tuple[str, str, list[str]]] = []
    copy, delete = remote.copy_objects, remote.delete_objects

    def logged_copy(src, dst, names):
        log.append(("copy", dst, list(names)))
        copy(src, dst, names)

    def logged_delete(uri, names):
        log.append(("delete", uri, list(names)))
        delete(uri, names)

    monkeypatch.setattr(remote, "copy_objects", logged_copy)
    monkeypatch.setattr(remote, "delete_objects", logged_delete)
    return log


def test_direct_is_the_default_off_the_direct_runner(emulator):
    from pipeline.job import write_mode
    from pipeline.scratch import direct_target

    uri = f"gs://{BUCKET}/modes/criteo"
    for runner, mode in [("DirectRunner", "staged"), ("DataflowRunner", "direct"), ("FlinkRunner", "direct"),
                         ("direct", "staged"), ("PrismRunner", "staged")]:
        config = dataclasses_replace(_direct_config(uri), write_mode="auto", beam_args=(f"--runner={runner}",))
        assert write_mode(config) == mode, runner
        assert write_mode(dataclasses_replace(config, output="/tmp/x")) == "local"
    forced = dataclasses_replace(_direct_config("/tmp/x"), beam_args=("--runner=DataflowRunner",))
    assert write_mode(forced) == "direct"
    assert write_mode(dataclasses_replace(forced, write_mode="staged", output=uri)) == "staged"
    with pytest.raises(UsageError, match="name a prefix inside the bucket"):
        direct_target(f"gs://{BUCKET}")


def test_direct_output_is_refused_where_tft_cannot_write_and_unmarked_prefixes_too(emulator, criteo_generated_file):
    from pipeline.job import prepare

    uri = f"gs://{BUCKET}/refused/criteo"
    config = dataclasses_replace(_direct_config(uri), inputs=(str(criteo_generated_file),), write_mode="auto",
                                 beam_args=("--runner=DataflowRunner",))
    with pytest.raises(UsageError, match=r"written directly by the Beam workers \(--write_mode=direct, the default "
                                         r"for DataflowRunner\): TFT writes .* cannot be pointed at the emulator"):
        prepare(config)
    assert not remote.list_objects(f"gs://{BUCKET}/refused")
    with pytest.raises(UsageError, match="--output foo://b/x: no Beam filesystem serves the scheme 'foo'"):
        prepare(dataclasses_replace(config, output="foo://b/x"))
    remote.write_bytes(f"{uri}/notes.txt", b"mine")
    for overwrite in (False, True):
        with pytest.raises(UsageError, match="holds 1 objects but no finished pipeline run"):
            prepare(dataclasses_replace(config, overwrite=overwrite))
    assert remote.list_objects(f"gs://{BUCKET}/refused") == {"criteo/notes.txt": 4}


def test_direct_finish_reads_stats_back_and_publishes_marker_last(emulator, criteo_preprocessed_dir, copy_log,
                                                                  tmp_path):
    from pipeline.job import finish, scratch_for
    from pipeline.scratch import DirectScratch
    from trainer.data import make_dataset

    uri = f"gs://{BUCKET}/direct/criteo"
    config = _direct_config(uri)
    work = f"gs://{BUCKET}/direct/.criteo.partial-1-0123abcd"
    want = _fill_scratch(work, criteo_preprocessed_dir)
    job = _direct_job(config, work)
    scratch = scratch_for(config, job)
    assert isinstance(scratch, DirectScratch) and scratch.output == uri
    stats = finish(job, config, scratch, seconds=1.0)
    scratch.discard()
    assert stats["splits"] == want["splits"] and stats["rows"] == want["rows"]
    assert {f["name"]: f["vocab_size"] for f in stats["fields"]} == {f["name"]: f["vocab_size"] for f in want["fields"]}
    assert stats["fingerprint"] == want["fingerprint"]  # the graph read back through Beam's FileSystems
    published = [(op, names) for op, target, names in copy_log if target == uri]
    assert published[-1] == ("copy", [DONE_FILE]) and all(DONE_FILE not in names for _, names in published[:-1])
    objects = remote.list_objects(uri)
    assert DONE_FILE in objects and STATS_FILE in objects and any(n.startswith("transform_fn/") for n in objects)
    assert not [n for n in objects if n.startswith(("_partial_stats", "_tft_tmp", "rejected"))]
    assert not remote.list_objects(work)  # the scratch prefix is gone
    assert json.loads(remote.read_bytes(f"{uri}/{STATS_FILE}"))["rows"] == want["rows"]
    info = read_dataset_info(remote.local_view(uri, tmp_path / "cache"))
    train_rows = sum(int(labels.shape[0]) for _, labels in make_dataset(info, "train", 1024))
    assert train_rows == want["splits"]["train"]["rows"]

    # A second run replaces it only with --overwrite, and the old marker goes first.
    work2 = f"gs://{BUCKET}/direct/.criteo.partial-2-0123abcd"
    _fill_scratch(work2, criteo_preprocessed_dir)
    with pytest.raises(UsageError, match="pass --overwrite"):  # checked again at publish time
        finish(_direct_job(config, work2), config, DirectScratch(work2, uri), seconds=1.0)
    assert remote.read_bytes(f"{uri}/{DONE_FILE}")  # the first run is untouched
    DirectScratch(work2, uri).discard()
    _fill_scratch(work2, criteo_preprocessed_dir)
    copy_log.clear()
    overwrite = dataclasses_replace(config, overwrite=True)
    finish(_direct_job(overwrite, work2), overwrite, DirectScratch(work2, uri), seconds=1.0)
    published = [(op, names) for op, target, names in copy_log if target == uri]
    assert published[0] == ("delete", [DONE_FILE]) and published[1][0] == "delete"  # old marker first, then the rest
    assert published[-1] == ("copy", [DONE_FILE]) and all(DONE_FILE not in names for _, names in published[1:-1])


def test_failed_direct_runs_leave_no_marker(emulator, criteo_preprocessed_dir, monkeypatch):
    from pipeline.job import TooManyBadRows, finish
    from pipeline.scratch import DirectScratch

    uri = f"gs://{BUCKET}/failed/criteo"
    config = _direct_config(uri)
    work = f"gs://{BUCKET}/failed/.criteo.partial-1-0123abcd"
    _fill_scratch(work, criteo_preprocessed_dir, rejected=5000)
    scratch = DirectScratch(work, uri)
    with pytest.raises(TooManyBadRows, match=f"rejected rows are kept in {uri}.rejected-"):
        finish(_direct_job(config, work), config, scratch, seconds=1.0)
    scratch.discard()
    objects = remote.list_objects(f"gs://{BUCKET}/failed")
    assert not remote.list_objects(uri) and not remote.list_objects(work)
    kept = [n for n in objects if n.startswith("criteo.rejected-")]
    assert len(kept) == 1 and kept[0].endswith("/bad_label-00000-of-00001.txt")

    # Publishing interrupted before the marker: the objects are there, readers refuse them.
    _fill_scratch(work, criteo_preprocessed_dir)
    copy = remote.copy_objects

    def fail_on_marker(src, dst, names):
        if DONE_FILE in names:
            raise OSError("connection reset")
        copy(src, dst, names)

    monkeypatch.setattr(remote, "copy_objects", fail_on_marker)
    with pytest.raises(OSError, match="connection reset"):
        finish(_direct_job(config, work), config, scratch, seconds=1.0)
    scratch.discard()
    assert STATS_FILE in remote.list_objects(uri) and DONE_FILE not in remote.list_objects(uri)
    with pytest.raises(DatasetInfoError, match="DONE.json marker, written last, is missing"):
        remote.local_view(uri)


def test_stale_direct_scratch_prefixes_are_removed_by_age_only(emulator):
    import time

    from pipeline.scratch import remove_stale_prefixes

    parent = f"gs://{BUCKET}/stale"
    names = {
        ".out.partial-123-0123abcd": True,   # a run of this output (its pid says nothing here)
        ".out.partial-0123abcd": True,       # pid-less naming
        ".other.partial-1-0123abcd": False,  # another output
        ".out.partial-notes": False,         # not the job's naming
        "out": False,                        # the output itself
    }
    for name in names:
        remote.write_bytes(f"{parent}/{name}/a/b.txt", b"x")
    assert remove_stale_prefixes(f"{parent}/out", max_age_s=3600) == []
    removed = remove_stale_prefixes(f"{parent}/out", max_age_s=3600, now=time.time() + 7200)
    assert removed == sorted(f"{parent}/{n}" for n, gone in names.items() if gone)
    left = {n.split("/", 1)[0] for n in remote.list_objects(parent)}
    assert left == {n for n, gone in names.items() if not gone}
