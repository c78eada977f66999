"""The train step on a hand-computable model: loss, separate lr and L2 per group."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.dataset_info import read_dataset_info
from trainer.config import load_config, preset_path
from trainer.loop import Phase, bce_loss


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
