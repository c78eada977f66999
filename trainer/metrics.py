"""Exact ROC AUC, LogLoss and calibration error over a whole evaluation split.

Why not `keras.metrics.AUC`: it buckets scores into 200 thresholds, and in CTR
work a 0.001 AUC difference is significant. These are computed in numpy over
every example of the split, ties counted as half (the Mann-Whitney statistic).
"""

from __future__ import annotations

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties = 1/2.

    Rank formula with average ranks over tied scores:
    AUC = (sum of positive ranks - P (P + 1) / 2) / (P N).
    """
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length. Received: {labels.shape} vs {scores.shape}")
    positive = labels.astype(bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes. Received: {n_pos} positives, {n_neg} negatives")
    ranks = _midranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x`, each run of equal values given its average rank."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], sorted_x.size]
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def delong(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of k score vectors on the same rows and their DeLong covariance matrix.

    Why: two models' AUCs on one validation split are correlated, so whether
    their difference is noise is judged by the standard error of the paired
    difference, sqrt(cov[a, a] + cov[b, b] - 2 cov[a, b]) (DeLong, DeLong and
    Clarke-Pearson 1988, by midranks as in Sun and Xu 2014: O(k n log n), no
    resampling). `scores`: shape (k, rows). Ties count 1/2, as in `roc_auc`.
    """
    labels = np.asarray(labels).reshape(-1).astype(bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if scores.shape[1] != labels.size:
        raise ValueError(f"labels and scores differ in length. Received: {labels.shape} vs {scores.shape}")
    m, n = int(labels.sum()), int((~labels).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 rows of each class. Received: {m} positives, {n} negatives")
    v10, v01 = np.empty((len(scores), m)), np.empty((len(scores), n))
    for k, s in enumerate(scores):
        all_ranks = _midranks(s)
        pos, neg = all_ranks[labels], all_ranks[~labels]
        v10[k] = (pos - _midranks(s[labels])) / n  # per positive: share of negatives ranked below it
        v01[k] = 1.0 - (neg - _midranks(s[~labels])) / m  # per negative: share of positives ranked above it
    aucs = v10.mean(axis=1)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def log_loss(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy, from logits so that it never takes log(0)."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    # -[y log s(z) + (1-y) log(1-s(z))] = softplus(z) - y z
    return float(np.mean(np.logaddexp(0.0, logits) - labels * logits))


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-z) in float64 without overflow at any logit."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(logits, dtype=np.float64)))


ECE_BINS = 15
"""Equal-width probability bins of the expected calibration error (Guo et al., 2017)."""


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> float:
    """sum over bins of (rows in bin / rows) * |mean label - mean probability|.

    Bins split [0, 1] into `bins` equal widths, each closed on the left
    ([0, 1/15), [1/15, 2/15), ...), the last one closed on both sides so that
    p = 1 counts. Empty bins add nothing. 0 is perfectly calibrated.
    """
    rows, clicks, predicted = _bin_sums(labels, probabilities, bins)
    return float(np.abs(clicks - predicted).sum() / rows.sum())  # per bin: |sum y - sum p|


def reliability(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> list[list[float]]:
    """The reliability diagram of the ECE's bins: [mean probability, observed click rate, rows] per
    non-empty bin, in order. Sums of rows over runs pool their diagrams (benchmarks/report.py)."""
    rows, clicks, predicted = _bin_sums(labels, probabilities, bins)
    return [[float(predicted[i] / rows[i]), float(clicks[i] / rows[i]), int(rows[i])]
            for i in range(bins) if rows[i] > 0]


def _bin_sums(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> tuple[np.ndarray, ...]:
    """Per equal-width bin: (rows, sum of labels, sum of probabilities)."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if labels.shape != p.shape or p.size == 0:
        raise ValueError(f"ECE needs equal, non-empty labels and probabilities. Received: {labels.shape} vs {p.shape}")
    if np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(p)):
        raise ValueError("ECE needs probabilities in [0, 1]")
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    return np.bincount(index, minlength=bins), np.bincount(index, labels, bins), np.bincount(index, p, bins)
