"""The training loop shared by every stage: one phase = fit with early stopping.

One optimizer step per batch updates the model weights (Adam, embeddings and
the rest with their own lr and L2) and, in search, the architecture weights
(their own Adam, `arch_lr`) from the same gradient tape: one-shot, not
bi-level (DESIGN.md section 3). After each epoch: exact validation AUC, a
checkpoint (weights + optimizer state + loop state) written temp-then-rename,
and the best epoch's weights kept, so `--resume` after a kill restarts the
interrupted epoch from the end of the previous one, reproducibly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from pipeline.dataset_info import DatasetInfo
from trainer.config import Config
from trainer.data import make_dataset
from trainer.metrics import log_loss, roc_auc

log = logging.getLogger("trainer")

STATE_FILE = "state.json"


class TrainingFailed(RuntimeError):
    """Training ran but gave no usable model (the CLI exits 1)."""


class TrainingDiverged(TrainingFailed):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


@dataclasses.dataclass
class LoopState:
    """What a resumed phase needs besides the weights."""

    epochs_done: int = 0
    best_auc: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    steps_per_epoch: int | None = None
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)


def bce_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Mean binary cross-entropy of [B] labels and [B, 1] logits."""
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=tf.reshape(logits, [-1])))


def dummy_features(info: DatasetInfo) -> dict[str, tf.Tensor]:
    """A one-row batch of id 0 per field, to build a model's weights."""
    return {name: tf.zeros([1], tf.int64) for name in info.field_names}


def _adam(lr: float) -> keras.optimizers.Optimizer:
    """Adam with the reference's (PyTorch's) epsilon 1e-8, not Keras's 1e-7."""
    return keras.optimizers.Adam(lr, epsilon=1e-8)


def _l2(variables: list[Any]) -> tf.Tensor:
    return tf.add_n([tf.reduce_sum(tf.square(v)) for v in variables]) if variables else tf.constant(0.0)


class Phase:
    """Fits one model on one dataset with early stopping on validation AUC.

    `train_arch` adds the architecture optimizer (search); otherwise the
    model's architecture variables are left untouched (retrain / train).
    `on_improve(model)` runs when an epoch beats the best validation AUC so
    far (search saves the architecture there).
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
        model(dummy_features(info), training=False)  # builds every weight
        t = config.train
        self.groups: list[tuple[str, keras.optimizers.Optimizer, list[Any]]] = [
            ("embedding", _adam(t.emb_lr), list(model.embedding_variables)),
            ("dense", _adam(t.lr), list(model.dense_variables)),
        ]
        if train_arch:
            self.groups.append(("arch", _adam(config.search.arch_lr), list(model.arch_variables)))
        self.groups = [g for g in self.groups if g[2]]
        for _, opt, variables in self.groups:
            opt.build(variables)
        # One trace for every batch size (the last batch of a split is smaller).
        features = {name: tf.TensorSpec([None], tf.int64) for name in info.field_names}
        self.train_step = tf.function(
            self._step, jit_compile=t.jit_compile, input_signature=[features, tf.TensorSpec([None], tf.float32)]
        )
        self._predict_step = tf.function(
            lambda f: model(f, training=False), jit_compile=t.jit_compile, input_signature=[features]
        )
        self.writer = tf.summary.create_file_writer(str(tb_dir / name))
        self.state = LoopState()

    # ---- one step -----------------------------------------------------

    def _step(self, features: dict[str, tf.Tensor], labels: tf.Tensor) -> tf.Tensor:
        t = self.config.train
        variables = [v for _, _, vs in self.groups for v in vs]
        with tf.GradientTape() as tape:
            logits = self.model(features, training=True)
            loss = bce_loss(labels, logits)
            total = loss
            # l2 / 2 * sum(w^2): gradient l2 * w, the reference's Adam weight_decay
            # (decided at trace time: a zero L2 costs nothing).
            if t.l2 > 0:
                total += 0.5 * t.l2 * _l2(self.model.dense_variables)
            if t.emb_l2 > 0:
                total += 0.5 * t.emb_l2 * _l2(self.model.embedding_variables)
        grads = tape.gradient(total, variables)
        start = 0
        for _, opt, vs in self.groups:
            opt.apply_gradients(zip(grads[start : start + len(vs)], vs))
            start += len(vs)
        return loss

    # ---- evaluation ---------------------------------------------------

    def predict(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Labels and logits of every example of `split`."""
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

    def _variables(self) -> list[Any]:
        return list(self.model.weights) + [v for _, opt, _ in self.groups for v in opt.variables]

    def _save_npz(self, filename: str) -> None:
        tmp = self.ckpt_dir / f".{filename}.tmp.npz"
        np.savez(tmp, *[np.asarray(v.numpy()) for v in self._variables()])
        tmp.replace(self.ckpt_dir / filename)

    def _load_npz(self, filename: str, variables: list[Any]) -> None:
        with np.load(self.ckpt_dir / filename) as data:
            if len(data.files) < len(variables):
                raise ValueError(f"{self.ckpt_dir / filename} holds {len(data.files)} arrays, expected {len(variables)}")
            for i, v in enumerate(variables):
                v.assign(data[f"arr_{i}"])

    def _save_state(self) -> None:
        tmp = self.ckpt_dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(dataclasses.asdict(self.state), indent=1))
        tmp.replace(self.ckpt_dir / STATE_FILE)

    def checkpoint(self, improved: bool) -> None:
        """Epoch-end checkpoint; state.json is renamed last, so a kill leaves a consistent pair."""
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        epoch = self.state.epochs_done
        self._save_npz(f"epoch-{epoch:04d}.npz")
        if improved:
            self._save_npz(f"best-{epoch:04d}.npz")
        self._save_state()
        keep = {f"epoch-{epoch:04d}.npz", f"best-{self.state.best_epoch:04d}.npz"}
        for old in self.ckpt_dir.glob("*.npz"):
            if old.name not in keep:
                old.unlink()

    def restore(self) -> bool:
        """Loads the last checkpoint of this phase if one exists."""
        state_path = self.ckpt_dir / STATE_FILE
        if not state_path.is_file():
            return False
        self.state = LoopState(**json.loads(state_path.read_text()))
        if self.state.epochs_done:
            self._load_npz(f"epoch-{self.state.epochs_done:04d}.npz", self._variables())
        return True

    def restore_best(self) -> None:
        """Puts the best epoch's model weights back (optimizer state untouched)."""
        if self.state.best_epoch:
            self._load_npz(f"best-{self.state.best_epoch:04d}.npz", list(self.model.weights))

    # ---- the loop -----------------------------------------------------

    def fit(self) -> LoopState:
        """Trains until early stopping or `epochs`; returns the final loop state."""
        t = self.config.train
        while self.state.epochs_done < t.epochs and self.state.bad_epochs < t.patience:
            epoch = self.state.epochs_done + 1
            train_loss, examples, seconds = self._train_epoch(epoch)
            valid = self.evaluate("valid")
            improved = valid["auc"] > self.state.best_auc
            if improved:
                self.state.best_auc, self.state.best_epoch, self.state.bad_epochs = valid["auc"], epoch, 0
                if self.on_improve is not None:
                    self.on_improve(self.model)
            else:
                self.state.bad_epochs += 1
            self.state.epochs_done = epoch
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                "valid_auc": valid["auc"],
                "valid_logloss": valid["logloss"],
                "examples_per_s": examples / seconds,
            }
            self.state.history.append(record)
            self._log_epoch(record)
            self.checkpoint(improved)
            log.info(
                "[%s] epoch %d: train loss %.4f, valid AUC %.4f LogLoss %.4f%s, %.0f examples/s",
                self.name, epoch, train_loss, valid["auc"], valid["logloss"],
                " (best)" if improved else f" (best {self.state.best_auc:.4f} @ {self.state.best_epoch})",
                examples / seconds,
            )
        if self.state.bad_epochs >= t.patience:
            log.info("[%s] early stop: no better valid AUC for %d epochs", self.name, t.patience)
        self.restore_best()
        return self.state

    def _train_epoch(self, epoch: int) -> tuple[float, int, float]:
        t = self.config.train
        ds = make_dataset(
            self.info, "train", t.batch_size, shuffle=True,
            seed=self.config.seed * 100_003 + epoch, shuffle_buffer=t.shuffle_buffer,
        )
        if t.max_steps_per_epoch is not None:
            ds = ds.take(t.max_steps_per_epoch)
        total_loss, steps, examples = 0.0, 0, 0
        start = time.perf_counter()
        bar = tqdm(ds, total=self.state.steps_per_epoch, desc=f"{self.name} epoch {epoch}", unit="batch",
                   leave=False, mininterval=0.1 if sys.stderr.isatty() else 30)  # logs stay short
        for features, labels in bar:
            loss = float(self.train_step(features, labels))
            steps += 1
            if not math.isfinite(loss):
                bar.close()
                raise TrainingDiverged(
                    f"loss is {loss} at {self.name} epoch {epoch} step {steps}; the last good checkpoint "
                    f"(epoch {self.state.epochs_done}) is kept in {self.ckpt_dir} "
                    "(lower train.lr / train.emb_lr / search.arch_lr, then rerun with --resume and --key=value)"
                )
            total_loss += loss
            examples += int(labels.shape[0])
            if steps % t.log_every == 0:
                with self.writer.as_default():
                    tf.summary.scalar("train/loss", loss, step=(epoch - 1) * (self.state.steps_per_epoch or 0) + steps)
            if steps % 10 == 0 or steps == 1:
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{total_loss / steps:.4f}", ex_s=f"{examples / elapsed:.0f}", refresh=False)
        bar.close()
        self.state.steps_per_epoch = steps
        return total_loss / max(steps, 1), examples, time.perf_counter() - start

    def _log_epoch(self, record: dict[str, float]) -> None:
        with self.writer.as_default():
            step = int(record["epoch"])
            for key in ("train_loss", "valid_auc", "valid_logloss", "examples_per_s"):
                tf.summary.scalar(f"epoch/{key}", record[key], step=step)
            for v in self.model.arch_variables:
                tf.summary.histogram(f"arch/{v.path}", v.numpy(), step=step)
        self.writer.flush()
