"""liblinear as FAIR and VISSL run it, and whether a solution needs more than liblinear's iteration cap."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

# FAIR (fair_self_supervision_benchmark tools/svm/train_svm_kfold.py) and VISSL (vissl/utils/svm_utils/
# svm_trainer.py with its default config) both fit LinearSVC(C, class_weight={1: 2, -1: 1},
# intercept_scaling=1.0, penalty="l2", loss="squared_hinge", tol=1e-4, dual=True, max_iter=2000) without a
# random_state, so liblinear's coordinate order changes from run to run; here it is fixed (and recorded).
SETTINGS: dict[str, Any] = {"penalty": "l2", "loss": "squared_hinge", "dual": True, "max_iter": 2000,
                            "intercept_scaling": 1.0, "random_state": 0}

OVER_CAP = {
    "liblinear": "liblinear stopped at max_iter (n_iter_ == max_iter) before its tolerance",
    "batched": ("bound: epochs randomised dual coordinate descent needs to reach liblinear's tolerance from "
                "alpha = 0, (L_max / mu) ln(8 L^2 f* / (mu tol^2)) with mu, L the extreme eigenvalues of the "
                "dual Hessian, is above max_iter; conservative: may flag a class liblinear would finish"),
}


def fit_liblinear(X: np.ndarray, Y: np.ndarray, mask: np.ndarray, costs: list[float],
                  class_weight: dict[int, float], tol: float,
                  wrap: Callable[[Iterable[Any], str, int], Iterable[Any]]) -> tuple[np.ndarray, ...]:
    """One LinearSVC per (cost, column) with SETTINGS: coef (n_costs, M, D), intercept (n_costs, M) in X's
    dtype, n_iter (n_costs, M)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    n_costs, M = len(costs), Y.shape[1]
    coef = np.zeros((n_costs, M, X.shape[1]), X.dtype)
    intercept = np.zeros((n_costs, M), X.dtype)
    n_iter = np.zeros((n_costs, M), np.int64)
    pairs = [(c, m) for c in range(n_costs) for m in range(M)]
    for c, m in wrap(pairs, "svm (liblinear)", len(pairs)):
        rows = mask[:, m]
        clf = LinearSVC(C=costs[c], class_weight=class_weight, tol=tol, **SETTINGS)
        with warnings.catch_warnings():  # liblinear stops at max_iter at large C, as in FAIR and VISSL
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(X[rows], Y[rows, m])
        coef[c, m], intercept[c, m], n_iter[c, m] = clf.coef_[0], clf.intercept_[0], clf.n_iter_
    return coef, intercept, n_iter


def over_cap_bound(objective: np.ndarray, max_row_sq: np.ndarray, C: float, weights: tuple[float, float],
                   gram_eigenvalues: tuple[float, float], tol: float) -> np.ndarray:
    """Per column, whether liblinear's dual coordinate descent may need more than SETTINGS["max_iter"] epochs.

    liblinear minimises 0.5 a^T (Q + D) a - sum(a) over a >= 0, Q = diag(y) X~ X~^T diag(y), D = 1 / (2 C s_i).
    Its Hessian's eigenvalues lie in [mu, L] = [lam_min + 1 / (2 C s_max), lam_max + 1 / (2 C s_min)] (Q's
    rows are a subset of the Gram matrix's: interlacing), its diagonal is at most L_max = max ||x~_i||^2 +
    1 / (2 C s_min). Randomised coordinate descent shrinks the dual gap by exp(-mu / L_max) per epoch
    (Nesterov 2012), from f* at a = 0 (strong duality); a gap of mu tol^2 / (8 L^2) puts every gradient within
    tol / 2 of the optimum's, so liblinear's stopping test (projected gradient spread <= tol) holds.
    objective: f* per column; max_row_sq: max ||x~_i||^2 over the column's rows; weights (s_min, s_max);
    gram_eigenvalues (lam_min, lam_max) of X~ X~^T."""
    s_min, s_max = weights
    lam_min, lam_max = gram_eigenvalues
    mu = lam_min + 1.0 / (2.0 * C * s_max)
    L = lam_max + 1.0 / (2.0 * C * s_min)
    L_max = max_row_sq + 1.0 / (2.0 * C * s_min)
    epochs = L_max / mu * np.log(np.maximum(1.0, 8.0 * L * L * objective / (mu * tol * tol)))
    return epochs > SETTINGS["max_iter"]
