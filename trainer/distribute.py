"""tf.distribute strategies for the trainer, chosen by `train.strategy`.

default: one process, one device (the tests' and a laptop's setting).
mirrored: one process, every local GPU, gradients all-reduced in-process.
multi_worker: one process per machine (TF_CONFIG names the cluster and this
task); gradients are all-reduced across workers every step. The train split
is split among the workers by tf.data auto-shard: by FILE (each worker reads
only its own files) when it has at least as many files as workers, else by
DATA (every worker reads every file and keeps its part of each global batch:
W times the reading and decoding, logged once). A small `pipeline` input gives
one file per split whatever --output_shards says, and older runs or
--output_shards=1 may too: FILE would fail at the first step. Under FILE a
worker with fewer rows runs out first and trains on empty parts of the last
steps (weighted 0 in the loss, trainer/loop.py). Valid and test are not split:
every worker scores the whole split (exact AUC, each row counted once, the
same on every worker, so all stop early together). The chief (worker 0)
writes the run directory; the other workers write theirs beside it
(`worker_out`) and their checkpoints to a scratch dir.
parameter_server: TF_CONFIG names a chief, workers and ps tasks. Variables live
on the ps tasks, each one whose size reaches `train.ps_min_shard_bytes` split
by rows over them (tf.distribute MinSizePartitioner: the embedding table of a
large vocabulary first); the chief builds the model, schedules train steps on
the workers with a ClusterCoordinator (asynchronous updates), evaluates the
whole valid and test splits itself and writes the run directory. Each worker
reads its own train files, or with fewer files than workers every file,
keeping every W-th batch (`shard_by_file`). Worker and ps processes run the
same `trainer` command with their TF_CONFIG and only serve (`use_strategy`
never returns).

The strategy is created once per process and before any other TensorFlow op
runs (a collective runtime cannot be set up afterwards): the CLI picks it
with `use_strategy` right after reading the config; model building and the
training loop use `active()`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pathlib
import re
from typing import Any

import keras
import tensorflow as tf
from tensorflow.python.distribute.sharded_variable import ShardedVariable

from trainer.strategies import PS_MIN_SHARD_BYTES, STRATEGIES

_PART = "__part_"  # marks a shard's view in variable (and optimizer slot) names

log = logging.getLogger("trainer")


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


def use_strategy(name: str, ps_min_shard_bytes: int = PS_MIN_SHARD_BYTES) -> tf.distribute.Strategy:
    """Makes `name` this process's strategy (the CLI calls it before any op runs).
    A parameter_server worker or ps task serves here until it is killed."""
    _active[:] = [_create(name, ps_min_shard_bytes)]
    return _active[0]


def active() -> tf.distribute.Strategy:
    """The strategy set by `use_strategy`, else the default one (tests, `load_model` in a server)."""
    return _active[0] if _active else tf.distribute.get_strategy()


def coordinator() -> tf.distribute.coordinator.ClusterCoordinator | None:
    """The chief's ClusterCoordinator under parameter_server, else None (steps run in-process)."""
    strategy = active()
    if not isinstance(strategy, tf.distribute.ParameterServerStrategy):
        return None
    return _coordinator(strategy)


@functools.cache
def _coordinator(strategy: tf.distribute.ParameterServerStrategy) -> tf.distribute.coordinator.ClusterCoordinator:
    return tf.distribute.coordinator.ClusterCoordinator(strategy)


def num_workers() -> int:
    """Processes that train on their own share of the train split: TF_CONFIG's
    worker tasks, plus its chief task under multi_worker (a parameter_server
    chief only schedules); 1 without TF_CONFIG."""
    cluster = _tf_config().get("cluster", {})
    chief = cluster.get("chief", []) if not cluster.get("ps") else []
    return len(cluster.get("worker", [])) + len(chief) or 1


def shard_by_file(split: str, files: int) -> bool:
    """True when each worker can read its own files of `split` (at least one
    each); else every worker reads all `files` and keeps its own part of the
    batches, which this logs once per split."""
    workers = num_workers()
    if files >= workers:
        return True
    _log_data_sharding(split, files, workers)
    return False


@functools.cache
def _log_data_sharding(split: str, files: int, workers: int) -> None:
    log.info("%s split: %d file(s) for %d workers, so every worker reads every file and keeps only its own part "
             "of the batches (%dx the reading and decoding); `pipeline --output_shards=%d` or more lets each worker "
             "read only its own files", split, files, workers, workers, workers)


def auto_shard_options(split: str, files: int) -> tf.data.Options:
    """tf.data options for `experimental_distribute_dataset` under
    multi_worker: auto-shard by FILE, or by DATA with fewer files than
    workers (FILE would fail at the first step: "Could not apply FILE based
    sharding: the dataset only has 1 file(s)")."""
    policy = tf.data.experimental.AutoShardPolicy
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy.FILE if shard_by_file(split, files) else policy.DATA
    return options


def shard_views(variables: list[Any]) -> list[Any]:
    """`variables` with each partitioned one replaced by a Keras view of each of
    its shards. Keras 3 cannot take gradients of, or build optimizer slots for,
    a variable whose value is a ShardedVariable (`.handle` is missing, and the
    slots it colocates with the whole variable come out unpartitioned, one
    full-size copy each); per shard both work, and each slot lives on its
    shard's ps task."""
    views = []
    for v in variables:
        value = getattr(v, "value", None)
        if isinstance(value, ShardedVariable):
            stem = v.path.replace("/", "_")
            views += [keras.Variable(shard, name=f"{stem}{_PART}{i}") for i, shard in enumerate(value.variables)]
        else:
            views.append(v)
    return views


def checkpointable(variable: Any) -> Any:
    """What tf.train.Checkpoint should save for a Keras variable: its
    ShardedVariable if partitioned (it saves the shards as row slices of one
    tensor under the variable's key, so the checkpoint restores into an
    unpartitioned variable, e.g. under `default`), else the variable."""
    value = getattr(variable, "value", None)
    return value if isinstance(value, ShardedVariable) else variable


def merge_shards(keyed: dict[str, Any]) -> dict[str, Any]:
    """Optimizer slots of shard views ("emb_table__part_1_momentum") merged
    into one ShardedVariable under the whole variable's slot key
    ("emb_table_momentum"), so checkpoint keys do not depend on the strategy."""
    merged: dict[str, Any] = {}
    parts: dict[str, dict[int, Any]] = {}
    for key, v in keyed.items():
        match = re.search(rf"{_PART}(\d+)", key)
        if match is None:
            merged[key] = v
        else:
            parts.setdefault(key[: match.start()] + key[match.end():], {})[int(match.group(1))] = v
    for key, shards in parts.items():
        merged[key] = ShardedVariable([getattr(shards[i], "value", shards[i]) for i in sorted(shards)], name=key)
    return merged


def describe_partitions(variables: list[Any]) -> list[str]:
    """One line per partitioned variable: its path, shape and rows per ps task."""
    lines = []
    for v in variables:
        value = getattr(v, "value", None)
        if isinstance(value, ShardedVariable):
            rows = [int(s.shape[0]) for s in value.variables]
            devices = sorted({s.device.split("/device:")[0] for s in value.variables})
            lines.append(f"{v.path} {list(v.shape)}: rows {rows} on {', '.join(devices)}")
    return lines


def _serve(resolver: tf.distribute.cluster_resolver.ClusterResolver) -> None:
    """A parameter_server worker or ps task: serve the chief until killed."""
    log.info("parameter_server: %s %d serving on %s", resolver.task_type, resolver.task_id,
             resolver.cluster_spec().task_address(resolver.task_type, resolver.task_id))
    server = tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type,
                                  task_index=resolver.task_id, protocol=resolver.rpc_layer or "grpc", start=True)
    server.join()


def _parameter_server(min_shard_bytes: int) -> tf.distribute.Strategy:
    cluster = _tf_config().get("cluster", {})
    if not cluster.get("ps") or not cluster.get("worker") or not cluster.get("chief"):
        raise ValueError("train.strategy=parameter_server needs TF_CONFIG with a chief, workers and ps tasks "
                         '(e.g. {"cluster": {"chief": ["h0:port"], "worker": ["h1:port", "h2:port"], '
                         '"ps": ["h3:port", "h4:port"]}, "task": {"type": "chief", "index": 0}})')
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if resolver.task_type in ("worker", "ps"):
        _serve(resolver)
        raise SystemExit(0)  # join() returns only if the server stops
    if resolver.task_type != "chief":
        raise ValueError(f"TF_CONFIG task type {resolver.task_type!r}: parameter_server runs chief, worker or ps")
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=min_shard_bytes, max_shards=len(cluster["ps"]))
    return tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)


@functools.cache
def _create(name: str, ps_min_shard_bytes: int = PS_MIN_SHARD_BYTES) -> tf.distribute.Strategy:
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
    if name == "parameter_server":
        return _parameter_server(ps_min_shard_bytes)
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
