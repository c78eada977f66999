"""The serving form against the trained form it rewrites: same logits, architecture by architecture.

Checked here directly on random weights and inputs, not only through the
export's end check: a change to CrossNet, to H's head or to a CONCAT that the
folds do not follow fails one of these.
"""

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import ROOT
from trainer.architecture import OPS, Architecture, candidate_inputs, connectable_components, fusing_components
from trainer.model import Supernet, SupernetConfig
from trainer.model.components import CrossNet
from trainer.model.serving_form import ServingForm, serving_form
from trainer.model_io import serving_form as exported_form

NAMES, VOCABS = ["a", "b", "c"], [3, 4, 5]
CFG = SupernetConfig(n=2, emb_dim=2, att_dim=3, emb_std=0.3)  # d = 6


def _all_on(n, beta):
    return Architecture(n=n, alpha={c: {s: 1.0 for s in candidate_inputs(c, n)} for c in connectable_components(n)},
                        beta={c: list(beta) for c in fusing_components(n)})


def _hard_all(op, h_op=None, n=2):
    """Every edge on, `op` in every component (H: `h_op`)."""
    one_hot = {o: [20.0 if x == o else 0.0 for x in OPS] for o in OPS}
    return Architecture(n=n, alpha=_all_on(n, [0.0] * 4).alpha,
                        beta={c: list(one_hot[h_op or op if c == "H" else op]) for c in fusing_components(n)})


# (id, architecture, mode, shallow, expected ServingForm.fold_shallow)
CASES = [
    ("hard_h_concat_alone", _hard_all("concat"), "hard", "crossnet", ["S2"]),
    ("soft", _all_on(2, [0.3, -0.2, 0.5, 0.1]), "soft", "crossnet", []),
    # Cross layers stacked under H (S0 -> S1 -> S2 -> H), a deep layer beside: S2 folds, S1 (read by S2, D2) not.
    ("stacked", Architecture.from_design(2, inputs={"S0": ["E"], "S1": ["E", "S0"], "S2": ["S1", "E"], "D2": ["S1"],
                                                    "H": ["S2", "D2"]},
                                         ops={"S1": "concat", "S2": "concat", "D2": "add", "H": "concat"}),
     "hard", "crossnet", ["S2"]),
    # Stacked DCN (cross, then deep) with CONCATs: H fuses D2 alone, nothing but H's CONCAT folds.
    ("stacked_cross_then_deep", Architecture.from_design(2, inputs={"S0": ["E"], "S1": ["E", "S0"], "D2": ["S1", "E"],
                                                                    "H": ["D2"]}, ops="concat"),
     "hard", "crossnet", []),
    ("h_add_other_concats", _hard_all("concat", h_op="add"), "hard", "crossnet", []),
    ("crossnetv2_no_shallow_fold", _hard_all("concat"), "hard", "crossnetv2", []),
    ("h_concat_att_mix", _all_on(1, [-1.0, 0.2, 0.4, 0.3]), "soft", "crossnet", []),
    ("shipped_parallel_dcn", Architecture.load(ROOT / "trainer" / "architectures" / "parallel_dcn.json"),
     "hard", "crossnet", []),
]


def _features(batch, seed):
    rng = np.random.default_rng(seed)
    return {name: tf.constant(rng.integers(0, v, batch), tf.int64) for name, v in zip(NAMES, VOCABS, strict=True)}


def _trained(arch, mode, shallow, seed=1):
    """The model with random weights of std 0.5 (well away from the initial zeros and ones)."""
    model = Supernet(SupernetConfig(n=arch.n, emb_dim=2, att_dim=3, shallow=shallow), NAMES, VOCABS,
                     architecture=arch, mode=mode)
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.normal(0.0, 0.5, v.shape).astype("float32"))
    return model


def _assert_same_logits(served, model):
    for seed in range(3):
        feats = _features(64, seed)
        np.testing.assert_allclose(served(feats).numpy(), model(feats).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch, mode, shallow, folded", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_serving_form_has_the_trained_logits(arch, mode, shallow, folded):
    model = _trained(arch, mode, shallow)
    served = serving_form(model)
    assert isinstance(served, ServingForm) and served.fold_shallow == folded
    assert served.fold_head == ("H" in model.fusions and "concat" in model.fusions["H"].op_names)
    paths = {v.path for v in served.weights}
    assert not any(p.endswith("/concat_kernel") for p in paths)  # every CONCAT as row blocks or folded
    assert not any(f"/fusion_{c}/" in p or f"/{c}/" in p for c in folded for p in paths)
    _assert_same_logits(served, model)
    assert exported_form(model).get_config() == served.get_config()  # the export's path: the same form


def test_the_folds_by_hand():
    """head_concat = W_c w without S2's slot; S2's fold = [W w, W h_S2], h_S2; bias + b . h_S2."""
    model = _trained(_hard_all("concat"), "hard", "crossnet")
    served = serving_form(model)
    d = len(NAMES) * 2
    w_c, w = model.fusions["H"].concat_kernel.numpy(), model.blocks["H"].kernel.numpy()
    h = w_c @ w
    slot = model.component_inputs["H"].index("S2")
    h_s2 = h[slot * d:(slot + 1) * d]
    np.testing.assert_allclose(served.head_concat.numpy(), np.delete(h, np.s_[slot * d:(slot + 1) * d], 0),
                               rtol=1e-5, atol=1e-6)
    w_s2, cross = model.fusions["S2"].concat_kernel.numpy(), model.blocks["S2"]
    projections, x0_head = (v.numpy() for v in served.shallow_fold["S2"])
    np.testing.assert_allclose(projections, np.concatenate([w_s2 @ cross.kernel.numpy(), w_s2 @ h_s2], 1),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x0_head, h_s2, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(served.blocks["H"].bias.numpy(),
                               model.blocks["H"].bias.numpy() + cross.bias.numpy() @ h_s2, rtol=1e-5, atol=1e-6)
    blocks = [b.numpy() for b in served.fusions["D2"].concat_kernels]  # D2 fuses E, S0, S1, D1
    np.testing.assert_array_equal(np.concatenate(blocks), model.fusions["D2"].concat_kernel.numpy())


def test_a_changed_cross_layer_breaks_the_check(monkeypatch):
    """The comparison can fail: a CrossNet formula the fold does not assume (no residual + x)."""
    monkeypatch.setattr(CrossNet, "call", lambda self, x0, x: x0 * tf.matmul(x, self.kernel) + self.bias)
    model = _trained(_hard_all("concat"), "hard", "crossnet")
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        _assert_same_logits(serving_form(model), model)


def test_serving_form_is_the_model_itself_where_nothing_changes():
    model = _trained(_hard_all("add"), "hard", "crossnet")
    assert serving_form(model) is model  # no CONCAT anywhere
    search = Supernet(CFG, NAMES, VOCABS)
    assert serving_form(search) is search  # nothing is folded while searching
    served = serving_form(_trained(_hard_all("concat"), "hard", "crossnet"))
    assert serving_form(served) is served
    with pytest.raises(ValueError, match="on the trained model"):
        served.fusion_spread(_features(4, 0))
    with pytest.raises(ValueError, match="a search has none"):
        ServingForm(CFG, NAMES, VOCABS, mode="search")


def test_serving_form_config_round_trip():
    served = serving_form(_trained(_hard_all("concat"), "hard", "crossnet"))
    clone = ServingForm.from_config(served.get_config())
    assert clone.get_config() == served.get_config() and clone.fold_shallow == served.fold_shallow
    for v, w in zip(clone.weights, served.weights, strict=True):
        assert v.path == w.path
        v.assign(w)
    feats = _features(8, 0)
    np.testing.assert_allclose(clone(feats).numpy(), served(feats).numpy(), rtol=1e-6)
