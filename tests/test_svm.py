"""The batched SVM solver against sklearn's LinearSVC (liblinear) and float64 formulas."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import average_precision_score
from sklearn.svm import LinearSVC

from benchmark.errors import SslBenchError
from protocols import svm as svm_module
from protocols.svm import BatchedLinearSVC, normalize_features

COSTS = [0.01, 0.1, 1.0, 10.0, 100.0]


def _problem(n: int, dim: int, columns: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-negative normalised features, noisy linear labels (0/1) and random training masks."""
    rng = np.random.default_rng(seed)
    X = normalize_features(np.abs(rng.normal(size=(n, dim)) + 0.5 * rng.normal(size=(n, 1))))
    scores = (X - X.mean(0)) @ rng.normal(size=(dim, columns))
    Y = (scores > 0.8 * scores.std(0)).astype(np.int64)
    Y[rng.random(Y.shape) < 0.1] ^= 1
    mask = rng.random(Y.shape) < 0.75
    return X, Y, mask


def _objective(X: np.ndarray, y01: np.ndarray, w: np.ndarray, b: float, C: float,
               pos: float = 2.0, neg: float = 1.0) -> float:
    """liblinear's primal objective in float64 (intercept penalised as a weight)."""
    w64, X64 = w.astype(np.float64), X.astype(np.float64)
    y = np.where(y01 > 0, 1.0, -1.0)
    slack = np.maximum(0.0, 1.0 - y * (X64 @ w64 + float(b)))
    return 0.5 * (w64 @ w64 + float(b) ** 2) + C * float(np.sum(np.where(y01 > 0, pos, neg) * slack ** 2))


def _liblinear(X: np.ndarray, y: np.ndarray, C: float, tol: float = 1e-4) -> LinearSVC:
    return LinearSVC(C=C, class_weight={1: 2.0, 0: 1.0}, penalty="l2", loss="squared_hinge", dual=True,
                     max_iter=100000, tol=tol, random_state=0).fit(X, y)


@pytest.fixture(scope="module", params=[(300, 64), (400, 600)], ids=["N>D", "N<D"])
def fitted(request):
    X, Y, mask = _problem(*request.param, columns=4, seed=sum(request.param))
    return X, Y, mask, BatchedLinearSVC(COSTS).fit(X, Y, mask)


def test_batched_matches_liblinear(fitted):
    X, Y, mask, svm = fitted
    assert svm.coef_.shape == (len(COSTS), 4, X.shape[1]) and svm.coef_.dtype == np.float32
    assert svm.intercept_.shape == (len(COSTS), 4) and svm.n_iter_.shape == (len(COSTS), 4)
    scores = svm.decision_function(X)
    assert scores.shape == (len(COSTS), X.shape[0], 4)
    for c, C in enumerate(COSTS):
        for m in range(4):
            rows = mask[:, m]
            ref = _liblinear(X[rows], Y[rows, m], C, tol=1e-6 if C <= 10 else 1e-4)
            ours = _objective(X[rows], Y[rows, m], svm.coef_[c, m], svm.intercept_[c, m], C)
            theirs = _objective(X[rows], Y[rows, m], ref.coef_[0], ref.intercept_[0], C)
            assert ours <= theirs * (1 + 1e-5), (C, m, ours, theirs)
            if C <= 10:
                w_ref = np.append(ref.coef_[0], ref.intercept_[0])
                w = np.append(svm.coef_[c, m], svm.intercept_[c, m])
                assert np.linalg.norm(w - w_ref) <= 2e-3 * np.linalg.norm(w_ref), (C, m)
                np.testing.assert_allclose(scores[c, :, m], ref.decision_function(X), atol=2e-3 * np.abs(
                    ref.decision_function(X)).max())
            held = ~rows
            ap, ap_ref = (average_precision_score(Y[held, m], s[held])
                          for s in (scores[c, :, m], ref.decision_function(X)))
            assert abs(ap - ap_ref) <= 0.003, (C, m, ap, ap_ref)


@pytest.mark.parametrize("shape", [(150, 20), (60, 200)], ids=["N>D", "N<D"])
def test_rank_deficient_features_match_liblinear(shape):
    """Repeated rows and a rank-6 feature space: singular Gram matrices, whose null directions are dropped."""
    X, Y = _rank_deficient(*shape)
    svm = BatchedLinearSVC([0.1, 10.0]).fit(X, Y)
    for c, C in enumerate([0.1, 10.0]):
        for m in range(2):
            ref = _liblinear(X, Y[:, m], C, tol=1e-6)
            ours = _objective(X, Y[:, m], svm.coef_[c, m], svm.intercept_[c, m], C)
            theirs = _objective(X, Y[:, m], ref.coef_[0], ref.intercept_[0], C)
            assert ours <= theirs * (1 + 1e-5), (C, m, ours, theirs)


def _assert_same_fit(X: np.ndarray, Y: np.ndarray, mask: np.ndarray, a: BatchedLinearSVC, b: BatchedLinearSVC,
                     costs: list[float]) -> None:
    """Two fits of one problem agree within the solver's own stopping bound.

    Each fit stops within tol * sqrt(2 f) of the optimum in (w, b), the objective being 1-strongly convex
    there; the two fits are then within twice that of each other, plus float32 resolution of the margins.
    Their objectives are each within tol^2 f of the optimal one (f - f* <= ||grad||^2 / 2)."""
    tol, eps = a.tol, np.finfo(np.float32).eps
    for c, C in enumerate(costs):
        for m in range(Y.shape[1]):
            rows = mask[:, m]
            f_a, f_b = (_objective(X[rows], Y[rows, m], fit.coef_[c, m], fit.intercept_[c, m], C) for fit in (a, b))
            w_a = np.append(a.coef_[c, m], a.intercept_[c, m]).astype(np.float64)
            w_b = np.append(b.coef_[c, m], b.intercept_[c, m]).astype(np.float64)
            bound = 2 * tol * np.sqrt(2 * f_b) + 64 * eps * np.linalg.norm(w_b)
            assert np.linalg.norm(w_a - w_b) <= bound, (C, m, np.linalg.norm(w_a - w_b), bound)
            assert abs(f_a - f_b) <= tol ** 2 * max(f_a, f_b) + 64 * eps * f_b, (C, m, f_a, f_b)


@pytest.mark.parametrize("shape", [(300, 40), (200, 300)], ids=["N>D", "N<D"])
def test_scratch_blocks_do_not_change_the_solution(monkeypatch, shape):
    """Gram matrices and preconditioner blocks built in many small pieces give the same fit as in one."""
    X, Y, mask = _problem(*shape, columns=5, seed=12)
    whole = BatchedLinearSVC([0.5, 50.0]).fit(X, Y, mask)
    monkeypatch.setattr(svm_module, "GRAM_ROWS", 7)
    monkeypatch.setattr(svm_module, "SCRATCH_FLOATS", 1000)
    pieces = BatchedLinearSVC([0.5, 50.0]).fit(X, Y, mask)
    _assert_same_fit(X, Y, mask, pieces, whole, [0.5, 50.0])


@pytest.mark.parametrize("problem", ["N<D", "rank-deficient N<D"])
def test_woodbury_and_block_preconditioners_reach_the_same_optimum(monkeypatch, problem):
    """Every Newton system through the Woodbury preconditioner (in chunks of one column) or every one
    through the block preconditioner: the same fit within the solver's stopping bound."""
    if problem.startswith("rank"):
        X, Y = _rank_deficient(60, 200)
        mask = np.random.default_rng(5).random(Y.shape) < 0.75
    else:
        X, Y, mask = _problem(200, 400, columns=4, seed=21)
    monkeypatch.setattr(svm_module, "FACTOR_SLOWDOWN", 1e30)  # factors never pay
    used = _count_preconditioners(monkeypatch)
    block = BatchedLinearSVC(COSTS).fit(X, Y, mask)
    assert used == {"_Preconditioner"}
    monkeypatch.setattr(svm_module, "FACTOR_SLOWDOWN", 0.0)  # factors always pay
    monkeypatch.setattr(svm_module, "FACTOR_SHARE", 0.0)  # one column per chunk
    used.clear()
    woodbury = BatchedLinearSVC(COSTS).fit(X, Y, mask)
    assert "_WoodburyPreconditioner" in used
    _assert_same_fit(X, Y, mask, woodbury, block, COSTS)


def _count_preconditioners(monkeypatch) -> set[str]:
    """The names of the preconditioner classes that _cg is given from now on."""
    used: set[str] = set()
    original = svm_module._cg

    def recording(F, act, C, grad, precond):
        used.add(type(precond).__name__)
        return original(F, act, C, grad, precond)

    monkeypatch.setattr(svm_module, "_cg", recording)
    return used


def test_woodbury_preconditioner_is_the_inverse_hessian():
    """On a well-conditioned system its solve is (I + 2C F_s^T W F_s)^-1 r in float64, to float32 accuracy
    times the condition number."""
    X, Y, _ = _problem(120, 300, columns=3, seed=8)
    basis = svm_module.Basis(X, torch.device("cpu"))
    rng = np.random.default_rng(0)
    act = torch.from_numpy((rng.random((120, 3)) < 0.4) * np.where(Y > 0, 2.0, 1.0)).float()
    C = 0.5
    r = torch.from_numpy(rng.normal(size=(basis.F.shape[1], 3))).float()
    got = svm_module._WoodburyPreconditioner(basis.K, basis.F, act, C).solve(r).double().numpy()
    F = basis.F.double().numpy()
    for j in range(3):
        H = np.eye(F.shape[1]) + 2 * C * F.T @ (act[:, j].double().numpy()[:, None] * F)
        want = np.linalg.solve(H, r[:, j].double().numpy())
        bound = 64 * np.finfo(np.float32).eps * np.linalg.cond(H) * np.linalg.norm(r[:, j].numpy())
        assert np.linalg.norm(got[:, j] - want) <= bound


def test_woodbury_column_that_cannot_be_factorised_is_left_unpreconditioned():
    """A small matrix that is not positive definite even after the rounding shift: identity for that column,
    the inverse for the others."""
    X, _, _ = _problem(40, 60, columns=1, seed=2)
    basis = svm_module.Basis(X, torch.device("cpu"))
    act = torch.ones(40, 2)
    K = basis.K.clone()
    K[:20, :20] -= 10.0 * torch.eye(20)  # rows 0..19, column 0's: indefinite; rows 20..39, column 1's: fine
    act[20:, 0] = 0.0
    act[:20, 1] = 0.0
    r = torch.from_numpy(np.random.default_rng(1).normal(size=(basis.F.shape[1], 2))).float()
    precond = svm_module._WoodburyPreconditioner(K, basis.F, act, 1.0)
    assert precond.chol[0] is None and precond.chol[1] is not None
    out = precond.solve(r)
    np.testing.assert_array_equal(out[:, 0].numpy(), r[:, 0].numpy())
    assert not np.allclose(out[:, 1].numpy(), r[:, 1].numpy())


def test_shared_basis_gives_the_same_fit_and_must_match_the_features():
    X, Y, mask = _problem(200, 300, columns=3, seed=4)
    basis = svm_module.Basis(X, torch.device("cpu"))
    alone = BatchedLinearSVC(COSTS).fit(X, Y, mask)
    shared = BatchedLinearSVC(COSTS).fit(X, Y, mask, basis=basis)
    np.testing.assert_array_equal(shared.coef_, alone.coef_)
    np.testing.assert_array_equal(shared.intercept_, alone.intercept_)
    with pytest.raises(SslBenchError, match="basis: built for"):
        BatchedLinearSVC(COSTS).fit(X[:100], Y[:100], mask[:100], basis=basis)


def _held_out_choice(X: np.ndarray, Y: np.ndarray, mask: np.ndarray, svm: BatchedLinearSVC) -> list[int]:
    """Per column, the first cost with the best AP on the rows left out of its training."""
    scores = svm.decision_function(X)
    return [int(np.argmax([average_precision_score(Y[~mask[:, m], m], scores[c, ~mask[:, m], m])
                           for c in range(len(svm.costs))])) for m in range(Y.shape[1])]


def _rank_deficient(n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Repeated rows in a rank-6 feature space (singular Gram matrices) and median-split labels."""
    rng = np.random.default_rng(11)
    base = np.abs(rng.normal(size=(n // 3, 6)) @ rng.normal(size=(6, dim)))
    X = normalize_features(np.repeat(base, 3, axis=0))
    scores = X @ rng.normal(size=(dim, 2))
    return X, (scores > np.median(scores, axis=0)).astype(np.int64)


@pytest.mark.parametrize("problem", ["N>D", "N<D", "rank-deficient N>D", "rank-deficient N<D"])
def test_torch_eigendecomposition_matches_scipy(monkeypatch, problem):
    """The device path (Gram matrix and torch.linalg.eigh on the solver's device, as on CUDA), run on the CPU,
    gives the scipy path's fit within its tolerance, and the same held-out cost choice."""
    if problem.startswith("rank"):
        X, Y = _rank_deficient(*((150, 20) if problem.endswith("N>D") else (60, 200)))
        mask = np.random.default_rng(3).random(Y.shape) < 0.75
    else:
        X, Y, mask = _problem(*((300, 64) if problem == "N>D" else (200, 400)), columns=4, seed=13)
    host = BatchedLinearSVC(COSTS).fit(X, Y, mask)
    monkeypatch.setattr(svm_module, "HOST_EIGH", ())
    device = BatchedLinearSVC(COSTS).fit(X, Y, mask)
    _assert_same_fit(X, Y, mask, device, host, COSTS)
    assert _held_out_choice(X, Y, mask, device) == _held_out_choice(X, Y, mask, host)


def _fair_linearsvc(X: np.ndarray, y01: np.ndarray, C: float) -> LinearSVC:
    """FAIR's train_svm_kfold.py LinearSVC on -1/+1 labels, written out, with random_state 0."""
    return LinearSVC(C=C, class_weight={1: 2, -1: 1}, intercept_scaling=1.0, penalty="l2", loss="squared_hinge",
                     tol=0.0001, dual=True, max_iter=2000, random_state=0).fit(X, np.where(y01 == 1, 1, -1))


def test_liblinear_solver_is_fair_and_vissl_linearsvc():
    raw, Y, mask = _problem(200, 32, columns=3, seed=1)
    X = raw.astype(np.float64) / (np.linalg.norm(raw.astype(np.float64), axis=1, keepdims=True) + 1e-5)
    costs = [0.1, 5.0, 1000.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        svm = BatchedLinearSVC(costs, solver="liblinear").fit(X, Y, mask)
        for c, C in enumerate(costs):
            for m in range(3):
                ref = _fair_linearsvc(X[mask[:, m]], Y[mask[:, m], m], C)
                np.testing.assert_array_equal(svm.coef_[c, m], ref.coef_[0])
                assert svm.intercept_[c, m] == ref.intercept_[0]
                assert svm.n_iter_[c, m] == ref.n_iter_
    assert svm.coef_.dtype == np.float64
    np.testing.assert_array_equal(svm.over_cap_, svm.n_iter_ == 2000)
    assert svm.over_cap_[2].any() and not svm.over_cap_[0].any()


@pytest.mark.parametrize("shape,stops", [((300, 64), True), ((200, 400), False)], ids=["N>D", "N<D"])
def test_batched_cap_flag_covers_where_liblinear_stops_at_its_cap(shape, stops):
    """The batched solver's bound flags every (cost, column) at which liblinear stops at max_iter (there are
    some on the N>D problem); at small C, where liblinear converges in a few dozen epochs, it flags nothing."""
    X, Y, mask = _problem(*shape, columns=4, seed=14)
    costs = [0.01, 1.0, 100.0, 1000.0]
    batched = BatchedLinearSVC(costs).fit(X, Y, mask)
    liblinear = BatchedLinearSVC(costs, solver="liblinear").fit(X, Y, mask)
    assert liblinear.over_cap_.any() == stops
    assert (batched.over_cap_ | ~liblinear.over_cap_).all()
    assert not batched.over_cap_[:2].any()


@pytest.mark.parametrize("solver", ["batched", "liblinear"])
def test_mask_excludes_rows(solver):
    X, Y, _ = _problem(250, 40, columns=1, seed=2)
    mask = np.ones(Y.shape, bool)
    mask[:20] = False
    wild = Y.copy()
    wild[:20] = 1 - wild[:20]
    a = BatchedLinearSVC([1.0], solver=solver).fit(X, Y, mask)
    b = BatchedLinearSVC([1.0], solver=solver).fit(X, wild, mask)
    c = BatchedLinearSVC([1.0], solver=solver).fit(X[20:], Y[20:])
    np.testing.assert_allclose(a.coef_, b.coef_, atol=1e-6)
    np.testing.assert_allclose(a.coef_, c.coef_, atol=1e-4 * np.abs(c.coef_).max())
    assert not np.allclose(a.coef_, BatchedLinearSVC([1.0], solver=solver).fit(X, wild).coef_, atol=1e-3)


def test_class_weights_matter():
    X, Y, mask = _problem(250, 40, columns=2, seed=3)
    default = BatchedLinearSVC([1.0]).fit(X, Y, mask)
    swapped = BatchedLinearSVC([1.0], pos_weight=1.0, neg_weight=2.0).fit(X, Y, mask)
    assert np.abs(default.coef_ - swapped.coef_).max() > 1e-2
    for m in range(2):
        rows = mask[:, m]
        ref = LinearSVC(C=1.0, class_weight={1: 1.0, 0: 2.0}, dual=True, max_iter=100000, tol=1e-6,
                        random_state=0).fit(X[rows], Y[rows, m])
        np.testing.assert_allclose(swapped.coef_[0, m], ref.coef_[0], atol=2e-3 * np.abs(ref.coef_).max())


def test_stacked_columns_equal_separate_fits():
    X, Y, mask = _problem(300, 50, columns=3, seed=4)
    together = BatchedLinearSVC([0.5, 20.0]).fit(X, Y, mask)
    for m in range(3):
        alone = BatchedLinearSVC([0.5, 20.0]).fit(X, Y[:, [m]], mask[:, [m]])
        np.testing.assert_allclose(together.coef_[:, m], alone.coef_[:, 0], atol=1e-4)


def test_unsorted_costs_follow_the_given_order():
    X, Y, _ = _problem(200, 30, columns=2, seed=5)
    forward = BatchedLinearSVC([0.1, 10.0]).fit(X, Y)
    backward = BatchedLinearSVC([10.0, 0.1]).fit(X, Y)
    np.testing.assert_allclose(forward.coef_[::-1], backward.coef_, atol=1e-5)


@pytest.mark.parametrize("solver", ["batched", "liblinear"])
def test_column_without_positives_is_a_user_error(solver):
    X, Y, mask = _problem(100, 10, columns=3, seed=6)
    Y[:, 1] = 0
    with pytest.raises(SslBenchError, match="column 1 "):
        BatchedLinearSVC([1.0], solver=solver).fit(X, Y, mask)
    Y[:, 1] = 1
    Y[~mask[:, 1], 1] = 0
    with pytest.raises(SslBenchError, match="column 1 "):
        BatchedLinearSVC([1.0], solver=solver).fit(X, Y, mask)


@pytest.mark.parametrize("kwargs", [{"costs": []}, {"costs": [0.0]}, {"costs": [1.0], "tol": -1.0},
                                    {"costs": [1.0], "solver": "sklearn"}])
def test_bad_parameters_are_user_errors(kwargs):
    X, Y, _ = _problem(50, 5, columns=1, seed=7)
    with pytest.raises(SslBenchError):
        BatchedLinearSVC(**kwargs).fit(X, Y)


def test_bad_shapes_are_user_errors():
    X, Y, mask = _problem(50, 5, columns=2, seed=8)
    with pytest.raises(SslBenchError, match="labels"):
        BatchedLinearSVC([1.0]).fit(X, Y[:-1])
    with pytest.raises(SslBenchError, match="mask"):
        BatchedLinearSVC([1.0]).fit(X, Y, mask[:, :1])
    Y[0, 0] = -1
    with pytest.raises(SslBenchError, match="labels"):
        BatchedLinearSVC([1.0]).fit(X, Y)
    mask[0, 0] = False
    svm = BatchedLinearSVC([1.0]).fit(X, Y, mask)
    with pytest.raises(SslBenchError, match="features"):
        svm.decision_function(X[:, :3])


def test_progress_wraps_the_cost_path():
    X, Y, _ = _problem(80, 8, columns=2, seed=9)
    seen = []

    def progress(iterable, desc, total):
        seen.append((desc, total))
        return iterable

    BatchedLinearSVC([1.0, 2.0, 3.0], progress=progress).fit(X, Y)
    BatchedLinearSVC([1.0, 2.0, 3.0], solver="liblinear", progress=progress).fit(X, Y)
    assert [total for _, total in seen] == [3, 6]


def test_normalize_features_is_the_float64_formula():
    rng = np.random.default_rng(10)
    X = rng.normal(size=(30, 17)) * rng.uniform(0.01, 100, size=(30, 1))
    X[0] = 0.0
    expected = X / (np.sqrt((X.astype(np.float64) ** 2).sum(1, keepdims=True)) + 1e-5)
    out = normalize_features(X.astype(np.float32))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(SslBenchError):
        normalize_features(X[0])
