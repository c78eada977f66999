"""Multi-worker training on loopback: 2 worker processes with TF_CONFIG, the
search stage on a 4-shard copy of the synthetic data (each worker reads 2 files).

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
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.trainer.synthetic import write_synthetic_run
from trainer import cli
from trainer.config import preset_path

pytestmark = pytest.mark.slow

ARGS = ["--stage=search", "--config", str(preset_path("criteo", "cpu")), "--model.emb_dim=4", "--model.n=2",
        "--model.att_dim=8", "--train.batch_size=128", "--train.patience=3", "--search.arch_lr=0.05"]
DEADLINE_S = 150


@pytest.fixture(scope="module")
def four_shard_dir(tmp_path_factory):
    return write_synthetic_run(tmp_path_factory.mktemp("four_shards"), shards=4)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start_workers(data, out, *extra):
    """Two `trainer --strategy=multi_worker` processes on free loopback ports."""
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
        command = [sys.executable, "-m", "trainer.cli", *ARGS, "--data", str(data), "--out", str(out),
                   "--strategy=multi_worker", *extra]
        log = open(out.parent / f"worker{index}.log", "a")
        procs.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    return procs


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


def test_two_workers_match_one_process(four_shard_dir, tmp_path):
    single = tmp_path / "single"
    assert cli.main([*ARGS, "--data", str(four_shard_dir), "--out", str(single), "--train.epochs=2"]) == 0

    out = tmp_path / "multi"
    codes = _wait(_start_workers(four_shard_dir, out, "--train.epochs=2"), DEADLINE_S)
    assert codes == [0, 0], (tmp_path / "worker0.log").read_text()[-3000:]
    got, want = _history(out), _history(single)
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
