"""Exact evaluation metrics for binary click labels: AUC and log loss.

`exact_auc` is the Mann-Whitney statistic over the whole set, not the mean of
per-batch AUCs the original printed. Tied scores count half, as in sklearn's
`roc_auc_score`. Example: labels [0, 1, 0, 1], scores [0.1, 0.4, 0.4, 0.8]:
average ranks [1, 2.5, 2.5, 4]; positives' rank sum 6.5; AUC =
(6.5 - 2·3/2) / (2·2) = 0.875 (the pair (0.4, 0.4) counts 1/2).
"""

from __future__ import annotations

import numpy as np


def exact_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for 0/1 `labels`, ties averaged.

    Returns nan when one class is absent (the AUC is undefined there).
    Cost: one stable sort, O(n log n); memory about 24 bytes a row.
    """
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"exact_auc: {labels.shape[0]} labels but {scores.shape[0]} scores")
    positive = labels > 0.5
    n_pos = int(np.count_nonzero(positive))
    n_neg = labels.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    # Tie groups: [starts[i], ends[i]) in sorted order share one score and
    # all get the average of their 1-based ranks.
    new_group = np.empty(len(sorted_scores), dtype=bool)
    new_group[0] = True
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=new_group[1:])
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], len(sorted_scores))
    group_rank = (starts + 1 + ends) / 2.0
    group_of = np.cumsum(new_group) - 1
    pos_rank_sum = float(group_rank[group_of[positive[order]]].sum())
    return (pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (float(n_pos) * n_neg)


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities `probs`, clipped to [eps, 1-eps]."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))
