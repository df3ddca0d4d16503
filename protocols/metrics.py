"""Average precision for ranked binary labels, in the three flavours the SVM protocols report.

Tied scores are one operating point (one threshold), as in sklearn, so every mode
is independent of the order of the rows:

- ``all_point``: area under the monotone precision envelope (PASCAL VOC2010+,
  FAIR's and VISSL's test AP when scores have no ties);
- ``voc07_11point``: mean over t in 0, 0.1, ..., 1 of the highest precision at
  recall >= t (0 where no point reaches t);
- ``non_interpolated``: sum of recall steps times precision, equal to
  ``sklearn.metrics.average_precision_score`` (the CV score of voc07_svm).

A class without positives has no AP: `average_precision` raises ValueError and
`mean_average_precision` gives it NaN and averages over the other classes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

ApMode = Literal["all_point", "voc07_11point", "non_interpolated"]
AP_MODES: tuple[str, ...] = ("all_point", "voc07_11point", "non_interpolated")


def precision_recall(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall (float64) at every distinct score, from the highest score down."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels differ in length: {scores.shape} vs {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 1 (positive) or 0 (negative); drop ignored (-1) rows first")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    n_pos = int(labels.sum())
    if n_pos == 0:
        raise ValueError("average precision is undefined without a positive label")
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hits = scores[order], labels[order].astype(np.float64)
    # the last row of every group of equal scores closes that threshold
    last = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    tp = np.cumsum(hits)[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return precision, recall


def average_precision(scores: np.ndarray, labels: np.ndarray, mode: ApMode = "all_point") -> float:
    """AP of one class: scores (N,), labels (N,) with 1 positive and 0 negative."""
    if mode not in AP_MODES:
        raise ValueError(f"mode: expected one of {', '.join(AP_MODES)}, got {mode!r}")
    precision, recall = precision_recall(scores, labels)
    if mode == "voc07_11point":
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        # envelope[i] = best precision at recall >= recall[i]; recall is non-decreasing
        first = np.searchsorted(recall, np.linspace(0.0, 1.0, 11) - 1e-12)
        return float(np.mean([envelope[i] if i < len(recall) else 0.0 for i in first]))
    steps = np.diff(recall, prepend=0.0)
    if mode == "all_point":
        precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(steps * precision))


def mean_average_precision(scores: np.ndarray, labels: np.ndarray,
                           mode: ApMode = "all_point") -> tuple[float, np.ndarray]:
    """(mAP, per-class APs) over the columns of scores/labels (N, C); rows labelled -1 are left out per class.

    A class with no positive row gets NaN and is left out of the mean; ValueError when no class has one.
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"expected scores and labels of the same (N, C) shape, got {scores.shape} and {labels.shape}")
    aps = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        keep = labels[:, c] != -1
        if (labels[keep, c] == 1).any():
            aps[c] = average_precision(scores[keep, c], labels[keep, c], mode)
    if np.isnan(aps).all():
        raise ValueError("mean average precision is undefined: no class has a positive label")
    return float(np.nanmean(aps)), aps
