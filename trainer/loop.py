"""The training loop shared by every stage: one phase = fit with early stopping.

One optimizer step per batch updates the model weights (Adam, embeddings and
the rest with their own lr and L2) and, in search, the architecture weights
(their own Adam, `arch_lr`) from the same gradient tape: one-shot, not
bi-level (docs/DESIGN.md §3 Supernet). After each epoch: exact validation AUC
and LogLoss, the early-stopping decision on `train.monitor` (`end_epoch`: best
epoch, patience, reduce-LR-on-plateau of the model optimizers), a checkpoint
(weights + optimizer state + loop state, the lr scale and plateau counters
included) written temp-then-rename, and the best epoch's weights kept, so
`--resume` after a kill restarts the interrupted epoch from the end of the
previous one, reproducibly.

Under parameter_server the chief schedules the same step on the workers
(trainer/distribute.py): an epoch is as many steps as one process takes over
the train split, each worker reading its own 1/W of each epoch's batches.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from pipeline.atomic import write_text_atomic
from pipeline.dataset_info import DatasetInfo
from pipeline.errors import UsageError
from trainer.config import Config, TrainConfig
from trainer.data import dummy_features, input_signature, make_dataset, split_files
from trainer.distribute import (
    active,
    auto_shard_options,
    checkpointable,
    chief_dir,
    coordinator,
    describe_partitions,
    merge_shards,
    num_workers,
    shard_by_file,
    shard_views,
)
from trainer.metrics import log_loss, roc_auc

log = logging.getLogger("trainer")

STATE_FILE = "state.json"
BEST_DIR = "best"


class TrainingFailed(RuntimeError):
    """Training ran but gave no usable model (the CLI exits 1)."""


class TrainingDiverged(TrainingFailed):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


@dataclasses.dataclass
class LoopState:
    """What a resumed phase needs besides the weights."""

    epochs_done: int = 0
    best_auc: float = -1.0  # validation AUC of the best epoch (the best by `train.monitor`)
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best one: `train.patience` of them stop the phase
    plateau_epochs: int = 0  # epochs since the best one or the last lr reduction
    lr_scale: float = 1.0  # the model optimizers' lr over the configured lr, reduced on plateau
    steps_per_epoch: int | None = None
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)


MONITORS: dict[str, Callable[[dict[str, float]], float]] = {
    "auc_minus_logloss": lambda r: r["valid_auc"] - r["valid_logloss"],  # FuxiCTR's and BARS's default
    "auc": lambda r: r["valid_auc"],
    "logloss": lambda r: -r["valid_logloss"],
}
"""train.monitor -> the score of an epoch record (higher is better)."""


def end_epoch(state: LoopState, record: dict[str, float], t: TrainConfig) -> tuple[bool, bool]:
    """Records one epoch's validation `record` and decides: (improved, lr reduced).

    An epoch improves when its `t.monitor` score beats the best epoch's
    (strictly; a NaN never does). Otherwise it counts towards `t.patience`
    (the loop stops there) and towards `t.lr_decay_patience`: reaching that
    multiplies `lr_scale` by `t.lr_decay_factor`, unless this epoch stops the
    phase anyway. Pure bookkeeping on `state`, so it is unit-tested alone.
    """
    score = MONITORS[t.monitor]
    state.history.append(record)
    state.epochs_done = int(record["epoch"])
    best = next((r for r in state.history if r["epoch"] == state.best_epoch), None)
    if best is None or score(record) > score(best):
        state.best_epoch, state.best_auc = int(record["epoch"]), record["valid_auc"]
        state.bad_epochs = state.plateau_epochs = 0
        return True, False
    state.bad_epochs += 1
    state.plateau_epochs += 1
    if t.lr_decay_factor < 1 and state.plateau_epochs >= t.lr_decay_patience and state.bad_epochs < t.patience:
        state.lr_scale *= t.lr_decay_factor
        state.plateau_epochs = 0
        return False, True
    return False, False


def bce_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Mean binary cross-entropy of [B] labels and [B, 1] logits."""
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=tf.reshape(logits, [-1])))


def _adam(lr: float) -> keras.optimizers.Optimizer:
    """Adam with the reference's (PyTorch's) epsilon 1e-8, not Keras's 1e-7."""
    return keras.optimizers.Adam(lr, epsilon=1e-8)


def _l2(variables: list[Any]) -> tf.Tensor:
    return tf.add_n([tf.reduce_sum(tf.square(v)) for v in variables]) if variables else tf.constant(0.0)


def _by_path(variables: list[Any], model_name: str, optimizer: bool = False) -> dict[str, Any]:
    """Variables keyed by their Keras path without the process-dependent parts
    (the model's and optimizer's numbered names, "supernet_1", "adam_3"), so the
    keys are the same in a resumed process. tf.train.Checkpoint does not see
    Keras 3 layers held in lists and dicts, so the model is not passed whole.
    A partitioned variable (parameter_server) is saved under the same key as
    a whole one, so checkpoints move between strategies."""
    keyed = {}
    for v in variables:
        key = v.path.split("/", 1)[-1] if optimizer else v.path  # optimizer slots: "adam_3/supernet_S0_kernel_momentum"
        keyed[key.removeprefix(f"{model_name}/" if not optimizer else f"{model_name}_")] = checkpointable(v)
    if len(keyed) != len(variables):
        raise ValueError("two variables share a path; checkpoints need unique variable paths")
    return merge_shards(keyed) if optimizer else keyed


def epoch_summary(state: LoopState, monitor: str) -> dict[str, Any]:
    """The stopping record of a finished phase for metrics.json and summaries: the best epoch
    (by `monitor`), its validation AUC and LogLoss, and the per-epoch validation lists."""
    best = next((r for r in state.history if r["epoch"] == state.best_epoch), {})
    return {
        "monitor": monitor,
        "best_epoch": state.best_epoch,
        "best_valid_auc": state.best_auc,
        "best_valid_logloss": best.get("valid_logloss"),
        "epochs": state.epochs_done,
        "valid_auc_per_epoch": [r["valid_auc"] for r in state.history],
        "valid_logloss_per_epoch": [r["valid_logloss"] for r in state.history],
    }


class Phase:
    """Fits one model on one dataset with early stopping on the validation `train.monitor`.

    `train_arch` adds the architecture optimizer (search); otherwise the
    model's architecture variables are left untouched (retrain / train).
    `on_improve(model)` runs when an epoch beats the best validation monitor so
    far (search saves the architecture there). A plateau reduces the lr of
    the model optimizers (embedding, dense), not the architecture's.
    """

    def __init__(
        self,
        name: str,
        model: keras.Model,
        config: Config,
        info: DatasetInfo,
        ckpt_dir: pathlib.Path,
        tb_dir: pathlib.Path,
        *,
        train_arch: bool,
        on_improve: Callable[[keras.Model], None] | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.config = config
        self.info = info
        self.ckpt_dir = ckpt_dir
        self.on_improve = on_improve
        self.strategy = active()
        self.coordinator = coordinator()
        t = config.train
        with self.strategy.scope():  # optimizer slots and the step live where the model's variables do
            model(dummy_features(info), training=False)  # builds every weight
            # Partitioned variables are trained shard by shard (distribute.shard_views).
            self.groups: list[tuple[str, keras.optimizers.Optimizer, list[Any]]] = [
                ("embedding", _adam(t.emb_lr), shard_views(model.embedding_variables)),
                ("dense", _adam(t.lr), shard_views(model.dense_variables)),
            ]
            if train_arch:
                self.groups.append(("arch", _adam(config.search.arch_lr), shard_views(model.arch_variables)))
            self.groups = [g for g in self.groups if g[2]]
            self._base_lr = {"embedding": t.emb_lr, "dense": t.lr}  # the groups reduce-LR-on-plateau scales
            for _, opt, variables in self.groups:
                opt.build(variables)
        if t.lr_decay_factor < 1 and t.lr_decay_patience >= t.patience:
            log.info("[%s] no reduce-LR-on-plateau: train.lr_decay_patience %d >= train.patience %d stops "
                     "first", name, t.lr_decay_patience, t.patience)
        for line in describe_partitions(model.weights):
            log.info("[%s] partitioned: %s", name, line)
        # One trace for every batch size (the last batch of a split is smaller).
        features = input_signature(info)
        replica_step = tf.function(self._step, jit_compile=t.jit_compile)
        sum_ = tf.distribute.ReduceOp.SUM  # the replicas' loss shares add up to the global mean
        self.train_step = tf.function(
            lambda f, y: self.strategy.reduce(sum_, self.strategy.run(replica_step, (f, y)), None),
            reduce_retracing=True,
        )

        def remote_step(iterator: Any) -> tuple[tf.Tensor, tf.Tensor]:  # parameter_server: runs on a worker
            features, labels = next(iterator)
            return self.train_step(features, labels), tf.size(labels)

        self._remote_step = tf.function(remote_step)
        self._predict_step = tf.function(
            lambda f: model(f, training=False), jit_compile=t.jit_compile, input_signature=[features]
        )
        self.writer = tf.summary.create_file_writer(str(tb_dir / name))
        self.state = LoopState()
        self._state_var = tf.Variable("", dtype=tf.string, trainable=False)  # LoopState as JSON

    # ---- one step -----------------------------------------------------

    def _step(self, features: dict[str, tf.Tensor], labels: tf.Tensor) -> tf.Tensor:
        """One replica's step; returns its share of the global mean loss (the
        replicas' shares sum to it, and the optimizers sum their gradients)."""
        t = self.config.train
        variables = [v for _, _, vs in self.groups for v in vs]
        with tf.GradientTape() as tape:
            logits = self.model(features, training=True)
            loss = bce_loss(labels, logits)
            if self.strategy.num_replicas_in_sync > 1:
                # Each replica's mean weighted by its share of the global batch: replicas may hold
                # unequal parts (a split's last, smaller batch; workers with unequal files), even none
                # (its mean is NaN, its weight 0: multiply_no_nan keeps the NaN out of the sum).
                rows = tf.cast(tf.size(labels), tf.float32)
                total_rows = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, rows)
                loss = tf.math.multiply_no_nan(loss, rows / total_rows)
            total = loss
            # l2 / 2 * sum(w^2): gradient l2 * w, the reference's Adam weight_decay
            # (decided at trace time: a zero L2 costs nothing).
            if t.l2 > 0:
                total += tf.nn.scale_regularization_loss(0.5 * t.l2 * _l2(self.model.dense_variables))
            if t.emb_l2 > 0:
                total += tf.nn.scale_regularization_loss(0.5 * t.emb_l2 * _l2(self.model.embedding_variables))
        grads = tape.gradient(total, variables)
        start = 0
        for _, opt, vs in self.groups:
            opt.apply_gradients(zip(grads[start : start + len(vs)], vs, strict=True))
            start += len(vs)
        return loss

    # ---- evaluation ---------------------------------------------------

    def predict(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Labels and logits of every example of `split`, read by this process
        alone (not distributed: under multi_worker every worker scores the
        whole split, so the metric is over all of it, not one worker's share)."""
        labels, logits = [], []
        ds = make_dataset(self.info, split, self.config.train.eval_batch_size)
        for features, y in ds:
            labels.append(y.numpy())
            logits.append(self._predict_step(features).numpy().reshape(-1))
        return np.concatenate(labels), np.concatenate(logits)

    def evaluate(self, split: str) -> dict[str, float]:
        """Exact AUC and LogLoss over the whole split."""
        labels, logits = self.predict(split)
        if np.ptp(logits) == 0:
            log.warning(
                "[%s] the model predicts one constant on %s (AUC 0.5): its input to the head is lost, "
                "e.g. a PROD over many small inputs underflows; try --mode=soft or another architecture",
                self.name, split,
            )
        return {"auc": roc_auc(labels, logits), "logloss": log_loss(labels, logits), "rows": int(labels.size)}

    # ---- checkpoints --------------------------------------------------

    def _checkpoint_objects(self) -> dict[str, Any]:
        """Everything a resume needs, keyed by name (not by position), so a
        checkpoint survives a change of strategy or of variable order."""
        return {"model": _by_path(self.model.weights, self.model.name), "loop_state": self._state_var,
                **{f"optimizer_{name}": _by_path(opt.variables, self.model.name, optimizer=True)
                   for name, opt, _ in self.groups}}

    def checkpoint(self, improved: bool) -> None:
        """Epoch-end checkpoint (tf.train.CheckpointManager: data files, then the
        `checkpoint` index renamed into place); state.json, a readable copy of
        the loop state, is written last. Every worker saves (a save of
        distributed variables may need all of them); the others into their own
        run dir (distribute.worker_out)."""
        target = self.ckpt_dir
        target.mkdir(parents=True, exist_ok=True)
        self._state_var.assign(json.dumps(dataclasses.asdict(self.state)))
        ckpt = tf.train.Checkpoint(**self._checkpoint_objects())
        epoch = self.state.epochs_done
        tf.train.CheckpointManager(ckpt, target, max_to_keep=1, checkpoint_name="epoch").save(checkpoint_number=epoch)
        if improved:
            tf.train.CheckpointManager(ckpt, target / BEST_DIR, max_to_keep=1, checkpoint_name="best").save(
                checkpoint_number=epoch)
        write_text_atomic(target / STATE_FILE, json.dumps(dataclasses.asdict(self.state), indent=1))

    def restore(self) -> bool:
        """Loads the last checkpoint of this phase if one exists (every worker
        reads the chief's)."""
        latest = tf.train.latest_checkpoint(chief_dir(self.ckpt_dir))
        if latest is None:
            return False
        tf.train.Checkpoint(**self._checkpoint_objects()).restore(latest).assert_existing_objects_matched()
        self.state = LoopState(**json.loads(self._state_var.numpy().decode()))
        self._apply_lr()  # the configured lr (an override included) times the saved scale
        return True

    def _apply_lr(self) -> None:
        """Sets the model optimizers' lr to the configured lr times `state.lr_scale`.

        The architecture optimizer keeps `search.arch_lr`: the reference search
        never changes it, the tuned arch_lr keeps its meaning, and the best
        epoch's architecture is saved as it is reached (`on_improve`) either way."""
        for name, opt, _ in self.groups:
            if name in self._base_lr:
                opt.learning_rate = self._base_lr[name] * self.state.lr_scale

    def restore_best(self) -> None:
        """Puts the best epoch's model weights back (optimizer state untouched)."""
        if self.state.best_epoch:
            # Its own copy first: the chief may be replacing its files right now (a
            # worker killed before saving its copy falls back to the chief's).
            best = (tf.train.latest_checkpoint(self.ckpt_dir / BEST_DIR)
                    or tf.train.latest_checkpoint(chief_dir(self.ckpt_dir) / BEST_DIR))
            if best is None:
                raise FileNotFoundError(f"no best checkpoint in {self.ckpt_dir / BEST_DIR} "
                                        f"(epoch {self.state.best_epoch}); rerun the phase without --resume")
            tf.train.Checkpoint(model=_by_path(self.model.weights, self.model.name)).restore(best).expect_partial()

    # ---- the loop -----------------------------------------------------

    def fit(self) -> LoopState:
        """Trains until early stopping or `epochs`; restores the best epoch; returns the final loop state."""
        t = self.config.train
        while self.state.epochs_done < t.epochs and self.state.bad_epochs < t.patience:
            epoch = self.state.epochs_done + 1
            train_loss, examples, seconds = self._train_epoch(epoch)
            valid = self.evaluate("valid")
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                "valid_auc": valid["auc"],
                "valid_logloss": valid["logloss"],
                "lr_scale": self.state.lr_scale,  # the scale this epoch trained with
                "examples_per_s": examples / seconds,
            }
            improved, reduced = end_epoch(self.state, record, t)
            if improved and self.on_improve is not None:
                self.on_improve(self.model)
            if reduced:
                self._apply_lr()
            self._log_epoch(record)
            self.checkpoint(improved)
            log.info(
                "[%s] epoch %d: train loss %.4f, valid AUC %.4f LogLoss %.4f%s%s, %.0f examples/s",
                self.name, epoch, train_loss, valid["auc"], valid["logloss"],
                " (best)" if improved else f" (best {t.monitor} @ {self.state.best_epoch})",
                f"; plateau: lr x{self.state.lr_scale:g}" if reduced else "", examples / seconds,
            )
        if self.state.bad_epochs >= t.patience:
            log.info("[%s] early stop: no better valid %s for %d epochs; best epoch %d", self.name, t.monitor,
                     t.patience, self.state.best_epoch)
        self.restore_best()
        return self.state

    def _train_epoch(self, epoch: int) -> tuple[float, int, float]:
        t = self.config.train
        total_loss, steps, examples = 0.0, 0, 0
        start = time.perf_counter()
        bar = tqdm(total=self.state.steps_per_epoch, desc=f"{self.name} epoch {epoch}", unit="batch",
                   leave=False, mininterval=0.1 if sys.stderr.isatty() else 30)  # logs stay short
        run = self._remote_steps if self.coordinator is not None else self._local_steps
        for loss, batch_examples in run(epoch, bar):
            steps += 1
            if not math.isfinite(loss):
                bar.close()
                raise TrainingDiverged(
                    f"loss is {loss} at {self.name} epoch {epoch} step {steps}; the last good checkpoint "
                    f"(epoch {self.state.epochs_done}) is kept in {self.ckpt_dir} "
                    "(lower train.lr / train.emb_lr / search.arch_lr, then rerun with --resume and --key=value)"
                )
            total_loss += loss
            examples += batch_examples
            if steps % t.log_every == 0:
                with self.writer.as_default():
                    tf.summary.scalar("train/loss", loss, step=(epoch - 1) * (self.state.steps_per_epoch or 0) + steps)
            if steps % 10 == 0 or steps == 1:
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{total_loss / steps:.4f}", ex_s=f"{examples / elapsed:.0f}", refresh=False)
        bar.close()
        self.state.steps_per_epoch = steps
        return total_loss / max(steps, 1), examples, time.perf_counter() - start

    def _train_dataset(self, epoch: int, file_shard: tuple[int, Any] | None = None) -> tf.data.Dataset:
        """Epoch `epoch`'s batches (its own shuffle seed, so a resumed epoch sees the same order)."""
        t = self.config.train
        ds = make_dataset(
            self.info, "train", t.batch_size, shuffle=True,
            seed=self.config.seed * 100_003 + epoch, shuffle_buffer=t.shuffle_buffer, file_shard=file_shard,
        )
        return ds.take(t.max_steps_per_epoch) if t.max_steps_per_epoch is not None else ds

    def _local_steps(self, epoch: int, bar: tqdm) -> Iterator[tuple[float, int]]:
        """Runs the epoch's steps in this process (default, mirrored, multi_worker): (loss, examples) per step."""
        ds = self._train_dataset(epoch)
        if self.strategy.num_replicas_in_sync > 1:  # each worker reads its share, batches split per replica
            options = auto_shard_options("train", len(split_files(self.info, "train")))
            ds = self.strategy.experimental_distribute_dataset(ds.with_options(options))
        for features, labels in ds:
            loss = float(self.train_step(features, labels))
            bar.update()
            yield loss, sum(int(y.shape[0]) for y in self.strategy.experimental_local_results(labels))

    def _remote_steps(self, epoch: int, bar: tqdm) -> Iterator[tuple[float, int]]:
        """parameter_server: schedules one process's number of steps over the
        train split on the workers, each reading its own 1/W of the train files
        (of the epoch's batches when there are fewer files than workers), repeated:
        the coordinator hands a step to whichever worker is free, so a faster
        worker may wrap around its share; asynchronous updates, so no two runs
        are bit-equal. Yields (loss, examples) per step."""
        assert self.coordinator is not None
        if self.state.steps_per_epoch is None:
            self.state.steps_per_epoch = self._count_steps()
            bar.reset(total=self.state.steps_per_epoch)
        workers = num_workers()
        if self.state.steps_per_epoch < workers:
            raise UsageError(f"the train split has {self.state.steps_per_epoch} batches of "
                             f"{self.config.train.batch_size}, fewer than the {workers} workers; "
                             "use a smaller --train.batch_size")

        by_file = shard_by_file("train", len(split_files(self.info, "train")))  # else a worker could get no file

        def worker_dataset() -> tf.data.Dataset:
            index = tf.distribute.coordinator.experimental_get_current_worker_index()
            if by_file:
                return self._train_dataset(epoch, file_shard=(workers, index)).repeat()
            return self._train_dataset(epoch).shard(workers, index).repeat()

        iterator = iter(self.coordinator.create_per_worker_dataset(worker_dataset))
        results = []
        for _ in range(self.state.steps_per_epoch):
            results.append(self.coordinator.schedule(self._remote_step, args=(iterator,)))
            bar.update()  # schedule() blocks while the queue is full: roughly the steps done
        self.coordinator.join()
        for result in results:
            loss, examples = result.fetch()
            yield float(loss), int(examples)

    def _count_steps(self) -> int:
        """Batches per epoch over the train split (records counted once, not parsed)."""
        t = self.config.train
        records = tf.data.TFRecordDataset(split_files(self.info, "train"), compression_type="GZIP")
        rows = int(records.reduce(np.int64(0), lambda n, _: n + 1))
        steps = math.ceil(rows / t.batch_size)
        return min(steps, t.max_steps_per_epoch) if t.max_steps_per_epoch is not None else steps

    def _log_epoch(self, record: dict[str, float]) -> None:
        with self.writer.as_default():
            step = int(record["epoch"])
            for key in ("train_loss", "valid_auc", "valid_logloss", "lr_scale", "examples_per_s"):
                tf.summary.scalar(f"epoch/{key}", record[key], step=step)
            for v in self.model.arch_variables:
                tf.summary.histogram(f"arch/{v.path}", v.numpy(), step=step)
        self.writer.flush()
