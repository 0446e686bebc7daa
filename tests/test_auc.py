"""exact_auc and logloss against scikit-learn, ties included."""

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from hetgmp.auc import exact_auc, logloss


def test_exact_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for n, levels in ((10, 3), (1000, 7), (20_000, 0)):
        y = (rng.random(n) < 0.3).astype(np.float32)
        s = rng.integers(0, levels, n).astype(np.float32) if levels else rng.random(n).astype(np.float32)
        s = s + 0.5 * y * (rng.random(n) < 0.5)  # some signal, many tied scores
        assert abs(exact_auc(y, s) - roc_auc_score(y, s)) < 1e-12


def test_exact_auc_worked_example_and_edge_cases():
    assert exact_auc(np.array([0, 1, 0, 1]), np.array([0.1, 0.4, 0.4, 0.8])) == 0.875
    assert exact_auc(np.array([0, 0, 1]), np.array([0.5, 0.5, 0.5])) == 0.5
    assert np.isnan(exact_auc(np.ones(4), np.arange(4.0)))


def test_logloss_matches_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    p = rng.random(500)
    assert abs(logloss(y, p) - log_loss(y, p)) < 1e-9
