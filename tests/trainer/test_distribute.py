"""Multi-worker and parameter-server training on loopback: 2 worker processes
with TF_CONFIG (or 1 chief + 2 workers + 2 ps), the search stage on a 4-shard
copy of the synthetic data (each multi_worker worker reads 2 files); and 2 or
3 workers (or 1 chief + 2 workers + 1 ps) training lr on a `pipeline` run with
one file per split, fewer files than workers.

The 2-worker run uses the same global batch as the single-process run, but
each step's examples differ (worker k's half comes from its own files, the
single process interleaves all four), so the runs are two SGD trajectories on
the same data, not one: their validation AUCs agree to 0.02, a tenth of the
margin over chance (the synthetic task reaches ~0.8), and a broken all-reduce
or sharding (each worker training alone, or on every file) shows as a larger gap
or a different number of steps.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.features import SPLIT_NAMES
from tests.conftest import CRITEO_SAMPLE, SHARED_DATA, run_pipeline
from tests.trainer.synthetic import write_synthetic_run
from trainer import cli, distribute
from trainer.config import preset_path

ARGS = ["--stage=search", "--config", str(preset_path("criteo", "cpu")), "--model.emb_dim=4", "--model.n=2",
        "--model.att_dim=8", "--train.batch_size=128", "--train.patience=3", "--search.arch_lr=0.05"]
DEADLINE_S = 300  # a bound for hangs: on 2 shared cores at load 10+ one epoch of 94 batches took 100 s


@pytest.fixture(scope="module")
def four_shard_dir(tmp_path_factory):
    return write_synthetic_run(tmp_path_factory.mktemp("four_shards"), shards=4)


@pytest.fixture(scope="module")
def single_history(four_shard_dir, tmp_path_factory):
    """The single-process search both cluster runs are compared with (2 epochs)."""
    single = tmp_path_factory.mktemp("single") / "run"
    assert cli.main([*ARGS, "--data", str(four_shard_dir), "--out", str(single), "--train.epochs=2"]) == 0
    return _history(single)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start(data, out, tf_config, log_name, *extra, args=ARGS):
    """One `trainer` process of a cluster, its output appended to `log_name` beside `out`."""
    env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "trainer.cli", *args, "--data", str(data), "--out", str(out), *extra]
    with open(out.parent / log_name, "a") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def _start_workers(data, out, *extra, count=2, args=ARGS):
    """`count` `trainer --strategy=multi_worker` processes on free loopback ports."""
    workers = [f"127.0.0.1:{p}" for p in _free_ports(count)]
    return [_start(data, out, {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}},
                   f"worker{index}.log", "--strategy=multi_worker", *extra, args=args) for index in range(count)]


def _wait(procs, timeout):
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(deadline - time.monotonic(), 0.1)) for p in procs]
    finally:
        _kill(procs)


def _kill(procs):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()


def _history(out):
    return json.loads((out / "checkpoints/search/state.json").read_text())["history"]


@pytest.mark.slow
@pytest.mark.dist  # several processes with TF_CONFIG: `make test-dist`
def test_two_workers_match_one_process(four_shard_dir, single_history, tmp_path):
    out = tmp_path / "multi"
    codes = _wait(_start_workers(four_shard_dir, out, "--train.epochs=2"), DEADLINE_S)
    assert codes == [0, 0], (tmp_path / "worker0.log").read_text()[-3000:]
    got, want = _history(out), single_history
    assert [h["epoch"] for h in got] == [1, 2]
    for g, w in zip(got, want, strict=True):
        assert g["valid_auc"] == pytest.approx(w["valid_auc"], abs=0.02)
        assert g["train_loss"] == pytest.approx(w["train_loss"], abs=0.02)
    assert (out / "architecture.json").is_file()
    # The other worker wrote beside the chief's run dir, not into it; its weights equal the chief's.
    assert (tmp_path / ".multi.worker-1" / "checkpoints/search/state.json").is_file()
    other = _history(tmp_path / ".multi.worker-1")
    assert [h["valid_auc"] for h in other] == [h["valid_auc"] for h in got]
    print("2 workers:", got, "\n1 process:", want)


@pytest.mark.slow
@pytest.mark.dist  # several processes with TF_CONFIG: `make test-dist`
def test_killed_worker_job_resumes_from_last_checkpoint(four_shard_dir, tmp_path):
    out = tmp_path / "killed"
    procs = _start_workers(four_shard_dir, out, "--train.epochs=3", "--train.batch_size=32")
    state = out / "checkpoints/search/state.json"
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not state.exists() and all(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state.exists(), (tmp_path / "worker0.log").read_text()[-3000:]
        time.sleep(0.2)  # into epoch 2
        procs[1].send_signal(signal.SIGKILL)  # the worker dies; the chief cannot step without it
    finally:
        _kill(procs)
    first = _history(out)
    assert 1 <= len(first) < 3

    codes = _wait(_start_workers(four_shard_dir, out, "--train.epochs=3", "--train.batch_size=32", "--resume"),
                  DEADLINE_S)
    assert codes == [0, 0], (tmp_path / "worker0.log").read_text()[-3000:]
    resumed = _history(out)
    assert [h["epoch"] for h in resumed] == [1, 2, 3]
    assert resumed[: len(first)] == first  # restored from the checkpoint, not retrained


@pytest.fixture(scope="module")
def one_file_dir(request, tmp_path_factory):
    """`pipeline --output_shards 1` on the 10k-row Criteo sample (the generated file where
    ../shared/data lacks it): one file per split, fewer than the workers."""
    source = SHARED_DATA / CRITEO_SAMPLE
    if not source.exists():
        source = request.getfixturevalue("criteo_generated_file")
    out = tmp_path_factory.mktemp("one_file") / "data"
    run_pipeline("--dataset", "criteo", "--input", str(source), "--output", str(out), "--output_shards", "1")
    for split in SPLIT_NAMES:
        assert len(list(out.glob(f"{split}-*.tfrecord.gz"))) == 1, sorted(p.name for p in out.iterdir())
    return out


@pytest.fixture(scope="module")
def one_file_args(one_file_dir):
    """lr for 2 epochs, with a batch size that leaves 1 row for the train split's last
    batch: under 2 or 3 workers some replicas get none of it."""
    rows = json.loads((one_file_dir / "stats.json").read_text())["splits"]["train"]["rows"]
    batch = next((b for b in range(128, 2048) if rows % b == 1), None)
    assert batch is not None, f"no batch size in [128, 2048) leaves 1 of {rows} train rows"
    return ["--stage=train", "--model=lr", "--config", str(preset_path("criteo", "cpu")), "--train.epochs=2",
            f"--train.batch_size={batch}"]


@pytest.fixture(scope="module")
def one_file_single(one_file_dir, one_file_args, tmp_path_factory):
    """The one-process run the 1-file cluster runs are compared with."""
    out = tmp_path_factory.mktemp("one_file_single") / "run"
    assert cli.main([*one_file_args, "--data", str(one_file_dir), "--out", str(out)]) == 0
    return out


def _metrics(out):
    return json.loads((out / "metrics.json").read_text())


def _steps_per_epoch(out):
    return json.loads((out / "checkpoints/train/state.json").read_text())["steps_per_epoch"]


@pytest.mark.slow
@pytest.mark.dist  # several processes with TF_CONFIG: `make test-dist`
@pytest.mark.parametrize("workers", [2, 3])
def test_workers_on_one_file_per_split_match_one_process(workers, one_file_dir, one_file_args, one_file_single,
                                                         tmp_path):
    """Fewer files than workers: the train split is sharded by DATA (FILE failed
    at the first step: "Could not apply FILE based sharding"), so each global
    step holds the single process's examples, split over the workers (the
    same number of steps); the last, 1-row batch leaves replicas empty (a NaN
    loss before their weighting). Valid and test are scored whole by every
    worker: the chief's test metrics count each test row once."""
    out = tmp_path / "multi"
    codes = _wait(_start_workers(one_file_dir, out, count=workers, args=one_file_args), DEADLINE_S)
    chief_log = (tmp_path / "worker0.log").read_text()
    assert codes == [0] * workers, chief_log[-3000:]
    assert f"train split: 1 file(s) for {workers} workers" in chief_log
    got, want = _metrics(out), _metrics(one_file_single)
    test_rows = json.loads((one_file_dir / "stats.json").read_text())["splits"]["test"]["rows"]
    assert got["test_rows"] == want["test_rows"] == test_rows
    assert _steps_per_epoch(out) == _steps_per_epoch(one_file_single)
    assert got["test_auc"] == pytest.approx(want["test_auc"], abs=0.02)
    assert got["test_logloss"] == pytest.approx(want["test_logloss"], abs=0.02)
    for index in range(1, workers):  # the same weights, the same whole-split metrics
        other = _metrics(tmp_path / f".multi.worker-{index}")
        assert (other["test_auc"], other["test_logloss"]) == (got["test_auc"], got["test_logloss"])
    print(f"{workers} workers: test AUC {got['test_auc']:.4f} LogLoss {got['test_logloss']:.4f}; 1 process: "
          f"test AUC {want['test_auc']:.4f} LogLoss {want['test_logloss']:.4f}")


@pytest.mark.slow
@pytest.mark.dist  # several processes with TF_CONFIG: `make test-dist`
def test_parameter_server_on_one_file_per_split_matches_one_process(one_file_dir, one_file_args, one_file_single,
                                                                    tmp_path):
    """1 chief + 2 workers + 1 ps on the 1-file run: each worker reads the one
    train file and takes every other batch; the chief scores the whole test
    split. Asynchronous updates: within 0.03 of one process, as below."""
    out = tmp_path / "ps"
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(4)]
    cluster = {"chief": hosts[:1], "worker": hosts[1:3], "ps": hosts[3:]}
    procs = [_start(one_file_dir, out, {"cluster": cluster, "task": {"type": kind, "index": i}}, f"{kind}{i}.log",
                    "--strategy=parameter_server", args=one_file_args) for kind, i in (("ps", 0), ("worker", 0),
                                                                                       ("worker", 1), ("chief", 0))]
    code = _wait(procs[-1:], DEADLINE_S)[0]
    _kill(procs)
    chief_log = (tmp_path / "chief0.log").read_text()
    assert code == 0, chief_log[-3000:]
    assert "train split: 1 file(s) for 2 workers" in chief_log
    got, want = _metrics(out), _metrics(one_file_single)
    assert got["test_rows"] == want["test_rows"]
    assert got["test_auc"] == pytest.approx(want["test_auc"], abs=0.03)
    assert got["test_logloss"] == pytest.approx(want["test_logloss"], abs=0.03)
    print(f"parameter_server: test AUC {got['test_auc']:.4f} LogLoss {got['test_logloss']:.4f}; 1 process: "
          f"test AUC {want['test_auc']:.4f} LogLoss {want['test_logloss']:.4f}")


@pytest.mark.slow
@pytest.mark.dist  # several processes with TF_CONFIG: `make test-dist`
def test_parameter_servers_match_one_process_resume_and_restore_under_default(four_shard_dir, request, tmp_path):
    """1 chief + 2 workers + 2 ps, every variable of 512 bytes or more (the
    embedding table among them) split over the 2 ps tasks. Updates are
    asynchronous (each worker steps on weights the other may be updating), so
    the run is a third SGD trajectory on the same data: its validation AUC and
    train loss agree with one process's to 0.03 per epoch (the multi_worker
    tolerance plus half again for the stale gradients). A new chief then
    resumes the run for a third epoch on the same workers and ps tasks."""
    out = tmp_path / "ps"
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(5)]
    cluster = {"chief": hosts[:1], "worker": hosts[1:3], "ps": hosts[3:]}
    extra = ["--strategy=parameter_server", "--train.ps_min_shard_bytes=256"]
    servers = [_start(four_shard_dir, out, {"cluster": cluster, "task": {"type": kind, "index": i}}, f"{kind}{i}.log",
                      *extra) for kind in ("ps", "worker") for i in range(2)]
    chief = {"cluster": cluster, "task": {"type": "chief", "index": 0}}
    procs = list(servers)
    try:
        want = request.getfixturevalue("single_history")  # while the servers start
        assert all(p.poll() is None for p in servers), "a worker or ps process exited instead of serving"
        procs.append(_start(four_shard_dir, out, chief, "chief.log", *extra, "--train.epochs=2"))
        code = _wait(procs[-1:], DEADLINE_S)[0]
        chief_log = (tmp_path / "chief.log").read_text()
        assert code == 0, chief_log[-3000:]
        first = _history(out)
        procs.append(_start(four_shard_dir, out, chief, "chief2.log", *extra, "--train.epochs=3", "--resume"))
        code = _wait(procs[-1:], DEADLINE_S)[0]
        assert code == 0, (tmp_path / "chief2.log").read_text()[-3000:]
        assert all(p.poll() is None for p in servers), "a worker or ps process died during training"
    finally:
        _kill(procs)
    # The table (62 rows x 4 x float32 = 992 bytes) is split in two row ranges, one per ps task.
    ps_tasks = "/job:ps/replica:0/task:0, /job:ps/replica:0/task:1"
    assert re.search(rf"partitioned: \S*/table \[62, 4\]: rows \[31, 31\] on {ps_tasks}", chief_log), chief_log[-3000:]
    got = _history(out)
    assert [h["epoch"] for h in got] == [1, 2, 3]
    assert got[:2] == first  # restored from the checkpoint, not retrained
    for g, w in zip(got[:2], want, strict=True):
        assert g["valid_auc"] == pytest.approx(w["valid_auc"], abs=0.03)
        assert g["train_loss"] == pytest.approx(w["train_loss"], abs=0.03)
    assert (out / "architecture.json").is_file()
    print("parameter_server:", got, "\n1 process:", want)

    # Its checkpoint (partitioned variables and their optimizer slots) restores unpartitioned.
    from pipeline.dataset_info import read_dataset_info
    from trainer.config import load_config
    from trainer.loop import Phase
    from trainer.model_io import build_model

    info = read_dataset_info(four_shard_dir)
    config = load_config(out / "config.yaml", [])
    fields = [{"name": f.name, "vocab_size": f.vocab_size} for f in info.fields]
    model = build_model(config, fields, mode="search")
    phase = Phase("search", model, config, info, out / "checkpoints/search", tmp_path / "tb", train_arch=True)
    assert phase.restore() and phase.state.epochs_done == 3
    assert all(int(opt.iterations.numpy()) > 0 for _, opt, _ in phase.groups)
    phase.restore_best()
    with np.load(out / "search.weights.npz") as saved:  # the chief's best-epoch weights, by path
        best = {k.split("/", 1)[-1]: saved[k] for k in saved.files if "/" in k}
    for v in model.weights:
        np.testing.assert_array_equal(v.numpy(), best[v.path.split("/", 1)[-1]], err_msg=v.path)


def test_parameter_server_needs_chief_workers_and_ps_in_tf_config(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(ValueError, match="needs TF_CONFIG with a chief, workers and ps tasks"):
        distribute._parameter_server(256)


def test_shard_slots_merge_into_one_checkpoint_key_that_restores_whole(tmp_path):
    """The Adam slots of a table's two shard views are saved as one variable
    under the whole table's slot key: a run without ps tasks restores them."""
    parts = {f"emb_table__part_{i}_momentum": keras.Variable(np.full((2, 3), i, np.float32)) for i in range(2)}
    bias = keras.Variable(np.ones(3, np.float32))
    keyed = distribute.merge_shards({**parts, "bias_momentum": bias})
    assert set(keyed) == {"emb_table_momentum", "bias_momentum"}
    path = tf.train.Checkpoint(opt=keyed).save(str(tmp_path / "c"))

    whole, whole_bias = tf.Variable(np.zeros((4, 3), np.float32)), tf.Variable(np.zeros(3, np.float32))
    tf.train.Checkpoint(opt={"emb_table_momentum": whole, "bias_momentum": whole_bias}).restore(
        path).assert_existing_objects_matched()
    np.testing.assert_array_equal(whole.numpy(), [[0] * 3] * 2 + [[1] * 3] * 2)
    np.testing.assert_array_equal(whole_bias.numpy(), [1, 1, 1])
