"""For perf/bench_svm.py's full-size mode: where the batched solver's time goes, and the liblinear loop's
time estimated from a few measured fits."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator, Sequence

import numpy as np

from protocols import svm as svm_module
from protocols.svm_liblinear import SETTINGS

# solver internals timed, by the name printed: the Gram matrix blocks, the eigendecomposition, the block
# preconditioner's set-up (its diagonal and Cholesky blocks), the Woodbury one's (its float64 factors),
# preconditioned CG (with the preconditioners' solves), the exact line search
SECTIONS = {"gram": "_gram", "eigh": "_eigh_inplace", "block_preconditioner": "_Preconditioner",
            "woodbury_factors": "_WoodburyPreconditioner", "cg": "_cg", "line_search": "_line_search"}


@contextlib.contextmanager
def sections() -> Iterator[dict[str, float]]:
    """Seconds spent in each of SECTIONS while the block runs (the module's functions wrapped meanwhile)."""
    totals = dict.fromkeys(SECTIONS, 0.0)
    originals = {name: getattr(svm_module, attr) for name, attr in SECTIONS.items()}

    def timed(name: str):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return originals[name](*args, **kwargs)
            finally:
                totals[name] += time.perf_counter() - start
        return call

    for name, attr in SECTIONS.items():
        setattr(svm_module, attr, timed(name))
    try:
        yield totals
    finally:
        for name, attr in SECTIONS.items():
            setattr(svm_module, attr, originals[name])


def estimate_liblinear(X: np.ndarray, Y: np.ndarray, fold_of: np.ndarray, costs: Sequence[float],
                       sampled: Sequence[float], folds: int) -> tuple[float, dict[float, float]]:
    """(estimated seconds of the liblinear loop over every class, cost and fold plus one refit per class,
    measured seconds per sampled cost). Each sampled cost is timed on one CV fold of one class (classes taken
    in turn); the other costs take the time interpolated in log C (flat beyond the sampled range: at large C
    liblinear runs to its max_iter, so its time levels off); a refit on all rows is counted 1.5 fold fits
    (3/2 the rows) at the mean cost time."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    X64 = X.astype(np.float64)
    measured = {}
    for j, cost in enumerate(sampled):
        c = j % Y.shape[1]
        rows = fold_of[:, c] != 0
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            LinearSVC(C=cost, class_weight={1: 2.0, 0: 1.0}, tol=1e-4, **SETTINGS).fit(X64[rows], Y[rows, c])
        measured[cost] = time.perf_counter() - start
    at = np.log(sorted(measured))
    per_cost = np.interp(np.log(costs), at, [measured[c] for c in sorted(measured)])
    classes = Y.shape[1]
    return classes * folds * float(per_cost.sum()) + classes * 1.5 * float(per_cost.mean()), measured
