"""VOC07-style SVM protocol on generated features: sklearn's LinearSVC loop vs BatchedLinearSVC.

    python perf/bench_svm.py [--n 2500] [--dim 4096] [--classes 20] [--quick]

Both runs share one pipeline (11 VISSL costs, 3-fold stratified CV per class
without shuffle scored by average precision, refit with the best cost per
class, AP on a separate test set); only the solver differs. Prints one
`name=value (target ...)` line per figure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold

from protocols.svm import BatchedLinearSVC, normalize_features

COSTS = [0.01, 0.1, 1, 2, 5, 10, 15, 20, 50, 100, 1000]
FOLDS = 3


def make_features(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pooled-ReLU-like features (N, dim) float32, L2-normalised, and multi-label 0/1 labels (N, classes).

    Class frequencies fall off like VOC's (person common, sofa rare), ~1.5 labels per image; each class
    adds a rank-16 pattern with a per-image strength, on top of a shared low-rank background
    and noise, through a ReLU."""
    rng = np.random.default_rng(seed)
    freq = 0.45 / np.arange(1, classes + 1) ** 0.75
    freq *= 1.5 / freq.sum()
    Y = (rng.random((n, classes)) < freq).astype(np.int8)
    empty = Y.sum(1) == 0
    Y[empty, rng.choice(classes, size=empty.sum(), p=freq / freq.sum())] = 1
    rank = 16
    patterns = rng.standard_normal((classes, rank, dim)).astype(np.float32) / np.sqrt(dim)
    strength = rng.standard_normal((n, classes, rank)).astype(np.float32) + 0.5
    signal = np.einsum("nc,ncr,crd->nd", Y.astype(np.float32), strength, patterns, optimize=True)
    background = rng.standard_normal((n, 32)).astype(np.float32) @ rng.standard_normal((32, dim)).astype(
        np.float32) / np.sqrt(32 * dim)
    noise = rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    X = np.maximum(0.3 * signal + background + 2.0 * noise + 0.3 / np.sqrt(dim), 0.0)
    return normalize_features(X), Y


def run_pipeline(solver: str, X: np.ndarray, Y: np.ndarray, X_test: np.ndarray,
                 Y_test: np.ndarray) -> dict[str, object]:
    """CV over COSTS, refit with each class's best cost, test AP; everything the solver does is timed."""
    n, classes = Y.shape
    fold_of = np.empty((n, classes), np.int64)
    for c in range(classes):
        for k, (_, held) in enumerate(StratifiedKFold(FOLDS).split(X, Y[:, c])):
            fold_of[held, c] = k
    train_mask = np.concatenate([fold_of != k for k in range(FOLDS)], axis=1)  # column k * classes + c
    start = time.perf_counter()
    cv = BatchedLinearSVC(COSTS, solver=solver).fit(X, np.tile(Y, FOLDS), train_mask)
    scores = cv.decision_function(X)
    cv_ap = np.zeros((len(COSTS), classes))
    for k in range(FOLDS):
        for c in range(classes):
            held = fold_of[:, c] == k
            for j in range(len(COSTS)):
                cv_ap[j, c] += average_precision_score(Y[held, c], scores[j, held, k * classes + c]) / FOLDS
    best = cv_ap.argmax(0)
    test_scores = np.zeros(Y_test.shape, np.float32)
    for j in np.unique(best):
        cols = np.flatnonzero(best == j)
        final = BatchedLinearSVC([COSTS[j]], solver=solver).fit(X, Y[:, cols])
        test_scores[:, cols] = final.decision_function(X_test)[0]
    seconds = time.perf_counter() - start
    test_ap = [average_precision_score(Y_test[:, c], test_scores[:, c]) for c in range(classes)]
    return {"seconds": seconds, "best": best.tolist(), "map": 100.0 * float(np.mean(test_ap))}


def peak_memory_ratio(args: argparse.Namespace) -> float:
    """Peak RSS growth of the batched pipeline over its start, in a fresh process, / train feature bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peak.json"
        subprocess.run([sys.executable, __file__, "--n", str(args.n), "--dim", str(args.dim), "--classes",
                        str(args.classes), "--seed", str(args.seed), "--memory-child", str(out)], check=True)
        return json.loads(out.read_text())["ratio"]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _memory_child(args: argparse.Namespace, out: Path) -> None:
    import torch

    X, Y, X_test, Y_test = _data(args)
    torch.ones(64, 64) @ torch.ones(64, 64)  # thread pools up before the baseline
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    base = _rss_kib("VmRSS")
    run_pipeline("batched", X, Y, X_test, Y_test)
    out.write_text(json.dumps({"ratio": (_rss_kib("VmHWM") - base) * 1024 / X.nbytes}))


def _data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X, Y = make_features(2 * args.n, args.dim, args.classes, args.seed)
    return X[:args.n], Y[:args.n], X[args.n:], Y[args.n:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2500, help="train images (as many test images)")
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 600 x 512, 6 classes")
    parser.add_argument("--memory-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.n, args.dim, args.classes = 600, 512, 6
    if args.memory_child:
        _memory_child(args, args.memory_child)
        return
    X, Y, X_test, Y_test = _data(args)
    print(f"problem: train {X.shape} test {X_test.shape} float32, {args.classes} classes, "
          f"{Y.sum(1).mean():.2f} labels/image, positives per class {Y.sum(0).min()}..{Y.sum(0).max()}")
    batched = run_pipeline("batched", X, Y, X_test, Y_test)
    reference = run_pipeline("sklearn", X, Y, X_test, Y_test)
    same = np.mean(np.array(batched["best"]) == np.array(reference["best"]))
    print(f"sklearn_seconds={reference['seconds']:.1f}")
    print(f"batched_seconds={batched['seconds']:.1f}")
    print(f"speedup={reference['seconds'] / batched['seconds']:.1f}x (target >= 10x)")
    print(f"sklearn_mAP={reference['map']:.2f} batched_mAP={batched['map']:.2f}")
    print(f"delta_mAP={batched['map'] - reference['map']:+.3f} (target |delta| <= 0.3)")
    print(f"same_cost_fraction={same:.2f} (target >= 0.9)")
    print(f"peak_memory={peak_memory_ratio(args):.2f}x train feature bytes (target <= 3x)")


if __name__ == "__main__":
    main()
