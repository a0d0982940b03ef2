"""Detectability of generated images: the ROC-AUC of a real-vs-generated classifier's held-out scores (the maths of
``c2st_auc``).

A classifier two-sample test (Lopez-Paz & Oquab 2017, "Revisiting classifier two-sample tests", ICLR, arXiv
1610.06545) trains a classifier to tell generated from real images and scores it on images it was not trained on. If
the two sets come from one distribution no classifier does better than chance on new images, and the held-out ROC-AUC
is 0.5 up to sampling noise; the further it is from 0.5, the more detectable the generated images are.

* :func:`roc_auc`: the AUC as the Mann-Whitney statistic, ``P(score of a generated image > score of a real one)`` with
  ties counted one half (midranks), so it is exactly 0.5 for identical score sets;
* :func:`delong_ci`: its standard error and normal confidence interval by DeLong et al. (1988, Biometrics 44:837),
  computed from midranks as in Sun & Xu (2014, IEEE Signal Processing Letters 21:1389);
* :func:`crossfit_folds` and :func:`within_fold_ranks`: stratified, seeded folds, so that every image is scored by a
  classifier that never saw it, and the scores of different folds' classifiers made comparable by ranking each fold's
  scores on their own (one classifier's scores may sit higher than another's, which would mix into a pooled AUC).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata

from ...errors import MetricError

__all__ = ["AucInterval", "auc_of_labels", "crossfit_folds", "delong_ci", "roc_auc", "within_fold_ranks"]


def _scores(x: np.ndarray | list[float], what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0:
        raise MetricError(f"ROC-AUC: the {what} scores are empty; each class needs at least one score")
    if not np.all(np.isfinite(a)):
        raise MetricError(f"ROC-AUC: the {what} scores hold {int((~np.isfinite(a)).sum())} non-finite value(s); expected finite numbers")
    return a


def roc_auc(positive: np.ndarray | list[float], negative: np.ndarray | list[float]) -> float:
    """ROC-AUC of scores of the positive class (generated images) against the negative class (real images): the
    Mann-Whitney U of the positives over ``n_pos · n_neg``, ties counted one half (midranks).

    Args:
        positive: the scores of the positive class (any shape, flattened), at least one.
        negative: the scores of the negative class, at least one.

    Returns:
        ``P(positive score > negative score) + P(tie) / 2`` over all pairs, in [0, 1]: 1 when every positive scores
        above every negative, 0.5 for identical score sets, 0 when every positive scores below.

    Raises:
        MetricError: a class has no score or a score is NaN or infinite.

    Example:
        >>> roc_auc([0.9, 0.8], [0.1, 0.2, 0.3])  # perfectly separated
        1.0
        >>> roc_auc([0.5, 0.5], [0.5, 0.5])  # all tied: chance
        0.5
        >>> roc_auc([0.3, 0.6], [0.3, 0.1])  # 3 of 4 pairs won, one tied
        0.875
    """
    pos, neg = _scores(positive, "positive"), _scores(negative, "negative")
    ranks = rankdata(np.concatenate([pos, neg]))  # midranks for ties
    n1, n0 = pos.size, neg.size
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def auc_of_labels(labels: np.ndarray, scores: np.ndarray) -> float:
    """:func:`roc_auc` of ``scores`` with 0/1 ``labels`` (1 = positive); NaN when one class is missing (a resample that
    drew one class only has no AUC)."""
    labels = np.asarray(labels)
    pos = labels == 1
    if pos.all() or not pos.any():
        return float("nan")
    return roc_auc(np.asarray(scores)[pos], np.asarray(scores)[~pos])


@dataclass(frozen=True)
class AucInterval:
    """An AUC with its DeLong standard error and normal confidence interval (clipped to [0, 1])."""

    auc: float
    se: float
    low: float
    high: float
    level: float


def delong_ci(positive: np.ndarray | list[float], negative: np.ndarray | list[float], level: float = 0.95) -> AucInterval:
    """The AUC of ``positive`` over ``negative`` scores with DeLong's variance: the structural components
    ``V10_i = P(s_i > negative)`` and ``V01_j = P(positive > s_j)`` (ties one half), ``var = var(V10)/n_pos +
    var(V01)/n_neg``; the interval is ``auc ± z·se`` clipped to [0, 1]. Each class needs at least 2 scores.

    >>> ci = delong_ci([0.9, 0.8, 0.4, 0.7], [0.1, 0.5, 0.3, 0.2])
    >>> round(ci.auc, 4), round(ci.se, 4), ci.high
    (0.9375, 0.0884, 1.0)
    """
    if not 0 < level < 1:
        raise MetricError(f"delong_ci: level must be in (0, 1), got {level!r}")
    pos, neg = _scores(positive, "positive"), _scores(negative, "negative")
    n1, n0 = pos.size, neg.size
    if n1 < 2 or n0 < 2:
        raise MetricError(f"delong_ci: each class needs at least 2 scores for a variance, got {n1} positive and {n0} negative")
    pooled = rankdata(np.concatenate([pos, neg]))
    v10 = (pooled[:n1] - rankdata(pos)) / n0  # share of negatives below each positive (ties one half)
    v01 = 1.0 - (pooled[n1:] - rankdata(neg)) / n1  # share of positives above each negative
    auc = float(v10.mean())
    se = float(np.sqrt(v10.var(ddof=1) / n1 + v01.var(ddof=1) / n0))
    z = float(norm.ppf(0.5 + level / 2))
    return AucInterval(auc, se, max(0.0, auc - z * se), min(1.0, auc + z * se), level)


def crossfit_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (0 … ``folds`` − 1) of each item: each class shuffled with ``seed`` and dealt round-robin, so every
    fold holds the classes in the same proportions (stratified) and the sizes differ by at most one per class.

    >>> crossfit_folds(np.array([1, 1, 0, 0, 0, 0]), 2, seed=0).tolist().count(0)
    3
    """
    labels = np.asarray(labels)
    if folds < 2:
        raise MetricError(f"crossfit_folds: folds must be at least 2, got {folds!r}")
    fold = np.empty(labels.shape[0], dtype=np.int64)
    rng = np.random.default_rng(seed)
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        if idx.size < folds:
            raise MetricError(f"crossfit_folds: class {cls.item()!r} has {idx.size} item(s), fewer than the {folds} folds")
        fold[idx] = np.arange(idx.size) % folds
    return fold


def within_fold_ranks(scores: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Each score replaced by its midrank among the scores of its fold, divided by the fold's size (in (0, 1]): the
    order within a fold is kept, and folds scored by different classifiers become comparable.

    >>> within_fold_ranks(np.array([5.0, 1.0, 0.2, 0.1]), np.array([0, 0, 1, 1])).tolist()
    [1.0, 0.5, 1.0, 0.5]
    """
    scores, fold = np.asarray(scores, dtype=np.float64), np.asarray(fold)
    out = np.empty_like(scores)
    for f in np.unique(fold):
        sel = fold == f
        out[sel] = rankdata(scores[sel]) / sel.sum()
    return out
