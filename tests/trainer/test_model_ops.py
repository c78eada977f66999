"""Hand-computed values of the supernet's building blocks: STE, fusion ops, components."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.model.components import CIN, CrossNet, CrossNetV2, DeepBlock, make_shallow
from trainer.model.embedding import FieldEmbedding
from trainer.model.fusion import Fusion
from trainer.model.ste import ste

# Three inputs (batch 1, d = 2); the middle one is huge so that any leak shows.
X1, X2, X3 = [[1.0, 2.0]], [[100.0, 100.0]], [[2.0, 1.0]]


def _inputs():
    return [tf.constant(X1), tf.constant(X2), tf.constant(X3)]


def _fusion(op_names, att_dim=1):
    layer = Fusion(op_names, att_dim=att_dim, kernel_initializer="ones")
    layer.build([(1, 2)] * 3)
    return layer


def test_ste_forward_is_indicator_and_gradient_is_identity():
    alpha = keras.Variable([-1.0, 0.0, 0.5, 3.0])
    weights = tf.constant([1.0, 2.0, 3.0, 4.0])
    with tf.GradientTape() as tape:
        out = ste(alpha)
        loss = tf.reduce_sum(out * weights)
    np.testing.assert_array_equal(out.numpy(), [0.0, 0.0, 1.0, 1.0])
    np.testing.assert_array_equal(tape.gradient(loss, alpha).numpy(), [1.0, 2.0, 3.0, 4.0])


@pytest.mark.parametrize(
    "op, expected",
    [
        ("add", [3.0, 3.0]),  # x1 + x3
        ("prod", [2.0, 2.0]),  # x1 * x3: the disconnected x2 counts as 1, not 0
        ("concat", [6.0, 6.0]),  # ones @ [x1 || 0 || x3]
        ("att", [1.5, 1.5]),  # scores relu(sum x) = 3, (masked), 3 -> 0.5 x1 + 0.5 x3
    ],
)
def test_each_op_ignores_a_disconnected_input(op, expected):
    out = _fusion((op,))(_inputs(), connected=tf.constant([1.0, 0.0, 1.0]))
    np.testing.assert_allclose(out.numpy(), [expected], rtol=1e-6)


@pytest.mark.parametrize(
    "op, expected",
    [
        ("add", [103.0, 103.0]),
        ("prod", [200.0, 200.0]),
        ("concat", [206.0, 206.0]),
        # scores 3, 200, 3: x2 gets weight 1 - 2 / (2 + e^197), i.e. all of it
        ("att", [100.0, 100.0]),
    ],
)
def test_each_op_with_all_inputs_connected(op, expected):
    layer = _fusion((op,))
    np.testing.assert_allclose(layer(_inputs()).numpy(), [expected], rtol=1e-6)
    np.testing.assert_allclose(
        layer(_inputs(), connected=tf.constant([1.0, 1.0, 1.0])).numpy(), [expected], rtol=1e-6
    )


def test_concat_by_row_blocks_by_hand():
    # W rows 1..6 (2 columns): x1 W[0:2] + x2 W[2:4] + x3 W[4:6], the serving form's CONCAT.
    kernel = np.arange(12, dtype="float32").reshape(6, 2)
    by_hand = np.array(X1) @ kernel[0:2] + np.array(X2) @ kernel[2:4] + np.array(X3) @ kernel[4:6]
    for blocks in (False, True):
        layer = Fusion(("concat",), concat_blocks=blocks)
        layer.build([(1, 2)] * 3)
        if blocks:
            for i, block in enumerate(layer.concat_kernels):
                block.assign(kernel[2 * i:2 * i + 2])
        else:
            layer.concat_kernel.assign(kernel)
        np.testing.assert_allclose(layer(_inputs()).numpy(), by_hand, rtol=1e-6)
        masked = layer(_inputs(), connected=tf.constant([1.0, 0.0, 1.0])).numpy()
        np.testing.assert_allclose(masked, by_hand - np.array(X2) @ kernel[2:4], rtol=1e-6)


@pytest.mark.parametrize("op", ["add", "prod", "concat", "att"])
def test_no_connected_input_fuses_to_zero(op):
    out = _fusion((op,))(_inputs(), connected=tf.constant([0.0, 0.0, 0.0]))
    np.testing.assert_array_equal(out.numpy(), [[0.0, 0.0]])


def test_gradient_reaches_the_switch_of_a_disconnected_input():
    alpha = keras.Variable([0.5, -0.5, 0.5])
    layers = {op: _fusion((op,)) for op in ("add", "prod", "concat")}
    grads = {}
    for op, layer in layers.items():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(_inputs(), connected=ste(alpha)))
        grads[op] = tape.gradient(loss, alpha).numpy()
    # d/dm2 of sum(m1 x1 + m2 x2 + m3 x3) = sum(x2)
    np.testing.assert_allclose(grads["add"], [3.0, 200.0, 3.0])
    # d/dm2 of sum((m2 x2 + 1 - m2) x1 x3) = sum((x2 - 1) x1 x3) = 99 * 2 + 99 * 2;
    # d/dm1 = sum((x1 - 1) x3) = 0 * 2 + 1 * 1, d/dm3 = sum((x3 - 1) x1) = 1 * 1 + 0 * 2
    np.testing.assert_allclose(grads["prod"], [1.0, 396.0, 1.0])
    # CONCAT with a ones kernel: both output units see sum(x_i)
    np.testing.assert_allclose(grads["concat"], [6.0, 400.0, 6.0])


def _prod_norm():
    layer = Fusion(("prod",), prod_norm=True)
    layer.build([(1, 2)] * 3)
    return layer


def test_scale_preserving_prod_by_hand():
    layer = _prod_norm()
    # x1 x3 = [2, 2]: direction [1, 1]; r1 = r3 = sqrt((1 + 4) / 2) = sqrt(2.5); x2 disconnected
    # (not in the geometric mean): RMS g = sqrt(r1 r3) = sqrt(2.5)
    out = layer(_inputs(), connected=tf.constant([1.0, 0.0, 1.0]))
    np.testing.assert_allclose(out.numpy(), [[2.5**0.5] * 2], rtol=1e-6)
    # all three: direction [1, 1], r2 = 100, g = (2.5 * 100)^(1/3)
    np.testing.assert_allclose(layer(_inputs()).numpy(), [[250.0 ** (1.0 / 3.0)] * 2], rtol=1e-6)
    # one input is returned as it is; none fuses to zero
    np.testing.assert_allclose(layer(_inputs(), connected=tf.constant([0.0, 1.0, 0.0])).numpy(), X2, rtol=1e-6)
    np.testing.assert_array_equal(layer(_inputs(), connected=tf.constant([0.0, 0.0, 0.0])).numpy(), [[0.0, 0.0]])


def test_scale_preserving_prod_keeps_many_small_relu_inputs_at_their_scale():
    rng = np.random.default_rng(0)
    inputs = [tf.constant(np.maximum(rng.normal(0, 1e-2, (64, 256)), 0.0), tf.float32) for _ in range(4)]
    raw = Fusion(("prod",))(inputs).numpy()
    scaled = Fusion(("prod",), prod_norm=True)(inputs).numpy()
    rms = lambda x: float(np.sqrt(np.mean(np.square(x))))  # noqa: E731
    assert rms(raw) < 1e-5 * rms(inputs[0])  # the paper's product: a zero op
    assert 0.5 < rms(scaled) / rms(inputs[0]) < 2.0
    same = Fusion(("prod",), prod_norm=True)([inputs[0]] * 8).numpy()  # 8 equal inputs: heavy-tailed x^8
    assert 0.5 < rms(same) / rms(inputs[0]) < 2.0
    np.testing.assert_array_equal(raw == 0, scaled == 0)  # same direction, other scale


def test_mixture_of_ops_uses_op_weights():
    layer = _fusion(("add", "prod", "concat", "att"))
    out = layer(_inputs(), connected=tf.constant([1.0, 0.0, 1.0]), op_weights=tf.constant([0.1, 0.2, 0.3, 0.4]))
    # 0.1 * 3 + 0.2 * 2 + 0.3 * 6 + 0.4 * 1.5
    np.testing.assert_allclose(out.numpy(), [[3.1, 3.1]], rtol=1e-6)
    with pytest.raises(ValueError, match="needs op_weights"):
        layer(_inputs())


def test_fusion_builds_only_the_weights_of_its_ops():
    assert [w.name for w in _fusion(("add", "prod")).weights] == []
    assert [tuple(w.shape) for w in _fusion(("concat",)).weights] == [(6, 2)]
    att = _fusion(("att",), att_dim=5)
    assert [tuple(w.shape) for w in att.weights] == [(2, 5), (5,), (5, 1)]
    single = Fusion(("att",))
    x = tf.constant(X1)
    np.testing.assert_array_equal(single([x]).numpy(), X1)  # one input: weight 1, no scorer
    assert single.weights == []


def test_fusion_rejects_bad_arguments():
    with pytest.raises(ValueError, match="Received: op_names=\\('max',\\)"):
        Fusion(("max",))
    with pytest.raises(ValueError, match="distinct"):
        Fusion(("add", "add"))
    with pytest.raises(ValueError, match="att_dim=0"):
        Fusion(att_dim=0)


def test_att_hidden_width_defaults_to_d():
    att = _fusion(("att",), att_dim=None)
    assert [tuple(w.shape) for w in att.weights] == [(2, 2), (2,), (2, 1)]


def test_cross_layers_by_hand():
    x0, x = tf.constant([[1.0, 2.0]]), tf.constant([[3.0, 4.0]])
    v1 = CrossNet(kernel_initializer="ones", bias_initializer="ones")
    # x0 * (w . x) + b + x = [1, 2] * 7 + 1 + [3, 4]
    np.testing.assert_allclose(v1(x0, x).numpy(), [[11.0, 19.0]])
    v2 = CrossNetV2(kernel_initializer="ones", bias_initializer="ones")
    # x0 * (W x + b) + x = [1, 2] * 8 + [3, 4]
    np.testing.assert_allclose(v2(x0, x).numpy(), [[11.0, 20.0]])
    assert [tuple(w.shape) for w in v1.weights] == [(2, 1), (2,)]
    assert [tuple(w.shape) for w in v2.weights] == [(2, 2), (2,)]


def test_cin_by_hand():
    # 2 fields of width 1: out[f] = sum_{h,m} x[h] x0[m] = (3 + 4) * (1 + 2)
    cin = CIN(num_fields=2, kernel_initializer="ones")
    np.testing.assert_allclose(cin(tf.constant([[1.0, 2.0]]), tf.constant([[3.0, 4.0]])).numpy(), [[21.0, 21.0]])
    # width 2 per field: products stay within each embedding coordinate
    cin2 = CIN(num_fields=2, kernel_initializer="ones")
    out = cin2(tf.constant([[1.0, 10.0, 2.0, 20.0]]), tf.constant([[3.0, 30.0, 4.0, 40.0]]))
    np.testing.assert_allclose(out.numpy(), [[21.0, 2100.0, 21.0, 2100.0]])
    with pytest.raises(ValueError, match="multiple of num_fields=3"):
        CIN(num_fields=3)(tf.constant([[1.0, 2.0]]), tf.constant([[1.0, 2.0]]))


def test_deep_block_is_dense_relu():
    block = DeepBlock()
    block(tf.zeros((1, 2)))
    block.dense.set_weights([np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0.5, 0.5])])
    np.testing.assert_allclose(block(tf.constant([[1.0, -3.0]])).numpy(), [[1.5, 0.0]])
    with pytest.raises(ValueError, match="dropout=1.0"):
        DeepBlock(dropout=1.0)


def test_embedding_offsets_share_one_table():
    emb = FieldEmbedding([2, 3], emb_dim=1)
    emb(tf.zeros((1, 2), tf.int64))
    emb.table.assign([[0.0], [1.0], [2.0], [3.0], [4.0]])
    # field a id 1 -> row 1; field b id 2 -> row 2 + 2
    np.testing.assert_array_equal(emb(tf.constant([[1, 2], [0, 0]], tf.int64)).numpy(), [[1.0, 4.0], [0.0, 2.0]])
    with pytest.raises(ValueError, match="positive sizes"):
        FieldEmbedding([2, 0], emb_dim=1)


def test_make_shallow_seam():
    assert isinstance(make_shallow("crossnet", 3, "S1"), CrossNet)
    assert isinstance(make_shallow("crossnetv2", 3, "S1"), CrossNetV2)
    assert isinstance(make_shallow("cin", 3, "S1"), CIN)
    with pytest.raises(ValueError, match="Received: 'fm'"):
        make_shallow("fm", 3, "S1")


@pytest.mark.parametrize(
    "layer",
    [
        Fusion(("prod", "att"), att_dim=7, prod_norm=True),
        Fusion(("concat",), concat_blocks=True),
        CrossNet(bias_initializer="ones"),
        CrossNetV2(),
        CIN(num_fields=4),
        DeepBlock(batchnorm=True, dropout=0.25),
        FieldEmbedding([3, 4], emb_dim=5, std=0.01),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_layer_serialization_round_trip(layer):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer)
    assert restored.get_config() == layer.get_config()


def test_scale_preserving_prod_skips_an_all_zero_input():
    # A dead ReLU (or a component with no input) is all zeros: it counts as 1, like
    # a disconnected input, instead of zeroing the product; per example.
    x1, zero = tf.constant([[1.0, 2.0], [1.0, 2.0]]), tf.constant([[0.0, 0.0], [0.0, 0.0]])
    x3 = tf.constant([[2.0, 1.0], [0.0, 0.0]])
    out = Fusion(("prod",), prod_norm=True)([x1, zero, x3]).numpy()
    np.testing.assert_allclose(out[0], [2.5**0.5] * 2, rtol=1e-6)  # as with x2 disconnected
    np.testing.assert_allclose(out[1], X1[0], rtol=1e-6)  # only x1 is live in row 2
    np.testing.assert_array_equal(Fusion(("prod",), prod_norm=True)([zero, zero]).numpy(), zero.numpy())
