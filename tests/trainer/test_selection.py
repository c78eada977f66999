"""Hard op selection by perturbation (trainer/selection.py): a hand-built case
where argmax(beta) picks the wrong op, the tie margin from the DeLong standard
error, and the search stage end to end."""

import json

import numpy as np
import pytest

from pipeline.dataset_info import read_dataset_info
from trainer import cli
from trainer.architecture import OPS, Architecture
from trainer.config import preset_path
from trainer.metrics import roc_auc
from trainer.selection import rule_architecture, select_from_run, select_ops, tie_margin


class _Var:
    """The two methods of a Keras variable that select_ops uses."""

    def __init__(self, value):
        self.value = np.array(value, dtype=np.float32)

    def numpy(self):
        return self.value.copy()

    def assign(self, value):
        self.value = np.array(value, dtype=np.float32)


def _rows_with_auc(auc, n=1000):
    """(labels, logits) of n positives and n negatives whose AUC is `auc` to 1 / n^2: negatives
    score 0..n-1, positive i scores c_i - 1/2, so it outranks c_i of them (sum c_i = auc n^2)."""
    pairs = round(auc * n * n)
    counts = np.full(n, pairs // n) + (np.arange(n) < pairs % n)
    return np.r_[np.ones(n), np.zeros(n)], np.r_[counts - 0.5, np.arange(n)].astype(np.float64)


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


class _Model:
    """n = 1 supernet stand-in: a 'validation AUC' that is a known function of the op mixtures.

    H: PROD hurts (its weight costs 0.2 AUC), ADD helps most; S1: CONCAT helps,
    but only while H is ADD (so the order of decisions shows); D1 does not matter.
    """

    def __init__(self):
        self.beta = {"S1": _Var([0.0, 0.0, 0.1, 0.0]), "D1": _Var([0.0, 0.0, 0.0, 0.0]),
                     "H": _Var([0.5, 1.0, 0.0, 0.2])}  # argmax(beta) at H: PROD
        self.calls = 0

    def auc(self):
        self.calls += 1
        h, s1 = _softmax(self.beta["H"].value), _softmax(self.beta["S1"].value)
        return float(0.7 + 0.05 * h[0] - 0.2 * h[1] + 0.01 * h[0] * s1[2])

    def predict(self):
        """The validation split's (labels, logits), whose AUC is `auc()`."""
        return _rows_with_auc(self.auc())


def _arch(edges_to_h=("S1", "D1")):
    return Architecture.from_design(n=1, inputs={"S1": ["E"], "D1": ["E"], "H": list(edges_to_h)}, ops="add")


def _searched(arch, model):
    """`arch`'s connections with the model's beta (what a search writes)."""
    return Architecture(n=1, alpha=arch.alpha, beta={c: v.value.tolist() for c, v in model.beta.items()})


def test_alone_picks_the_op_the_supernet_needs_not_the_largest_beta():
    model = _Model()
    arch = _searched(_arch(), model)
    assert arch.hard_ops()["H"] == "prod"
    before = {c: v.value.copy() for c, v in model.beta.items()}
    chosen = select_ops(model, model.predict, arch, "alone")
    assert chosen.hard_ops() == {"S1": "concat", "D1": "add", "H": "add"}
    # H is decided first and then fixed to ADD alone, so S1 sees the full +0.01 of CONCAT.
    s1_concat = _softmax(before["S1"])[2]  # S1 is still a mixture while H is decided
    assert chosen.selection["H"] == pytest.approx([0.75 + 0.01 * s1_concat, 0.5, 0.7, 0.7], abs=2e-6)
    assert chosen.selection["S1"] == pytest.approx([0.75, 0.75, 0.76, 0.75], abs=2e-6)
    # D1 (decided before S1: the reverse of level order) does not matter: a tie, so larger beta, then first op.
    assert chosen.selection["D1"] == pytest.approx([0.75 + 0.01 * s1_concat] * 4, abs=2e-6)
    assert model.calls == 3 * len(OPS) and chosen.selection_margin == {"H": 0.0, "D1": 0.0, "S1": 0.0}
    for comp, value in before.items():  # the supernet's beta is left as it was
        np.testing.assert_array_equal(model.beta[comp].value, value)
    assert chosen.beta == arch.beta and chosen.alpha == arch.alpha
    assert Architecture.from_json(chosen.to_json()).hard_ops() == chosen.hard_ops()  # the file keeps it


def test_remove_scores_the_auc_lost_without_each_op():
    model = _Model()
    chosen = select_ops(model, model.predict, _searched(_arch(), model), "remove")
    # Without ADD, H loses its only helpful op; without PROD it gains.
    assert chosen.hard_ops()["H"] == "add"
    scores = chosen.selection["H"]
    assert scores[0] > 0 > scores[1]


def test_beta_rule_fixed_op_search_and_pruned_components():
    model = _Model()
    arch = _searched(_arch(), model)
    assert select_ops(model, model.predict, arch, "beta") is arch and model.calls == 0
    pruned = select_ops(model, model.predict, _searched(_arch(edges_to_h=("S1",)), model), "alone")
    assert set(pruned.selection) == {"S1", "H"}  # D1 has no path to H: not scored
    assert pruned.hard_ops()["D1"] == "add"  # argmax beta (all tied: the first op)
    fixed = _Model()
    fixed.beta = {}  # a fixed-op search has no beta
    assert select_ops(fixed, fixed.predict, arch, "alone") is arch
    with pytest.raises(ValueError, match="hard_select must be one of"):
        select_ops(model, model.predict, arch, "argmax")


TINY = ["--model.emb_dim=4", "--model.n=1", "--model.att_dim=8", "--train.batch_size=128",
        "--train.epochs=1", "--search.arch_lr=0.05"]


@pytest.mark.slow
def test_search_records_the_selection_and_select_from_run_reproduces_it(synthetic_dir, tmp_path):
    out = tmp_path / "search"
    assert cli.main(["--stage=search", "--data", str(synthetic_dir), "--config", str(preset_path("criteo", "cpu")),
                     "--out", str(out), "--search.hard_select=remove", *TINY]) == 0
    data = json.loads((out / "architecture.json").read_text())
    arch = Architecture.from_dict(data)
    scored = {c for c in arch.reachable() if c in arch.beta and arch.inputs(c)}
    assert set(data["selection"]) == scored and set(data["selection_margin"]) == scored and scored
    for comp in scored:  # remove: the Hard op loses the most AUC when removed, or is within the margin of it
        scores, margin = data["selection"][comp], data["selection_margin"][comp]
        assert 0 < margin < 0.2  # one DeLong standard error (search.hard_select_tie_se = 1) of ~1k rows
        assert scores[OPS.index(data["hard_ops"][comp])] >= max(scores) - margin
    assert "selection: add " in (out / "architecture.txt").read_text()
    info = read_dataset_info(synthetic_dir)
    again = select_from_run(out, info, "remove", tie_se=1.0)
    assert again.selection.keys() == arch.selection.keys()
    for comp, scores in arch.selection.items():  # the saved weights give the search's own scores and margins
        assert again.selection[comp] == pytest.approx(scores, abs=1e-6)
        assert again.margin(comp) == pytest.approx(arch.margin(comp), abs=1e-6)
    path = rule_architecture(out, info, "remove")  # the search config's tie_se: the same file, written once
    assert path.name == "architecture_remove@1se.json" and Architecture.load(path).hard_ops() == arch.hard_ops()
    beta = Architecture.load(rule_architecture(out, info, "beta"))
    assert beta.selection is None and beta.beta == arch.beta
    assert select_from_run(out, read_dataset_info(synthetic_dir), "beta").selection is None


def test_delong_matches_a_hand_computed_case():
    from trainer.metrics import delong

    labels = np.array([1, 1, 0, 0])
    a, b = [0.9, 0.4, 0.5, 0.1], [0.9, 0.6, 0.5, 0.1]  # a orders 3 of 4 pairs, b all 4
    aucs, cov = delong(labels, np.array([a, b]))
    # a: per positive, the share of negatives below it: 1, 1/2; per negative, of positives above: 1/2, 1.
    # var = s2(1, 1/2) / 2 positives + s2(1/2, 1) / 2 negatives = 0.125 / 2 + 0.125 / 2; b has no spread.
    np.testing.assert_allclose(aucs, [0.75, 1.0])
    np.testing.assert_allclose(cov, [[0.125, 0.0], [0.0, 0.0]])
    # b scores best; the paired difference's standard error is sqrt(0.125 + 0 - 0), tie_se of them.
    assert tie_margin(labels, [np.array(a), np.array(b)], [0.75, 1.0], 2.0) == pytest.approx(2 * 0.125 ** 0.5)
    assert tie_margin(labels, [np.array(a), np.array(b)], [0.75, 1.0], 0.0) == 0.0


def test_delong_variance_agrees_with_a_bootstrap_and_the_exact_auc():
    from trainer.metrics import delong

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = np.stack([rng.normal(size=400) + labels, rng.normal(size=400) + 0.5 * labels])
    aucs, cov = delong(labels, scores)
    assert aucs == pytest.approx([roc_auc(labels, s) for s in scores], abs=1e-12)
    boot = []
    for _ in range(400):
        i = rng.integers(0, 400, 400)
        boot.append([roc_auc(labels[i], s[i]) for s in scores])
    np.testing.assert_allclose(np.diag(cov), np.var(boot, axis=0), rtol=0.25)
    with pytest.raises(ValueError, match="at least 2 rows of each class"):
        delong(np.array([1, 0, 0]), np.array([0.1, 0.2, 0.3]))


def test_tie_margin_lets_beta_break_near_ties_but_never_takes_a_clearly_worse_op():
    model = _Model()
    model.beta["H"] = _Var([0.0, 1.0, 0.0, 0.5])
    arch = _searched(_arch(), model)
    assert select_ops(model, model.predict, arch, "alone").hard_ops()["H"] == "add"  # the best AUC
    # H alone: ADD 0.7526, PROD 0.5, CONCAT 0.7, ATT 0.7 (2,000 rows). The margin is tie_se paired
    # standard errors of ADD's AUC minus another op's; with one that spans 0.06 but not 0.25, ADD, CONCAT
    # and ATT tie and PROD (largest beta, 0.25 lower) does not, so ATT (beta 0.5) wins.
    labels, add = _rows_with_auc(0.7526)
    se = tie_margin(labels, [add, _rows_with_auc(0.5)[1], _rows_with_auc(0.7)[1]], [0.7526, 0.5, 0.7], 1.0)
    chosen = select_ops(model, model.predict, arch, "alone", tie_se=0.1 / se)
    assert chosen.hard_ops()["H"] == "att" and chosen.selection_margin["H"] == pytest.approx(0.1, rel=0.05)
    assert select_ops(model, model.predict, arch, "alone", tie_se=1e3).hard_ops()["H"] == "prod"
    again = Architecture.from_json(chosen.to_json())
    assert again.selection_margin == chosen.selection_margin and again.hard_ops() == chosen.hard_ops()
    with pytest.raises(ValueError, match="selection_margin must be"):
        Architecture(n=1, alpha=arch.alpha, beta=arch.beta, selection=chosen.selection, selection_margin=-1.0)
    with pytest.raises(ValueError, match="selection_margin must be"):
        Architecture(n=1, alpha=arch.alpha, beta=arch.beta, selection=chosen.selection, selection_margin={"X9": 0.1})
    with pytest.raises(ValueError, match="tie_se must be"):
        select_ops(model, model.predict, arch, "alone", tie_se=float("nan"))
