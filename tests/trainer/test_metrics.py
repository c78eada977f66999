"""Exact AUC and LogLoss against hand-computed cases."""

import math

import numpy as np
import pytest

from trainer.metrics import log_loss, roc_auc


def test_auc_hand_computed_with_ties():
    # Positives: 0.8, 0.4, 0.4; negatives: 0.4, 0.2.
    # Pairs (pos > neg = 1, tie = 1/2): 0.8 beats both (2); each 0.4 ties 0.4 (1/2) and beats 0.2 (1).
    labels = np.array([1, 1, 1, 0, 0])
    scores = np.array([0.8, 0.4, 0.4, 0.4, 0.2])
    assert roc_auc(labels, scores) == pytest.approx((2 + 1.5 + 1.5) / 6)


def test_auc_all_tied_is_half_and_perfect_is_one():
    assert roc_auc(np.array([0, 1, 0, 1]), np.zeros(4)) == pytest.approx(0.5)
    assert roc_auc(np.array([0, 0, 1]), np.array([0.1, 0.2, 0.9])) == 1.0
    assert roc_auc(np.array([1, 1, 0]), np.array([0.1, 0.2, 0.9])) == 0.0


def test_auc_matches_pairwise_count_on_random_scores_with_ties():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 400)
    scores = rng.integers(0, 20, 400) / 20.0  # many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    expected = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
    assert roc_auc(labels, scores) == pytest.approx(expected, abs=1e-12)


def test_auc_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.ones(3), np.array([0.1, 0.2, 0.3]))


def test_log_loss_from_logits_hand_computed():
    # logit 0 -> p = 0.5 -> ln 2 for either label; logit ln 3 -> p = 0.75 -> -ln 0.75 for y=1.
    labels = np.array([1, 0, 1])
    logits = np.array([0.0, 0.0, math.log(3.0)])
    expected = (math.log(2) + math.log(2) - math.log(0.75)) / 3
    assert log_loss(labels, logits) == pytest.approx(expected)


def test_log_loss_is_finite_for_extreme_logits():
    assert math.isfinite(log_loss(np.array([1, 0]), np.array([-800.0, 800.0])))
