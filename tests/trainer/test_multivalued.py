"""Multi-valued fields: pooling by hand, no gradient to pads, models training on them."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline.dataset_info import PAD_ID
from trainer.model.embedding import FieldEmbedding, stack_ids
from trainer.model.supernet import SupernetConfig
from trainer.zoo import ZOO

TABLE = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, -1.0], [3.0, 5.0], [10.0, 20.0], [30.0, 40.0]], "float32")
# Field a (single, vocab 2): rows 0-1; field s (multi, max_len 3, vocab 4): rows 2-5.
IDS = np.array([
    [1, 0, 2, PAD_ID],  # a=1; s = {0, 2}
    [0, 3, 3, 1],  # a=0; s = {3, 3, 1}
    [1, PAD_ID, PAD_ID, PAD_ID],  # a=1; s all pads -> zeros
], "int64")


def _embedding(pooling: str) -> FieldEmbedding:
    emb = FieldEmbedding([2, 4], emb_dim=2, max_lens=[1, 3], pooling=pooling)
    emb(tf.constant(IDS))
    emb.table.assign(TABLE)
    return emb


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_pooling_by_hand(pooling):
    got = _embedding(pooling)(tf.constant(IDS)).numpy()
    s = TABLE[2:]  # field s's rows
    sums = [s[0] + s[2], s[3] + s[3] + s[1], np.zeros(2)]
    counts = [2, 3, 1]
    pooled = sums if pooling == "sum" else [v / c for v, c in zip(sums, counts, strict=True)]
    want = np.stack([np.concatenate([TABLE[a], p]) for a, p in zip([1, 0, 1], pooled, strict=True)])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_pads_get_no_gradient_and_real_ids_do():
    emb = _embedding("mean")
    ids = tf.constant([[1, 1, PAD_ID, PAD_ID]], tf.int64)  # a=1; s = {1}
    with tf.GradientTape() as tape:
        out = emb(ids)
    grad = tf.convert_to_tensor(tape.gradient(out, emb.table)).numpy()
    # Only a's row 1 and s's id 1 (row 3) are read; a pad reads s's id 0 (row 2) masked out.
    np.testing.assert_array_equal(np.flatnonzero(np.abs(grad).sum(axis=1)), [1, 3])


def test_single_valued_fields_keep_the_plain_lookup():
    plain = FieldEmbedding([2, 4], emb_dim=2)
    multi = FieldEmbedding([2, 4], emb_dim=2, max_lens=[1, 1])
    ids = tf.constant([[1, 3], [0, 2]], tf.int64)
    plain(ids), multi(ids)
    plain.table.assign(TABLE)
    multi.table.assign(TABLE)
    np.testing.assert_array_equal(plain(ids).numpy(), [[1, 1, 30, 40], [0, 1, 10, 20]])
    np.testing.assert_array_equal(multi(ids).numpy(), plain(ids).numpy())


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="max_lens.*Received: \\[1\\]"):
        FieldEmbedding([2, 4], emb_dim=2, max_lens=[1])
    with pytest.raises(ValueError, match="pooling.*'max'"):
        FieldEmbedding([2, 4], emb_dim=2, pooling="max")
    with pytest.raises(ValueError, match="pooling"):
        SupernetConfig(pooling="max")


def test_stack_ids_accepts_b_and_b1_and_b_len():
    features = {"a": tf.constant([[1], [0]], tf.int64), "s": tf.constant([[0, 2, -1], [3, 3, 1]], tf.int64)}
    np.testing.assert_array_equal(stack_ids(features, ["a", "s"], [1, 3]).numpy(), [[1, 0, 2, -1], [0, 3, 3, 1]])
    for flat in ({"a": tf.constant([1, 0], tf.int64), "b": tf.constant([2, 3], tf.int64)},
                 {"a": tf.constant([[1], [0]], tf.int64), "b": tf.constant([[2], [3]], tf.int64)}):
        np.testing.assert_array_equal(stack_ids(flat, ["a", "b"], [1, 1]).numpy(), [[1, 2], [0, 3]])


@pytest.mark.parametrize("name", sorted(n for n, e in ZOO.items() if e.class_path is not None))
def test_every_zoo_model_takes_a_multi_valued_field(name):
    config = SupernetConfig(n=2, emb_dim=4, pooling="sum")
    model = ZOO[name].model_class(config, ["a", "s"], [2, 4], max_lens=[1, 3])
    features = {"a": tf.constant(IDS[:, 0]), "s": tf.constant(IDS[:, 1:])}
    with tf.GradientTape() as tape:
        logits = model(features, training=True)
    assert logits.shape == (3, 1)
    table = model.embedding_variables[0]
    grad = tf.convert_to_tensor(tape.gradient(logits, table)).numpy()
    assert np.abs(grad[2:]).sum() > 0  # the multi-valued field's rows are reached
    restored = type(model).from_config(model.get_config())
    assert restored.max_lens == [1, 3] and restored(features).shape == (3, 1)
