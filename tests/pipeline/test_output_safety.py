"""The output protocol: the DONE.json marker, --overwrite refusals, kept rejected rows, stale scratch dirs."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from pipeline.dataset_info import DatasetInfoError, read_dataset_info
from pipeline.errors import UsageError
from pipeline.features import DONE_FILE
from tests.conftest import GENERATED_ROWS, ROOT, run_pipeline


def _dead_pid() -> int:
    """The pid of a process that has exited (reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


def _partials(out: pathlib.Path) -> list[str]:
    return sorted(p.name for p in out.parent.glob(f".{out.name}.partial-*"))


class TestMarker:
    def test_reader_refuses_a_directory_without_marker_or_stats(self, tmp_path):
        (tmp_path / "train-00000-of-00001.tfrecord.gz").write_bytes(b"")
        with pytest.raises(DatasetInfoError, match=f"not a finished pipeline output.*{DONE_FILE}.*to completion"):
            read_dataset_info(tmp_path)

    def test_reader_refuses_a_marker_without_stats(self, tmp_path):
        (tmp_path / DONE_FILE).write_text("{}")
        with pytest.raises(DatasetInfoError, match="has DONE.json but no stats.json.*--overwrite"):
            read_dataset_info(tmp_path)


class TestOverwrite:
    def test_overwrite_refuses_a_folder_that_is_not_a_run(self, tmp_path):
        from pipeline.job import _check_output

        out = tmp_path / "out"
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        for overwrite in (False, True):
            with pytest.raises(UsageError, match="holds no finished pipeline run.*move its files away"):
                _check_output(out, overwrite=overwrite)
        (out / DONE_FILE).write_text("{}")
        _check_output(out, overwrite=True)
        with pytest.raises(UsageError, match="holds a finished run; pass --overwrite"):
            _check_output(out, overwrite=False)

    def test_cli_exits_2_and_keeps_the_users_files(self, tmp_path, criteo_generated_file):
        out = tmp_path / "out"
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        result = run_pipeline("--dataset", "criteo", "--input", str(criteo_generated_file),
                              "--output", str(out), "--overwrite", check=False)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "holds no finished pipeline run" in result.stderr
        assert (out / "notes.txt").read_text() == "mine" and not _partials(out)


class TestStalePartials:
    def test_removes_only_dead_scratch_dirs_of_its_own_output(self, tmp_path):
        from pipeline.scratch import remove_stale_partials

        dead = _dead_pid()
        names = {
            f".out.partial-{dead}-0123abcd": True,   # killed run of this output
            ".out.partial-0123abcd": True,           # pid-less scratch (older runs)
            f".out.partial-{os.getpid()}-0123abcd": False,  # a live run
            f".other.partial-{dead}-0123abcd": False,       # another output
            ".out.partial-notes": False,             # not this job's naming
            "out.partial-0123abcd": False,           # not hidden
        }
        for name in names:
            (tmp_path / name).mkdir()
            (tmp_path / name / "f").write_text("x")
        removed = remove_stale_partials(tmp_path / "out")
        assert sorted(p.name for p in removed) == sorted(n for n, gone in names.items() if gone)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, gone in names.items() if not gone)

    def test_a_new_scratch_name_is_recognized_and_kept_while_its_run_lives(self, tmp_path):
        from pipeline.scratch import remove_stale_partials, scratch_name

        live = tmp_path / scratch_name("out")
        live.mkdir()
        assert live.name.startswith(f".out.partial-{os.getpid()}-")
        assert remove_stale_partials(tmp_path / "out") == [] and live.is_dir()
        dead = tmp_path / live.name.replace(f"-{os.getpid()}-", f"-{_dead_pid()}-")
        live.rename(dead)
        assert remove_stale_partials(tmp_path / "out") == [dead] and not dead.exists()


def test_keep_rejected_moves_the_rows_beside_the_output(tmp_path):
    from pipeline.scratch import keep_rejected

    work = tmp_path / ".out.partial-1-0123abcd"
    (work / "rejected").mkdir(parents=True)
    (work / "rejected" / "bad_label-00000").write_text("2\tx\n")
    first = keep_rejected(work, tmp_path / "out")
    (work / "rejected").mkdir()
    second = keep_rejected(work, tmp_path / "out")
    assert first.parent == tmp_path and first.name.startswith("out.rejected-")
    assert (first / "bad_label-00000").read_text() == "2\tx\n"
    assert second != first and second.is_dir()
    assert keep_rejected(work, tmp_path / "out") is None


@pytest.mark.slow
class TestJobs:
    def test_failed_job_keeps_rejected_rows_and_names_them(self, tmp_path, injected_file):
        out = tmp_path / "out"
        result = run_pipeline("--dataset", "criteo", "--input", str(injected_file), "--output", str(out),
                              "--max_bad_fraction", "0", check=False)
        assert result.returncode == 1, result.stderr[-2000:]
        kept = [p for p in tmp_path.iterdir() if p.name.startswith("out.rejected-")]
        assert len(kept) == 1 and f"rejected rows are kept in {kept[0]}" in result.stderr
        assert b"yes\t1" in b"".join(p.read_bytes() for p in kept[0].rglob("*") if p.is_file())
        assert not out.exists() and not _partials(out)

    def test_kill_9_then_rerun_leaves_no_partial_dir(self, tmp_path, criteo_generated_file):
        out = tmp_path / "out"
        args = ["--dataset", "criteo", "--input", str(criteo_generated_file), "--output", str(out)]
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not _partials(out) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert proc.poll() is None and _partials(out), "the job ended before it could be killed"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        assert _partials(out) and not out.exists()
        run_pipeline(*args)
        assert not _partials(out)
        done = json.loads((out / DONE_FILE).read_text())
        assert done["rows"] == GENERATED_ROWS == json.loads((out / "stats.json").read_text())["rows"]
        assert read_dataset_info(out).fields
        first = (out / DONE_FILE).read_text()
        time.sleep(1.1)
        run_pipeline(*args, "--overwrite")
        assert (out / DONE_FILE).read_text() != first and not _partials(out)
        assert not [p for p in tmp_path.iterdir() if p.name != "out"]


def _copy_tree_to(src: pathlib.Path, uri: str, skip: tuple[str, ...] = ()) -> None:
    """Copies a local directory to a `tf.io.gfile` URI (a stand-in for an object store)."""
    import tensorflow as tf

    for path in sorted(src.rglob("*")):
        if path.is_file() and path.name not in skip:
            target = f"{uri}/{path.relative_to(src).as_posix()}"
            tf.io.gfile.makedirs(target.rsplit("/", 1)[0])
            tf.io.gfile.copy(str(path), target, overwrite=True)


class TestUriReader:
    """`ram://` (TensorFlow's in-memory filesystem) stands in for gs://: no rename, marker required."""

    def test_uri_needs_the_marker_even_with_stats(self, tmp_path):
        stats = {"dataset": "x", "label_key": "label", "fields": [{"name": "f", "vocab_size": 3}]}
        (tmp_path / "stats.json").write_text(json.dumps(stats))
        uri = f"ram://reader-{os.getpid()}/data"
        _copy_tree_to(tmp_path, uri)
        with pytest.raises(DatasetInfoError, match=f"{uri} is not a finished pipeline output: its DONE.json marker"):
            read_dataset_info(uri + "/")
        (tmp_path / DONE_FILE).write_text("{}")
        _copy_tree_to(tmp_path, uri, skip=("stats.json",))  # ram:// copies append rather than replace
        info = read_dataset_info(uri)
        assert info.data_dir == uri and info.field_names == ["f"]
        assert info.split_pattern("train") == f"{uri}/train-*.tfrecord.gz"

    @pytest.mark.slow
    def test_a_finished_run_is_read_through_the_uri(self, criteo_preprocessed_dir):
        import tensorflow as tf
        import tensorflow_transform as tft

        uri = f"ram://run-{os.getpid()}/data"
        _copy_tree_to(criteo_preprocessed_dir, uri)
        info = read_dataset_info(uri)
        assert info.vocab_sizes == read_dataset_info(criteo_preprocessed_dir).vocab_sizes
        local = sorted(p.name for p in criteo_preprocessed_dir.glob("train-*.tfrecord.gz"))
        assert [f.rsplit("/", 1)[1] for f in sorted(tf.io.gfile.glob(info.split_pattern("train")))] == local
        output = tft.TFTransformOutput(str(info.transform_output_dir))
        assert sorted(output.transformed_feature_spec()) == sorted([*info.field_names, info.label_key])


def test_uri_of_an_unknown_scheme_is_refused_not_written_locally(tmp_path, criteo_generated_file):
    """`--output foo://b/x` exits 2 naming the scheme and never becomes a local `foo:/b/x` directory
    (gs:// outputs are published to a GCS emulator in tests/test_gcs.py)."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "--dataset", "criteo", "--input", str(criteo_generated_file),
         "--output", "foo://bucket/out"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "--output foo://bucket/out: no Beam filesystem serves the scheme 'foo'" in result.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.dist
def test_direct_write_mode_end_to_end_with_worker_processes(tmp_path, criteo_generated_file, criteo_preprocessed_dir):
    """`--write_mode=direct` on a local directory standing in for the bucket, Beam workers in their own processes.

    The DirectRunner's multi_processing mode runs the graph in separate SDK
    worker processes, which write the records, rejected rows and partial
    stats into the scratch prefix beside the target (as Dataflow workers would
    on gs://); TFT writes its graph there; the launcher reads the stats back,
    publishes with DONE.json last and removes the scratch, all through Beam's
    FileSystems (tests/test_gcs.py runs those steps against a GCS emulator).
    """
    from pipeline import remote
    from trainer.data import make_dataset

    out = tmp_path / "bucket" / "criteo"
    run_pipeline("--dataset", "criteo", "--input", str(criteo_generated_file), "--output", str(out),
                 "--write_mode=direct", "--direct_running_mode=multi_processing", "--direct_num_workers=2")
    objects = remote.list_objects(out)
    assert DONE_FILE in objects and "stats.json" in objects
    assert any(n.startswith("transform_fn/") for n in objects) and any(n.startswith("train-") for n in objects)
    assert not [n for n in objects if n.startswith(("_partial_stats", "_tft_tmp", ".temp", "rejected"))]
    assert not _partials(out) and sorted(p.name for p in out.parent.iterdir()) == ["criteo"]
    stats = json.loads((out / "stats.json").read_text())
    local = json.loads((criteo_preprocessed_dir / "stats.json").read_text())
    assert stats["splits"] == local["splits"] and stats["rows"] + stats["rejected"]["total"] == GENERATED_ROWS
    vocab = [[(f["name"], f["vocab_size"]) for f in doc["fields"]] for doc in (stats, local)]
    assert vocab[0] == vocab[1]
    info = read_dataset_info(out)
    for split in info.splits:
        rows = sum(int(labels.shape[0]) for _, labels in make_dataset(info, split, 1024, shuffle=False))
        assert rows == stats["splits"][split]["rows"], split


@pytest.fixture(scope="module")
def nothing_to_learn_runs(tmp_path_factory) -> dict[str, tuple[pathlib.Path, subprocess.CompletedProcess]]:
    """Three jobs that must fail with exit 1, side by side: every row rejected by a wrong schema for the
    file (libFM lines expected, MovieLens CSV given), every row rejected for a wrong timestamp format,
    and a hashed 8:1:1 split of 7 rows (valid and test empty, nothing rejected)."""
    from tests.pipeline.conftest import EXAMPLE_DATA, run_pipelines

    schemas = ROOT / "schemas" / "examples"
    tmp = tmp_path_factory.mktemp("nothing_to_learn")
    ratings = EXAMPLE_DATA / "movielens_ratings.csv"
    bad_format = tmp / "bad_format.yaml"
    bad_format.write_text((schemas / "movielens.yaml").read_text().replace(
        "format: unix", 'format: "%Y-%m-%d %H:%M:%S"'))
    tiny = tmp / "tiny.csv"
    tiny.write_text("".join(ratings.read_text().splitlines(keepends=True)[:8]))
    jobs = {
        "wrong_schema": ["--schema", str(schemas / "libfm.yaml"), "--input", str(ratings)],
        "wrong_time_format": ["--schema", str(bad_format), "--input", str(ratings)],
        "empty_split": ["--schema", str(schemas / "movielens.yaml"), "--input", str(tiny)],
    }
    outs = {name: tmp / name / "out" for name in jobs}
    for out in outs.values():
        out.parent.mkdir()
    results = run_pipelines({name: [*args, "--output", str(outs[name])] for name, args in jobs.items()}, tmp,
                            check=False)
    return {name: (outs[name], results[name]) for name in jobs}


def _kept_lines(out: pathlib.Path) -> list[bytes]:
    (kept,) = [p for p in out.parent.iterdir() if p.name.startswith(f"{out.name}.rejected-")]
    return [line for p in sorted(kept.rglob("*")) if p.is_file() for line in p.read_bytes().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("case, reasons, lines", [("wrong_schema", "column_count=1501", 1501),
                                                  ("wrong_time_format", "bad_timestamp=1500", 1500)])
def test_all_rejected_exits_1_with_counts_and_keeps_the_rows(nothing_to_learn_runs, case, reasons, lines):
    """No TF traceback from analyzing an empty train split: the job's own check, the reasons, the first
    offending lines and every rejected row kept beside the (unwritten) output."""
    out, result = nothing_to_learn_runs[case]
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    message = result.stderr[result.stderr.index("pipeline: error: "):]
    assert f"all {lines} rows of " in message and f"were rejected ({reasons})" in message, message
    assert "first rejected lines:\n" in message and "'68,2,5.0,1514777107'" in message
    kept = _kept_lines(out)
    assert len(kept) == lines and b"68,2,5.0,1514777107" in kept
    assert f"the rejected rows are kept in {out}.rejected-" in message
    assert not out.exists() and not _partials(out)


@pytest.mark.slow
def test_an_empty_split_exits_1_naming_it(nothing_to_learn_runs):
    out, result = nothing_to_learn_runs["empty_split"]
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (message,) = [line for line in result.stderr.splitlines() if line.startswith("pipeline: error: ")]
    assert "empty split" in message and "rows per split: train " in message, message
    assert "an 8:1:1 hash split of so few rows leaves no rows there; give more rows" in message
    assert not out.exists() and not _partials(out)
    assert not [p for p in out.parent.iterdir() if p.name != "out"]  # nothing was rejected: nothing kept


def test_empty_split_messages_name_the_split_and_why():
    """Per split mode, the reason a split came out empty (the check runs before anything is published)."""
    from pipeline.job import EmptySplit, RunConfig, TooManyBadRows, check_not_empty, check_splits
    from pipeline.specs import load_spec

    config = RunConfig(spec=load_spec("criteo"), inputs=("a.csv", "b.csv"), output="o", time_field="t")

    def stats(rows: tuple[int, int, int], split: dict, lines: int = 100, rejected: int = 0) -> dict:
        return {"rows": sum(rows), "inputs": [{"lines": lines}], "rejected": {"bad_label": rejected, "total": rejected},
                "splits": {s: {"rows": n} for s, n in zip(("train", "valid", "test"), rows, strict=True)},
                "split": split}

    with pytest.raises(TooManyBadRows, match=r"all 100 rows of a.csv, b.csv were rejected \(bad_label=100\)"):
        check_not_empty(stats((0, 0, 0), {"mode": "hash"}, rejected=100), config)
    with pytest.raises(EmptySplit, match="a.csv, b.csv hold no rows"):
        check_not_empty(stats((0, 0, 0), {"mode": "hash"}, lines=0), config)
    time_split = {"mode": "time", "valid_from": 5, "test_from": 5}
    with pytest.raises(EmptySplit, match=r"empty split valid \(rows per split: train 80, valid 0, test 20\): the "
                                         r"time cut-offs \(valid from 5, test from 5\).*t has too few distinct"):
        check_splits(stats((80, 0, 20), time_split), config)
    given = {"mode": "given", "inputs": {"train": ["a.csv"], "valid": ["b.csv"], "test": ["c.csv"]}}
    with pytest.raises(EmptySplit, match=r"empty splits valid, test .*the --input of valid \(b.csv\) holds no "
                                         r"valid rows; the --input of test \(c.csv\)"):
        check_splits(stats((80, 0, 0), given), config)
    check_splits(stats((80, 10, 10), {"mode": "hash"}), config)
