"""tf.distribute strategies for the trainer, chosen by `train.strategy`.

default: one process, one device (the tests' and a laptop's setting).
mirrored: one process, every local GPU, gradients all-reduced in-process.
multi_worker: one process per machine (TF_CONFIG names the cluster and this
task); each worker reads its own files of each split (tf.data auto-shard by
FILE) and gradients are all-reduced across workers every step. The chief
(worker 0) writes the run directory; the other workers write theirs beside
it (`worker_out`) and their checkpoints to a scratch dir.

The strategy is created once per process and before any other TensorFlow op
runs (a collective runtime cannot be set up afterwards): the CLI picks it
with `use_strategy` right after reading the config; model building and the
training loop use `active()`.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker")


def _tf_config() -> dict:
    return json.loads(os.environ.get("TF_CONFIG") or "{}")


def task_id() -> int:
    """This process's index among the workers (0 without TF_CONFIG)."""
    task = _tf_config().get("task", {})
    return int(task.get("index", 0))


def is_chief() -> bool:
    """True for the process that writes the run directory: worker 0 or the chief task."""
    task = _tf_config().get("task", {})
    if not task:
        return True
    cluster = _tf_config().get("cluster", {})
    if "chief" in cluster:
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0


def worker_out(out: pathlib.Path) -> pathlib.Path:
    """Where this process writes the run dir: `out` on the chief, a sibling
    `.NAME.worker-K` on the others (same layout, so `--resume` works there too)."""
    return out if is_chief() else out.parent / f".{out.name}.worker-{task_id()}"


def chief_dir(path: pathlib.Path) -> pathlib.Path:
    """The chief's copy of a path under this worker's `worker_out`: every
    worker restores from there (workers die at different moments; the chief's
    checkpoint is the one of record)."""
    marker = f".worker-{task_id()}"
    for i, part in enumerate(path.parts):
        if not is_chief() and part.startswith(".") and part.endswith(marker):
            return pathlib.Path(*path.parts[:i], part[1:-len(marker)], *path.parts[i + 1:])
    return path


_active: list[tf.distribute.Strategy] = []


def use_strategy(name: str) -> tf.distribute.Strategy:
    """Makes `name` this process's strategy (the CLI calls it before any op runs)."""
    _active[:] = [_create(name)]
    return _active[0]


def active() -> tf.distribute.Strategy:
    """The strategy set by `use_strategy`, else the default one (tests, `load_model` in a server)."""
    return _active[0] if _active else tf.distribute.get_strategy()


@functools.cache
def _create(name: str) -> tf.distribute.Strategy:
    """One instance per name and process: a collective runtime is set up once."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "cluster" not in _tf_config():
            raise ValueError("train.strategy=multi_worker needs TF_CONFIG with the cluster and this task "
                             '(e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                             '"task": {"type": "worker", "index": 0}})')
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
