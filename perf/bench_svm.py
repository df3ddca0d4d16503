"""VOC07-style SVM protocol on generated features: sklearn's LinearSVC loop vs BatchedLinearSVC.

    python perf/bench_svm.py [--n 2000] [--dim 4096] [--classes 20] [--quick | --full]

Both runs share one pipeline (11 VISSL costs, 3-fold stratified CV per class
without shuffle scored by average precision, refit with the best cost per
class as voc07_svm does it for each solver, AP on a separate test set); only
the solver differs. The batched run goes first, the sklearn loop right after
it in the same process, nothing in between. Prints one `name=value (target
...)` line per figure, and where the batched solver's time went.

--full is one tap of VOC07 at FAIR's size (5011 x 9216, 20 classes) with
--estimate: the batched pipeline alone is timed; the sklearn loop (hours at
that size) is estimated from one CV-fold fit per cost in --sample-costs
(perf/svm_profile.py says how), and peak memory is not measured (two more
full runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold

from protocols.svm import Basis, BatchedLinearSVC, normalize_features
from svm_profile import estimate_liblinear, sections

COSTS = [0.01, 0.1, 1, 2, 5, 10, 15, 20, 50, 100, 1000]
FOLDS = 3
QUICK = (600, 512, 6)  # --quick: train images, dims, classes
FULL = (5011, 9216, 20)  # --full: VOC07 trainval, FAIR's conv taps (~9k dims), its classes
FULL_TARGET_SECONDS = 120  # per tap on 2 CPU cores
SAMPLE_COSTS = "0.01,1,10,100"  # --estimate: costs whose liblinear fit is timed
# generated data, set so that the default problem is about as hard as VOC07 features (see make_features)
SCENES = 4  # latent scene types; classes of one scene co-occur and share part of their pattern
PATTERN_RANK = 8  # rank of each class's pattern
SHARED = 0.6  # share of a class's pattern common to its scene
SIGNAL = 0.4  # class signal and dense noise against the unit-scale background: mAP ~80, CV costs 1..5
NOISE = 0.5


def make_features(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pooled-ReLU-like features (N, dim) float32, L2-normalised, and multi-label 0/1 labels (N, classes),
    about as hard as VOC07's (test mAP about 80 at the default size, CV costs spread over 1..5).

    Class frequencies fall off like VOC's (person common, sofa rare), ~1.5 labels per image, and classes
    co-occur within SCENES latent scene types. Each class adds a rank-PATTERN_RANK pattern, SHARED of it
    common to its scene's classes, scaled per image by an object size (lognormal: many small, barely
    visible objects) and per class by a visibility; on top of a shared low-rank background and dense
    noise, through a ReLU."""
    rng = np.random.default_rng(seed)
    freq = 0.45 / np.arange(1, classes + 1) ** 0.75
    freq *= 1.5 / freq.sum()
    scene_of_class = rng.integers(0, SCENES, classes)
    in_scene = scene_of_class == rng.integers(0, SCENES, (n, 1))
    Y = (rng.random((n, classes)) < np.minimum(freq * np.where(in_scene, 2.0, 0.6), 0.9)).astype(np.int8)
    empty = Y.sum(1) == 0
    Y[empty, rng.choice(classes, size=empty.sum(), p=freq / freq.sum())] = 1
    shape = (PATTERN_RANK, dim)
    patterns = (np.sqrt(SHARED) * rng.standard_normal((SCENES, *shape))[scene_of_class]
                + np.sqrt(1 - SHARED) * rng.standard_normal((classes, *shape))).astype(np.float32) / np.sqrt(dim)
    size = rng.lognormal(-0.5, 0.8, (n, classes)) * np.exp(rng.uniform(-1.5, 1.5, classes))
    strength = rng.standard_normal((n, classes, PATTERN_RANK)).astype(np.float32) + 0.5
    signal = np.einsum("nc,ncr,crd->nd", (Y * size).astype(np.float32), strength, patterns, optimize=True)
    background = rng.standard_normal((n, 32)).astype(np.float32) @ rng.standard_normal((32, dim)).astype(
        np.float32) / np.sqrt(32 * dim)
    noise = rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    X = np.maximum(SIGNAL * signal + background + NOISE * noise + 0.3 / np.sqrt(dim), 0.0)
    return normalize_features(X), Y


def run_pipeline(solver: str, X: np.ndarray, Y: np.ndarray, X_test: np.ndarray,
                 Y_test: np.ndarray) -> dict[str, object]:
    """CV over COSTS, refit with each class's best cost, test AP; everything the solver does is timed."""
    classes = Y.shape[1]
    fold_of = folds_of(Y)
    train_mask = np.concatenate([fold_of != k for k in range(FOLDS)], axis=1)  # column k * classes + c
    start = time.perf_counter()
    basis = Basis(X, torch.device("cpu")) if solver == "batched" else None  # shared by CV and refit, as in voc07_svm
    cv = BatchedLinearSVC(COSTS, solver=solver).fit(X, np.tile(Y, FOLDS), train_mask, basis=basis)
    scores = cv.decision_function(X)
    cv_ap = np.zeros((len(COSTS), classes))
    for k in range(FOLDS):
        for c in range(classes):
            held = fold_of[:, c] == k
            for j in range(len(COSTS)):
                cv_ap[j, c] += average_precision_score(Y[held, c], scores[j, held, k * classes + c]) / FOLDS
    best = cv_ap.argmax(0)
    del cv, scores
    # refit as voc07_svm does: batched, every class over the distinct chosen costs in one warm-started
    # fit; sklearn, each class at its own cost only
    distinct = np.unique(best)
    groups = ([(distinct, np.arange(classes))] if solver == "batched"
              else [(np.array([j]), np.flatnonzero(best == j)) for j in distinct])
    test_scores = np.zeros(Y_test.shape, np.float32)
    for grid, cols in groups:
        final = BatchedLinearSVC([COSTS[j] for j in grid], solver=solver).fit(X, Y[:, cols], basis=basis)
        at = np.searchsorted(grid, best[cols])
        coef, intercept = final.coef_[at, np.arange(len(cols))], final.intercept_[at, np.arange(len(cols))]
        test_scores[:, cols] = X_test @ coef.T + intercept
    seconds = time.perf_counter() - start
    test_ap = [average_precision_score(Y_test[:, c], test_scores[:, c]) for c in range(classes)]
    return {"seconds": seconds, "best": best.tolist(), "map": 100.0 * float(np.mean(test_ap))}


def folds_of(Y: np.ndarray) -> np.ndarray:
    """(N, classes) index of the validation fold of every row, per class (StratifiedKFold without shuffle)."""
    fold_of = np.empty(Y.shape, np.int64)
    for c in range(Y.shape[1]):
        for k, (_, held) in enumerate(StratifiedKFold(FOLDS).split(np.zeros(len(Y)), Y[:, c])):
            fold_of[held, c] = k
    return fold_of


def batched_alone(args: argparse.Namespace, X: np.ndarray, Y: np.ndarray, X_test: np.ndarray,
              Y_test: np.ndarray) -> None:
    """The batched pipeline alone, where its time goes, and the sklearn loop estimated from sampled fits."""
    print(f"load averages before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} CPUs)")
    with sections() as spent:
        batched = run_pipeline("batched", X, Y, X_test, Y_test)
    print(f"load averages after batched: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"batched_seconds={batched['seconds']:.1f} (target <= {FULL_TARGET_SECONDS} s per tap on 2 CPU cores)")
    parts = " ".join(f"{name}={seconds:.1f}s" for name, seconds in spent.items())
    print(f"  where: {parts} other={batched['seconds'] - sum(spent.values()):.1f}s (AP, scoring, Newton steps)")
    print(f"batched_mAP={batched['map']:.2f}")
    sampled = [float(c) for c in args.sample_costs.split(",")]
    estimate, measured = estimate_liblinear(X, Y, folds_of(Y), COSTS, sampled, FOLDS)
    fits = ", ".join(f"C={c:g}: {s:.1f}s" for c, s in measured.items())
    print(f"sklearn_seconds_estimated={estimate:.0f} (ESTIMATE, not run: {len(measured)} measured CV-fold fits "
          f"[{fits}], interpolated in log C over the {len(COSTS)} costs, x {args.classes} classes x {FOLDS} "
          f"folds, + refits)")
    print(f"speedup_estimated={estimate / batched['seconds']:.1f}x")


def peak_memory_ratio(args: argparse.Namespace, warm: bool) -> float:
    """Peak RSS growth of the batched pipeline over its start, in a fresh process, / train feature bytes.

    warm: the process first runs the pipeline once at the --quick size, so that one-time set-up (BLAS
    and LAPACK buffers, thread pools, lazy imports: ~30 MB whatever the problem) is not counted."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peak.json"
        subprocess.run([sys.executable, __file__, "--n", str(args.n), "--dim", str(args.dim), "--classes",
                        str(args.classes), "--seed", str(args.seed), "--memory-child", str(out)]
                       + ["--warm"] * warm, check=True)
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
    if args.warm:
        run_pipeline("batched", *_data(argparse.Namespace(n=QUICK[0], dim=QUICK[1], classes=QUICK[2],
                                                          seed=args.seed)))
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    base = _rss_kib("VmRSS")
    run_pipeline("batched", X, Y, X_test, Y_test)
    out.write_text(json.dumps({"ratio": (_rss_kib("VmHWM") - base) * 1024 / X.nbytes}))


def _data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X, Y = make_features(2 * args.n, args.dim, args.classes, args.seed)
    return X[:args.n], Y[:args.n], X[args.n:], Y[args.n:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="train images (as many test images)")
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=20, help="classes (VOC07 has 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 600 x 512, 6 classes")
    parser.add_argument("--full", action="store_true",
                        help="VOC07 at FAIR's size, 5011 x 9216, 20 classes: batched timed, sklearn estimated")
    parser.add_argument("--estimate", action="store_true",
                        help="time the batched pipeline alone and estimate the sklearn loop (implied by --full)")
    parser.add_argument("--sample-costs", default=SAMPLE_COSTS,
                        help="--estimate: costs whose liblinear fit is timed (comma-separated)")
    parser.add_argument("--memory-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick or args.full:
        args.n, args.dim, args.classes = QUICK if args.quick else FULL
    if args.memory_child:
        _memory_child(args, args.memory_child)
        return
    X, Y, X_test, Y_test = _data(args)
    print(f"problem: train {X.shape} test {X_test.shape} float32, {args.classes} classes, "
          f"{Y.sum(1).mean():.2f} labels/image, positives per class {Y.sum(0).min()}..{Y.sum(0).max()}")
    if args.full or args.estimate:
        batched_alone(args, X, Y, X_test, Y_test)
        return
    batched = run_pipeline("batched", X, Y, X_test, Y_test)
    reference = run_pipeline("liblinear", X, Y, X_test, Y_test)
    same = np.mean(np.array(batched["best"]) == np.array(reference["best"]))
    print(f"sklearn_seconds={reference['seconds']:.1f}")
    print(f"batched_seconds={batched['seconds']:.1f}")
    print(f"speedup={reference['seconds'] / batched['seconds']:.1f}x (target >= 10x)")
    print(f"sklearn_mAP={reference['map']:.2f} batched_mAP={batched['map']:.2f}")
    print(f"delta_mAP={batched['map'] - reference['map']:+.3f} (target |delta| <= 0.3)")
    print(f"same_cost_fraction={same:.2f} (target >= 0.9)")
    print(f"peak_memory={peak_memory_ratio(args, warm=True):.2f}x train feature bytes (target <= 3x; "
          f"{peak_memory_ratio(args, warm=False):.2f}x with the one-time library set-up)")


if __name__ == "__main__":
    main()
