"""benchmarks/hard_rule.py's decision: validation AUC on the development seeds, beta unless beaten."""

import pytest

from benchmarks import hard_rule


def _records(valid_aucs):
    return {rule: {seed: {"valid_auc": auc, "same_run_as": None} for seed, auc in zip((101, 102, 103), aucs,
                                                                                      strict=True)}
            for rule, aucs in valid_aucs.items()}


def test_a_rule_must_beat_beta_significantly_on_validation():
    seeds = (101, 102, 103)
    # remove is higher on average but one seed goes the other way: paired t p = 0.32 -> beta stays
    chosen, tests = hard_rule.choose(_records({"beta": [0.930, 0.940, 0.935], "remove": [0.934, 0.939, 0.938]}),
                                     seeds)
    assert chosen == "beta" and tests["remove"]["diff"] == pytest.approx(0.002)
    assert tests["remove"]["t_p"] > hard_rule.ALPHA
    # higher on every seed by about the same amount: p < 0.05 -> remove
    chosen, tests = hard_rule.choose(_records({"beta": [0.930, 0.940, 0.935], "remove": [0.933, 0.9429, 0.9381]}),
                                     seeds)
    assert chosen == "remove" and tests["remove"]["t_p"] < hard_rule.ALPHA
    with pytest.raises(RuntimeError, match="no beta retrain on every development seed"):
        hard_rule.choose(_records({"remove": [0.93, 0.94, 0.95]}), seeds)
