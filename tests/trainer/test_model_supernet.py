"""The assembled supernet: modes, pruning, gradients, variants and serialization."""

import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.architecture import OPS, Architecture, candidate_inputs, connectable_components, fusing_components
from trainer.model import Supernet, SupernetConfig
from trainer.model_io import copy_weights_by_path

SHIPPED = pathlib.Path(__file__).resolve().parents[2] / "trainer" / "architectures"
NAMES, VOCABS = ["a", "b"], [3, 4]
CFG = SupernetConfig(n=1, emb_dim=2, att_dim=3, emb_std=0.3)  # d = 4


def _features(batch=5, seed=0):
    rng = np.random.default_rng(seed)
    return {name: tf.constant(rng.integers(0, v, batch), tf.int64) for name, v in zip(NAMES, VOCABS, strict=True)}


def _model(config=CFG, **kwargs):
    return Supernet(config, NAMES, VOCABS, **kwargs)


def _copy_by_path(src, dst):
    """Gives dst every weight of src with the same path (dst may lack some)."""
    assert copy_weights_by_path(dst, {v.path: v.numpy() for v in src.weights}, src.component_inputs) == []


def _all_on(n=1, op=None):
    """Every edge on; Hard op `op` (or beta all 0)."""
    beta = [20.0 if o == op else 0.0 for o in OPS] if op else [0.0] * len(OPS)
    return Architecture(
        n=n,
        alpha={c: {s: 1.0 for s in candidate_inputs(c, n)} for c in connectable_components(n)},
        beta={c: list(beta) for c in fusing_components(n)},
    )


def test_search_parameter_count_by_hand():
    model = _model()
    d = 4
    expected = (
        7 * 2  # one table: (3 + 4) ids x emb 2
        + 2 * (d + d)  # S0, S1 cross: w, b
        + (d * d + d)  # D1 dense
        + (d + 1)  # head
        + 2 * (2 * d * d + d * 3 + 3 + 3)  # S1, D1 fusion (k=2): concat + att
        + (4 * d * d + d * 3 + 3 + 3)  # H fusion (k=4)
        + (1 + 2 + 2 + 4)  # alpha: E->S0, 2, 2, 4
        + 3 * 4  # beta
    )
    assert model.count_params() == expected == 258
    assert len(model.embedding_variables) == 1
    assert sum(int(np.prod(v.shape)) for v in model.arch_variables) == 9 + 12
    n_all = len(model.arch_variables) + len(model.embedding_variables) + len(model.dense_variables)
    assert n_all == len(model.trainable_variables)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_search_builds_for_any_n(n):
    model = _model(SupernetConfig(n=n, emb_dim=2, att_dim=2))
    assert model(_features()).shape == (5, 1)
    assert [v.path.split("/")[-1] for v in model.arch_variables[: 2 * n + 2]] == [
        f"alpha_{c}" for c in connectable_components(n)
    ]
    assert sum(int(np.prod(v.shape)) for v in model.arch_variables if "alpha" in v.path) == 2 * (n + 1) ** 2 + 1


def test_gradients_reach_every_alpha_and_beta_in_search():
    model = _model()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(_features(), training=True))
    grads = tape.gradient(loss, model.arch_variables)
    for var, grad in zip(model.arch_variables, grads, strict=True):
        assert grad is not None and np.all(np.abs(grad.numpy()) > 0), var.path


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_retrain_modes_have_no_architecture_variables(mode):
    model = _model(architecture=_all_on(op="prod"), mode=mode)
    assert model.arch_variables == []
    assert not [v for v in model.weights if "alpha" in v.path or "beta" in v.path]
    assert model.architecture() == _all_on(op="prod")
    expected_ops = ("prod",) if mode == "hard" else OPS
    assert {c: f.op_names for c, f in model.fusions.items()} == {c: expected_ops for c in ["S1", "D1", "H"]}


def test_soft_mode_equals_search_with_same_alpha_beta():
    search = _model()
    for var in search.alpha.values():
        var.assign(np.full(var.shape, 0.5))
    soft = _model(architecture=search.architecture(), mode="soft")
    _copy_by_path(search, soft)
    feats = _features()
    np.testing.assert_allclose(soft(feats).numpy(), search(feats).numpy(), rtol=1e-5)


def test_hard_mode_equals_fixed_op_search_and_pruning_keeps_the_function():
    search = _model(fixed_op="concat")
    search.alpha["H"].assign([0.5, -0.5, 0.5, -0.5])  # H <- E, S1 ; S0 and D1 cut from H
    search.alpha["S1"].assign([0.5, 0.5])  # S1 <- E, S0: S0 still reaches H through S1
    arch = search.architecture()
    assert arch.reachable() == {"E", "S0", "S1", "H"}
    hard = _model(architecture=arch, mode="hard")
    assert sorted(hard.blocks) == ["H", "S0", "S1"]  # D1 is not built
    assert hard.count_params() < search.count_params()
    _copy_by_path(search, hard)  # fails if hard has a weight search lacks
    feats = _features()
    np.testing.assert_allclose(hard(feats).numpy(), search(feats).numpy(), rtol=1e-5)


def test_component_without_inputs_outputs_its_bias():
    # D1 has no input but feeds H alone: logit = head(relu(dense bias)).
    arch = Architecture.from_design(n=1, inputs={"H": ["D1"]}, ops="add")
    model = _model(architecture=arch, mode="hard")
    model.blocks["D1"].dense.set_weights([np.ones((4, 4)), np.array([1.0, -1.0, 2.0, 0.0])])
    model.blocks["H"].set_weights([np.ones((4, 1)), np.array([0.5])])
    np.testing.assert_allclose(model(_features()).numpy(), np.full((5, 1), 3.5))
    assert sorted(model.blocks) == ["D1", "H"]


def test_search_ops_only_freezes_connections():
    arch = Architecture.from_design(n=1, inputs={"S0": ["E"], "S1": ["S0"], "H": ["S1"]}, ops="add")
    model = _model(architecture=arch, search_ops_only=True)
    assert [v.path.split("/")[-1] for v in model.arch_variables] == ["beta_S1", "beta_H"]
    model.beta["H"].assign([0.0, 0.0, 0.0, 5.0])
    found = model.architecture()
    assert found.alpha == arch.alpha
    assert found.hard_ops()["H"] == "att" and found.hard_ops()["D1"] == "add"
    assert found.beta["D1"] == arch.beta["D1"]  # pruned component keeps the given beta


def test_fixed_op_searches_connections_only():
    model = _model(fixed_op="prod")
    assert all("alpha" in v.path for v in model.arch_variables)
    assert {f.op_names for f in model.fusions.values()} == {("prod",)}
    model.alpha["D1"].assign([-1.0, 2.0])
    arch = model.architecture()
    assert arch.alpha["D1"] == {"E": -1.0, "S0": 2.0}
    assert set(arch.hard_ops().values()) == {"prod"}
    assert arch.inputs("D1") == ["S0"]


@pytest.mark.parametrize("shallow", ["crossnetv2", "cin"])
def test_other_shallow_components(shallow):
    model = _model(SupernetConfig(n=1, emb_dim=2, att_dim=2, shallow=shallow))
    assert model(_features()).shape == (5, 1)
    assert type(model.blocks["S1"]).__name__ == {"crossnetv2": "CrossNetV2", "cin": "CIN"}[shallow]


def test_train_step_compiles_under_xla():
    model = _model(SupernetConfig(n=1, emb_dim=2, att_dim=2, deep_batchnorm=True, dropout=0.1))
    variables = model.trainable_variables

    @tf.function(jit_compile=True)
    def grads(feats):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(feats, training=True))
        return tape.gradient(loss, variables)

    assert all(g is not None for g in grads(_features()))


def test_config_and_keras_file_round_trip(tmp_path):
    arch = Architecture.from_design(n=1, inputs={"S1": ["E"], "H": ["S1", "E"]}, ops={"H": "att"})
    for kwargs in ({}, {"architecture": arch, "mode": "soft"}, {"fixed_op": "add"}):
        model = _model(**kwargs)
        clone = Supernet.from_config(model.get_config())
        assert clone.get_config() == model.get_config()
        _copy_by_path(model, clone)
        np.testing.assert_allclose(clone(_features()).numpy(), model(_features()).numpy(), rtol=1e-6)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, Supernet) and loaded.fixed_op == "add"
    np.testing.assert_allclose(loaded(_features()).numpy(), model(_features()).numpy(), rtol=1e-6)


def test_supernet_config_dict_round_trip_and_checks():
    cfg = SupernetConfig(n=2, shallow="cin", dropout=0.1)
    assert SupernetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="Unknown model config keys \\['layers'\\]"):
        SupernetConfig.from_dict({"layers": 3})
    with pytest.raises(ValueError, match="shallow='fm'"):
        SupernetConfig(shallow="fm")
    with pytest.raises(ValueError, match="n=0"):
        SupernetConfig(n=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "bayes"}, "mode='bayes'"),
        ({"mode": "hard"}, "needs an architecture"),
        ({"search_ops_only": True}, "needs an architecture"),
        ({"architecture": _all_on()}, "takes no architecture"),
        ({"architecture": _all_on(n=2), "mode": "soft"}, "n=2 but the config n=1"),
        ({"fixed_op": "max"}, "'max'"),
        ({"fixed_op": "add", "architecture": _all_on(), "search_ops_only": True}, "cannot combine"),
        ({"architecture": _all_on(), "mode": "hard", "search_ops_only": True}, "needs mode='search'"),
    ],
)
def test_bad_arguments_fail_with_a_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _model(**kwargs)
    with pytest.raises(ValueError, match="equal length"):
        Supernet(CFG, ["a"], [3, 4])


@pytest.mark.parametrize("name", ["parallel_dcn", "stacked_dcnv2", "fnn"])
def test_shipped_designs_build_pruned_hard_models(name):
    arch = Architecture.load(SHIPPED / f"{name}.json")
    model = _model(SupernetConfig(n=arch.n, emb_dim=2, shallow="crossnetv2"), architecture=arch, mode="hard")
    assert set(model.component_inputs) == arch.reachable() - {"E"}
    assert model(_features()).shape == (5, 1)
