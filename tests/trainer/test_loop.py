"""The train step on a hand-computable model: loss, separate lr and L2 per group; the
early-stopping decisions (monitor, patience, reduce-LR-on-plateau) on hand-made records."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.dataset_info import read_dataset_info
from trainer.config import TrainConfig, load_config, preset_path
from trainer.loop import LoopState, Phase, bce_loss, end_epoch, epoch_summary


class LogReg(keras.Model):
    """logit = sum of one weight per (field, id) + bias; table = 'embeddings'."""

    def __init__(self, field_names, vocab_sizes):
        super().__init__()
        self.field_names = field_names
        self.offsets = [sum(vocab_sizes[:i]) for i in range(len(vocab_sizes))]
        self.table = self.add_weight(shape=(sum(vocab_sizes), 1), initializer="zeros", name="table")
        self.bias = self.add_weight(shape=(1,), initializer="zeros", name="bias")

    def call(self, features, training=False):
        ids = tf.stack([features[f] + o for f, o in zip(self.field_names, self.offsets, strict=True)], axis=1)
        return tf.reduce_sum(tf.gather(self.table, ids), axis=1) + self.bias

    embedding_variables = property(lambda self: [self.table])
    dense_variables = property(lambda self: [self.bias])
    arch_variables = property(lambda self: [])


def test_bce_loss_of_zero_logits_is_ln2():
    assert float(bce_loss(tf.constant([0.0, 1.0]), tf.zeros([2, 1]))) == pytest.approx(math.log(2))


@pytest.mark.parametrize("emb_l2", [0.0, 0.06, 1.0])
def test_first_adam_step_moves_each_group_by_its_own_lr(synthetic_dir, tmp_path, emb_l2):
    info = read_dataset_info(synthetic_dir)
    config = load_config(preset_path("criteo", "cpu"),
                         ["--train.emb_lr=0.1", "--train.lr=0.01", f"--train.emb_l2={emb_l2}", "--train.l2=0"])
    model = LogReg(info.field_names, info.vocab_sizes)
    phase = Phase("t", model, config, info, tmp_path / "c", tmp_path / "tb", train_arch=False)
    model.table.assign(np.full((sum(info.vocab_sizes), 1), 0.5, np.float32))
    # One example, all ids 0, label 1: logit = 6 * 0.5 = 3, dloss/dlogit = sigmoid(3) - 1 < 0.
    features = {name: tf.constant([0], tf.int64) for name in info.field_names}
    loss = float(phase.train_step(features, tf.constant([1.0])))
    assert loss == pytest.approx(math.log1p(math.exp(-3.0)), rel=1e-5)
    # Adam's first step is lr * sign(gradient) (up to epsilon).
    assert float(model.bias[0]) == pytest.approx(0.01, rel=1e-3)
    table = model.table.numpy().reshape(-1)
    looked_up = np.array(phase.model.offsets)
    others = np.setdiff1d(np.arange(table.size), looked_up)
    # Looked-up rows: data gradient sigmoid(3) - 1 = -0.047 plus the L2 gradient l2 * w (weight
    # decay, the reference's meaning; 2 * l2 * w would be 0.06 > 0.047 for l2 = 0.06 and flip the sign).
    expected_rows = 0.5 + 0.1 if emb_l2 * 0.5 < 1.0 - 1.0 / (1.0 + math.exp(-3.0)) else 0.5 - 0.1
    np.testing.assert_allclose(table[looked_up], expected_rows, rtol=1e-4)
    # Rows not in the batch move only through the L2 term.
    np.testing.assert_allclose(table[others], 0.5 if emb_l2 == 0 else 0.4, rtol=1e-4)


def test_checkpoint_is_keyed_by_name_and_restores_under_another_strategy(synthetic_dir, tmp_path):
    """A checkpoint written by one process (default strategy) restores into a
    model and optimizers built under MirroredStrategy, the loop state included."""
    from trainer import distribute

    info = read_dataset_info(synthetic_dir)
    config = load_config(preset_path("criteo", "cpu"), ["--train.emb_lr=0.1", "--train.lr=0.01"])
    writer = Phase("t", LogReg(info.field_names, info.vocab_sizes), config, info, tmp_path / "c", tmp_path / "tb",
                   train_arch=False)
    features = {name: tf.constant([0, 1], tf.int64) for name in info.field_names}
    writer.train_step(features, tf.constant([1.0, 0.0]))
    writer.state.epochs_done, writer.state.best_epoch, writer.state.best_auc = 1, 1, 0.75
    writer.checkpoint(improved=True)
    names = {name for name, _ in tf.train.list_variables(tf.train.latest_checkpoint(tmp_path / "c"))}
    assert any(n.startswith("model/table") for n in names) and any("optimizer_embedding/" in n for n in names)

    strategy = distribute.use_strategy("mirrored")
    try:
        with strategy.scope():
            model = LogReg(info.field_names, info.vocab_sizes)
        reader = Phase("t", model, config, info, tmp_path / "c", tmp_path / "tb2", train_arch=False)
        assert reader.strategy is strategy
        assert reader.restore()
    finally:
        distribute.use_strategy("default")
    assert (reader.state.epochs_done, reader.state.best_auc) == (1, 0.75)
    np.testing.assert_array_equal(model.table.numpy(), writer.model.table.numpy())
    for (_, want, _), (_, got, _) in zip(writer.groups, reader.groups, strict=True):
        np.testing.assert_array_equal(got.iterations.numpy(), want.iterations.numpy())
        for w, g in zip(want.variables, got.variables, strict=True):
            np.testing.assert_array_equal(g.numpy(), w.numpy())


# Validation records by epoch: LogLoss is lowest at 2, AUC - LogLoss highest at 3, AUC highest at 4;
# epoch 5 (NaN LogLoss) never wins.
RECORDS = [(0.90, 0.40), (0.92, 0.30), (0.95, 0.32), (0.96, 0.45), (0.955, float("nan"))]


def _records(pairs):
    return [{"epoch": i, "valid_auc": auc, "valid_logloss": ll} for i, (auc, ll) in enumerate(pairs, 1)]


@pytest.mark.parametrize("monitor, best", [("auc_minus_logloss", 3), ("logloss", 2), ("auc", 4)])
def test_each_monitor_picks_its_best_epoch(monitor, best):
    t = TrainConfig(monitor=monitor, patience=10, lr_decay_factor=1.0)
    state = LoopState()
    improved = [end_epoch(state, r, t)[0] for r in _records(RECORDS)]
    assert state.best_epoch == best and improved.index(True, best - 1) == best - 1
    assert state.best_auc == RECORDS[best - 1][0] and state.epochs_done == 5
    assert state.bad_epochs == 5 - best and state.lr_scale == 1.0
    summary = epoch_summary(state, monitor)
    assert summary["best_epoch"] == best and summary["best_valid_logloss"] == RECORDS[best - 1][1]
    assert summary["valid_auc_per_epoch"] == [auc for auc, _ in RECORDS]
    assert summary["valid_logloss_per_epoch"][:4] == [ll for _, ll in RECORDS[:4]]


def test_plateau_reduces_the_lr_each_patience_then_stops():
    t = TrainConfig(monitor="auc", patience=3, lr_decay_factor=0.5, lr_decay_patience=1)
    state = LoopState()
    steps = []
    for record in _records([(0.80, 0.5), (0.79, 0.5), (0.81, 0.5), (0.80, 0.5), (0.80, 0.5), (0.79, 0.5)]):
        assert state.bad_epochs < t.patience  # the loop would not have run this epoch otherwise
        steps.append((*end_epoch(state, record, t), state.lr_scale))
    assert steps == [
        (True, False, 1.0),  # best
        (False, True, 0.5),  # plateau: lr halved
        (True, False, 0.5),  # better again: counters reset, the lr stays
        (False, True, 0.25),
        (False, True, 0.125),
        (False, False, 0.125),  # third bad epoch: patience reached, no pointless reduction
    ]
    assert state.bad_epochs == t.patience and state.best_epoch == 3


def test_lr_decay_patience_counts_since_the_last_reduction():
    t = TrainConfig(monitor="logloss", patience=5, lr_decay_factor=0.1, lr_decay_patience=2)
    state = LoopState()
    reduced = [end_epoch(state, r, t)[1] for r in _records([(0.8, 0.3)] + [(0.8, 0.4)] * 5)]
    assert reduced == [False, False, True, False, True, False]
    assert state.lr_scale == pytest.approx(0.01) and state.bad_epochs == 5


def test_lr_scale_and_plateau_counters_resume_from_the_checkpoint(synthetic_dir, tmp_path):
    """The reduced lr is part of the resumable state: a new process restores the scale
    and the counters, and applies the scale to the configured lr of each model optimizer
    (from the loop state, whatever lr the checkpointed optimizer variable held)."""
    info = read_dataset_info(synthetic_dir)
    config = load_config(preset_path("criteo", "cpu"), ["--train.emb_lr=0.1", "--train.lr=0.01",
                                                        "--train.patience=4"])
    writer = Phase("t", LogReg(info.field_names, info.vocab_sizes), config, info, tmp_path / "c",
                   tmp_path / "tb", train_arch=False)
    for record in _records([(0.8, 0.3), (0.7, 0.4)]):
        end_epoch(writer.state, record, config.train)
    writer.checkpoint(improved=False)
    reader = Phase("t", LogReg(info.field_names, info.vocab_sizes), config, info, tmp_path / "c",
                   tmp_path / "tb2", train_arch=False)
    assert [float(opt.learning_rate) for _, opt, _ in reader.groups] == pytest.approx([0.1, 0.01])
    assert reader.restore()
    assert (reader.state.lr_scale, reader.state.bad_epochs, reader.state.plateau_epochs) == (0.1, 1, 0)
    assert [float(opt.learning_rate) for _, opt, _ in reader.groups] == pytest.approx([0.01, 0.001])
    # the traced step reads the reduced lr: Adam's first step moves the bias by lr x scale = 0.001
    reader.train_step({name: tf.constant([0], tf.int64) for name in info.field_names}, tf.constant([1.0]))
    assert float(reader.model.bias[0]) == pytest.approx(0.001, rel=1e-3)
