"""Hard op selection by perturbation (trainer/selection.py): a hand-built case
where argmax(beta) picks the wrong op, and the search stage end to end."""

import json

import numpy as np
import pytest

from pipeline.dataset_info import read_dataset_info
from trainer import cli
from trainer.architecture import OPS, Architecture
from trainer.config import preset_path
from trainer.selection import select_from_run, select_ops


class _Var:
    """The two methods of a Keras variable that select_ops uses."""

    def __init__(self, value):
        self.value = np.array(value, dtype=np.float32)

    def numpy(self):
        return self.value.copy()

    def assign(self, value):
        self.value = np.array(value, dtype=np.float32)


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
    chosen = select_ops(model, model.auc, arch, "alone")
    assert chosen.hard_ops() == {"S1": "concat", "D1": "add", "H": "add"}
    # H is decided first and then fixed to ADD alone, so S1 sees the full +0.01 of CONCAT.
    s1_concat = _softmax(before["S1"])[2]  # S1 is still a mixture while H is decided
    assert chosen.selection["H"] == pytest.approx([0.75 + 0.01 * s1_concat, 0.5, 0.7, 0.7], abs=1e-6)
    assert chosen.selection["S1"] == pytest.approx([0.75, 0.75, 0.76, 0.75], abs=1e-6)
    # D1 (decided before S1: the reverse of level order) does not matter: a tie, so larger beta, then first op.
    assert chosen.selection["D1"] == pytest.approx([0.75 + 0.01 * s1_concat] * 4, abs=1e-6)
    assert model.calls == 3 * len(OPS)
    for comp, value in before.items():  # the supernet's beta is left as it was
        np.testing.assert_array_equal(model.beta[comp].value, value)
    assert chosen.beta == arch.beta and chosen.alpha == arch.alpha
    assert Architecture.from_json(chosen.to_json()).hard_ops() == chosen.hard_ops()  # the file keeps it


def test_remove_scores_the_auc_lost_without_each_op():
    model = _Model()
    chosen = select_ops(model, model.auc, _searched(_arch(), model), "remove")
    # Without ADD, H loses its only helpful op; without PROD it gains.
    assert chosen.hard_ops()["H"] == "add"
    scores = chosen.selection["H"]
    assert scores[0] > 0 > scores[1]


def test_beta_rule_fixed_op_search_and_pruned_components():
    model = _Model()
    arch = _searched(_arch(), model)
    assert select_ops(model, model.auc, arch, "beta") is arch and model.calls == 0
    pruned = select_ops(model, model.auc, _searched(_arch(edges_to_h=("S1",)), model), "alone")
    assert set(pruned.selection) == {"S1", "H"}  # D1 has no path to H: not scored
    assert pruned.hard_ops()["D1"] == "add"  # argmax beta (all tied: the first op)
    fixed = _Model()
    fixed.beta = {}  # a fixed-op search has no beta
    assert select_ops(fixed, fixed.auc, arch, "alone") is arch
    with pytest.raises(ValueError, match="hard_select must be one of"):
        select_ops(model, model.auc, arch, "argmax")


TINY = ["--model.emb_dim=4", "--model.n=1", "--model.att_dim=8", "--train.batch_size=128",
        "--train.epochs=1", "--search.arch_lr=0.05"]


@pytest.mark.slow
def test_search_records_the_selection_and_select_from_run_reproduces_it(synthetic_dir, tmp_path):
    out = tmp_path / "search"
    assert cli.main(["--stage=search", "--data", str(synthetic_dir), "--config", str(preset_path("criteo", "cpu")),
                     "--out", str(out), *TINY]) == 0
    data = json.loads((out / "architecture.json").read_text())
    arch = Architecture.from_dict(data)
    scored = {c for c in arch.reachable() if c in arch.beta and arch.inputs(c)}
    assert set(data["selection"]) == scored and scored
    for comp in scored:  # the default rule (remove): the Hard op loses the most AUC when removed
        scores = data["selection"][comp]
        assert scores[OPS.index(data["hard_ops"][comp])] == max(scores)
    assert "selection: add " in (out / "architecture.txt").read_text()
    assert data["selection_margin"] == 0.0
    again = select_from_run(out, read_dataset_info(synthetic_dir), "remove")
    assert again.selection.keys() == arch.selection.keys()
    for comp, scores in arch.selection.items():  # the saved weights give the search's own scores
        assert again.selection[comp] == pytest.approx(scores, abs=1e-6)
    assert select_from_run(out, read_dataset_info(synthetic_dir), "beta").selection is None


def test_margin_lets_beta_break_near_ties_but_never_takes_a_clearly_worse_op():
    model = _Model()
    model.beta["H"] = _Var([0.0, 1.0, 0.0, 0.5])
    arch = _searched(_arch(), model)
    assert select_ops(model, model.auc, arch, "alone").hard_ops()["H"] == "add"  # the best AUC
    # H alone: ADD 0.7526, PROD 0.5, CONCAT 0.7, ATT 0.7. Within 0.06 of ADD: ADD, CONCAT, ATT;
    # PROD has the largest beta (1.0) but scores 0.25 lower, so ATT (beta 0.5) wins the tie.
    chosen = select_ops(model, model.auc, arch, "alone", margin=0.06)
    assert chosen.hard_ops()["H"] == "att" and chosen.selection_margin == 0.06
    assert select_ops(model, model.auc, arch, "alone", margin=1.0).hard_ops()["H"] == "prod"
    again = Architecture.from_json(chosen.to_json())
    assert again.selection_margin == 0.06 and again.hard_ops() == chosen.hard_ops()
    with pytest.raises(ValueError, match="selection_margin must be"):
        Architecture(n=1, alpha=arch.alpha, beta=arch.beta, selection=chosen.selection, selection_margin=-1.0)
