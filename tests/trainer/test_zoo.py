"""The baseline zoo: shapes, gradients, and hand-computed interaction terms."""

import numpy as np
import pytest
import tensorflow as tf

from trainer.architecture import Architecture
from trainer.model.supernet import SupernetConfig
from trainer.zoo import ZOO
from trainer.zoo.deepfm import fm_second_order
from trainer.zoo.edcn import Regulation
from trainer.zoo.ipnn import pairwise_inner_products
from trainer.zoo.xdeepfm import CompressedInteraction

NAMES, SIZES = ["a", "b", "c"], [5, 6, 7]
CONFIG = SupernetConfig(n=2, emb_dim=4)
KERAS_MODELS = sorted(name for name, entry in ZOO.items() if entry.class_path is not None)


def _features(batch: int = 4) -> dict[str, tf.Tensor]:
    return {n: tf.constant(np.arange(batch) % s, tf.int64) for n, s in zip(NAMES, SIZES, strict=True)}


@pytest.mark.parametrize("name", KERAS_MODELS)
def test_zoo_model_maps_ids_to_one_logit_and_every_weight_gets_a_gradient(name):
    model = ZOO[name].model_class(CONFIG, NAMES, SIZES)
    with tf.GradientTape() as tape:
        logits = model(_features(), training=True)
        loss = tf.reduce_sum(tf.square(logits - 1.0))
    assert logits.shape == (4, 1)
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None for g in grads)
    assert any(float(tf.reduce_max(tf.abs(tf.convert_to_tensor(g)))) > 0 for g in grads)
    groups = model.embedding_variables + model.dense_variables
    assert sorted(id(v) for v in groups) == sorted(id(v) for v in model.trainable_variables)
    assert model.arch_variables == []


@pytest.mark.parametrize("name", KERAS_MODELS)
def test_zoo_model_config_round_trip_gives_the_same_shape(name):
    model = ZOO[name].model_class(CONFIG, NAMES, SIZES)
    again = type(model).from_config(model.get_config())
    assert again.count_params() == model.count_params()


def test_architecture_baselines_point_at_shipped_files():
    for name, entry in ZOO.items():
        assert (entry.class_path is None) == (entry.architecture is not None), name
        if entry.architecture_path is not None:
            Architecture.load(entry.architecture_path)  # parses and validates


def test_fm_second_order_equals_the_sum_of_pairwise_inner_products():
    # v_a = (1, 2), v_b = (3, -1), v_c = (0, 5): <a,b> = 1, <a,c> = 10, <b,c> = -5 -> 6
    emb = tf.constant([[[1.0, 2.0], [3.0, -1.0], [0.0, 5.0]]])
    np.testing.assert_allclose(fm_second_order(emb).numpy(), [[6.0]])


def test_ipnn_inner_products_by_hand():
    emb = tf.constant([[[1.0, 2.0], [3.0, -1.0], [0.0, 5.0]]])
    np.testing.assert_allclose(pairwise_inner_products(emb).numpy(), [[1.0, 10.0, -5.0]])


def test_cin_one_layer_by_hand():
    # F = 2, e = 1, x0 = (2, 3); one map, kernel ones: sum_{i,j} x_i x0_j = (2 + 3)^2 = 25
    layer = CompressedInteraction([1])
    layer.build((None, 2, 1))
    layer.kernels[0].assign(np.ones((4, 1), np.float32))
    np.testing.assert_allclose(layer(tf.constant([[[2.0], [3.0]]])).numpy(), [[25.0]])


def test_regulation_gate_starts_as_the_identity_and_reweights_fields():
    layer = Regulation(num_fields=2)
    x = tf.constant([[2.0, 4.0, 6.0, 8.0]])  # fields (2, 4) and (6, 8)
    np.testing.assert_allclose(layer(x).numpy(), [[2.0, 4.0, 6.0, 8.0]])
    layer.gate.assign([np.log(3.0), 0.0])  # 2 * softmax -> (3/2, 1/2)
    np.testing.assert_allclose(layer(x).numpy(), [[3.0, 6.0, 3.0, 4.0]], rtol=1e-6)


@pytest.mark.parametrize("bridge_norm, expected", [(False, [1e-4, -1e-4]), (True, [1e-2, -1e-2])])
def test_edcn_bridge_by_hand_raw_product_or_scale_kept(bridge_norm, expected):
    # cross (0.02, -0.02), RMS 0.02; deep (0.005, 0.005), RMS 0.005: the raw product has RMS 1e-4,
    # the kept scale is the geometric mean sqrt(0.02 * 0.005) = 0.01, in the product's direction.
    model = ZOO["edcn"].model_class(SupernetConfig(n=1, emb_dim=1, bridge_norm=bridge_norm), ["a", "b"], [3, 3])
    bridge = model.bridges[0]([tf.constant([[0.02, -0.02]]), tf.constant([[0.005, 0.005]])])
    np.testing.assert_allclose(bridge.numpy(), [expected], rtol=1e-3)  # eps 1e-8 under the RMS


def _rms(x: tf.Tensor) -> float:
    return float(tf.sqrt(tf.reduce_mean(tf.square(x))))


@pytest.mark.parametrize("bridge_norm", [False, True])
def test_edcn_bridge_rms_per_layer_at_init(bridge_norm):
    # Issue 19 measured 7.9e-5 -> 4.5e-9 -> 1.9e-17 for the raw bridge: each layer multiplies the
    # scale by ~1e-4 (the product of two inputs of RMS ~1e-2). Kept, it stays at the embeddings' 1e-2.
    tf.random.set_seed(0)
    config = SupernetConfig(n=3, emb_dim=4, bridge_norm=bridge_norm)
    model = ZOO["edcn"].model_class(config, NAMES, SIZES)
    features = _features(batch=7)
    emb = _rms(model.flat_embeddings(model.ids(features)))
    bridges = [_rms(bridge) for _, _, bridge in model.layers_out(features)]
    assert 3e-3 < emb < 3e-2
    if bridge_norm:
        assert all(0.1 * emb < r < 10 * emb for r in bridges), bridges
    else:
        scales = [emb, *bridges]
        assert all(scales[i + 1] < 1e-2 * scales[i] for i in range(3)), scales


@pytest.mark.parametrize("name", ["ipnn", "deepfm", "xdeepfm"])
def test_mlp_hidden_layers_are_d_wide_whatever_the_input(name):
    # Issue 19: IPNN's first layer was as wide as its input, d + F (F - 1) / 2 (~3.4x d on Criteo).
    model = ZOO[name].model_class(SupernetConfig(n=3, emb_dim=2), ["a", "b", "c", "d"], [3, 3, 3, 3])
    d = 4 * 2
    first_in = d + 4 * 3 // 2 if name == "ipnn" else d
    shapes = [tuple(block.dense.kernel.shape) for block in model.deep]
    assert shapes == [(first_in, d), (d, d), (d, d)]
