"""Exact AUC, LogLoss and ECE against hand-computed cases."""

import math

import numpy as np
import pytest

from trainer.metrics import ECE_BINS, expected_calibration_error, log_loss, reliability, roc_auc, sigmoid


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


def test_ece_hand_computed_with_15_equal_width_bins():
    # Bins of width 1/15: 0.05 -> bin 0, 0.35 -> bin 5, 0.95 and 1.0 -> bin 14 (the last bin holds p = 1).
    # bin 0: 2 rows, mean label 1/2, mean p 0.05: |gap| 0.45; bin 5: 3 rows, 1/3 vs 0.35: 1/60;
    # bin 14: 2 rows, 1 vs 0.975: 0.025. ECE = (2 * 0.45 + 3 / 60 + 2 * 0.025) / 7 = 1 / 7.
    labels = np.array([0, 1, 0, 0, 1, 1, 1])
    p = np.array([0.05, 0.05, 0.35, 0.35, 0.35, 0.95, 1.0])
    assert expected_calibration_error(labels, p) == pytest.approx(1 / 7)
    assert ECE_BINS == 15
    # Two bins instead: [0, 0.5) holds 0.05, 0.05, 0.35 x 3 (mean label 2/5, mean p 0.23); [0.5, 1] the rest.
    assert expected_calibration_error(labels, p, bins=2) == pytest.approx((5 * 0.17 + 2 * 0.025) / 7)
    # The reliability diagram of the same bins: [mean p, observed rate, rows] per non-empty bin.
    got = reliability(labels, p)
    assert [row[2] for row in got] == [2, 3, 2]
    np.testing.assert_allclose([row[:2] for row in got], [[0.05, 0.5], [0.35, 1 / 3], [0.975, 1.0]])


def test_ece_is_zero_when_calibrated_and_refuses_non_probabilities():
    assert expected_calibration_error(np.array([0, 1, 0, 1]), np.full(4, 0.5)) == 0.0
    with pytest.raises(ValueError, match="probabilities in"):
        expected_calibration_error(np.array([0, 1]), np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="equal, non-empty"):
        expected_calibration_error(np.array([0, 1]), np.array([0.5]))


def test_sigmoid_is_exact_and_finite_at_extreme_logits():
    expected = [0.5, 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2))]
    np.testing.assert_allclose(sigmoid(np.array([0.0, 2.0, -2.0])), expected)
    assert sigmoid(np.array([-1000.0]))[0] == 0.0 and sigmoid(np.array([1000.0]))[0] == 1.0
