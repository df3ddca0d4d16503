"""One-vs-rest linear SVMs (squared hinge, L2) for many columns and costs at once.

Every (column, cost) pair is the problem liblinear solves for
``LinearSVC(C, class_weight={1: pos, 0: neg}, penalty="l2", loss="squared_hinge", dual=True)``:
minimise over w~ = [w, b]  0.5 ||w~||^2 + C sum_i s_i max(0, 1 - y_i (w.x_i + b))^2,
with y in {-1, +1}, s_i the class weight (0 for masked rows) and the intercept
penalised like a weight (liblinear's intercept_scaling=1). The objective is
strongly convex, so its optimum is unique and any exact solver reaches it.

The batched solver shares X between all problems. It works in the principal
basis of X~ = [X, 1] (X~ = F V^T, V orthonormal, F = X~ V with orthogonal
columns), so every product is N x r with r = min(N, D + 1), and the Newton
system is well preconditioned by its block on the leading directions plus its
diagonal on the rest. Each cost is a truncated Newton (preconditioned CG) with
exact line search on the piecewise quadratic (Keerthi & DeCoste 2005),
warm-started from the previous cost; converged problems leave the batch, and
columns stop moving in CG as soon as their own residual is small enough.

Memory, beyond X: the float64 eigendecomposition (two r x r or (D + 1)^2
matrices, 16 bytes per entry, done in place on the host) while the basis is
built, then F (float32, N x r) and a few MB of scratch while solving.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import scipy.linalg
import torch

from benchmark.errors import SslBenchError

MAX_NEWTON = 100  # Newton steps per cost; a well-posed problem needs far fewer
MAX_CG = 200  # CG steps per Newton step
LINE_SEARCH_STEPS = 30
STALL_RTOL = 1e-7  # a Newton step this small relative to v is below float32 resolution
TOP_BLOCK = 64  # leading directions whose Hessian block is factorised exactly for the preconditioner
RANK_RTOL = 1e-7  # basis directions with a smaller share of the largest eigenvalue are rounding noise
CG_RTOL = 0.01  # inexact Newton: CG stops at this fraction of the gradient norm (0.1 costs ~20% more
# in all: the Newton steps it saves at large C are worth more than the extra CG steps)
GRAM_ROWS = 256  # rows per float32 block of a Gram matrix on its way into the float64 one
SCRATCH_FLOATS = 1 << 20  # the preconditioner's scratch: a few MB, reused from step to step


def normalize_features(X: np.ndarray) -> np.ndarray:
    """PROTOCOLS.md's SVM normalisation: float32 rows x / (||x||_2 + 1e-5)."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise SslBenchError(f"features: expected a 2-D array (samples, dims), got shape {X.shape}; "
                            "flatten or pool them first")
    X64 = X.astype(np.float64, copy=False)
    return (X64 / (np.linalg.norm(X64, axis=1, keepdims=True) + 1e-5)).astype(np.float32)


class BatchedLinearSVC:
    """One-vs-rest linear SVMs (squared hinge, L2, penalised intercept as liblinear's intercept_scaling=1,
    class weights pos:neg) for many classes and many costs at once; same solutions as
    sklearn.svm.LinearSVC(C, class_weight={1: pos_weight, 0: neg_weight}, penalty="l2",
    loss="squared_hinge", dual=True, max_iter=2000, tol=1e-4)."""

    def __init__(self, costs: Sequence[float], pos_weight: float = 2.0, neg_weight: float = 1.0,
                 tol: float = 1e-4, solver: Literal["batched", "sklearn"] = "batched",
                 device: str | torch.device = "cpu", progress: Callable[..., Any] | None = None) -> None:
        self.costs = costs
        self.pos_weight = pos_weight
        self.neg_weight = neg_weight
        self.tol = tol
        self.solver = solver
        self.device = device
        self.progress = progress

    def fit(self, X: np.ndarray, Y: np.ndarray, mask: np.ndarray | None = None) -> BatchedLinearSVC:
        """X float32 (N, D) (already normalised by the caller); Y (N, M) with 1 = positive, 0 = negative
        for M independent binary problems ("columns"); mask bool (N, M): rows that take part in column m's
        training (None = all). Columns may be classes, or (fold, class) pairs stacked side by side, or
        (sample, class) pairs: the solver treats every column as its own problem, sharing X.
        A column with no positive or no negative among its masked rows is a user error
        (SslBenchError naming the column index) unless the caller filtered it out.
        Sets coef_ float32 (n_costs, M, D), intercept_ float32 (n_costs, M), n_iter_ (n_costs, M)."""
        costs = self._check_params()
        X, Y, mask = _check_inputs(X, Y, mask)
        if self.solver == "sklearn":
            self.coef_, self.intercept_, self.n_iter_ = self._fit_sklearn(X, Y, mask, costs)
        else:
            self.coef_, self.intercept_, self.n_iter_ = self._fit_batched(X, Y, mask, costs)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """float32 (n_costs, N, M) scores."""
        if not hasattr(self, "coef_"):
            raise SslBenchError("BatchedLinearSVC: decision_function called before fit; call fit(X, Y) first")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.coef_.shape[2]:
            raise SslBenchError(f"features: expected shape (N, {self.coef_.shape[2]}) as in fit, got {X.shape}")
        return np.einsum("nd,cmd->cnm", X, self.coef_, optimize=True) + self.intercept_[:, None, :]

    def _check_params(self) -> list[float]:
        costs = [float(c) for c in self.costs]
        if not costs or not all(np.isfinite(c) and c > 0 for c in costs):
            raise SslBenchError(f"costs: expected a non-empty list of finite numbers > 0, got {self.costs!r}")
        for name in ("pos_weight", "neg_weight", "tol"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
                raise SslBenchError(f"{name}: expected a finite number > 0, got {value!r}")
        if self.solver not in ("batched", "sklearn"):
            raise SslBenchError(f"solver: expected 'batched' or 'sklearn', got {self.solver!r}")
        return costs

    def _wrap(self, iterable: Any, desc: str, total: int) -> Any:
        return self.progress(iterable, desc=desc, total=total) if self.progress else iterable

    def _fit_sklearn(self, X: np.ndarray, Y: np.ndarray, mask: np.ndarray,
                     costs: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.svm import LinearSVC

        n_costs, M = len(costs), Y.shape[1]
        coef = np.zeros((n_costs, M, X.shape[1]), np.float32)
        intercept = np.zeros((n_costs, M), np.float32)
        n_iter = np.zeros((n_costs, M), np.int64)
        pairs = [(c, m) for c in range(n_costs) for m in range(M)]
        for c, m in self._wrap(pairs, desc="svm (sklearn)", total=len(pairs)):
            rows = mask[:, m]
            clf = LinearSVC(C=costs[c], class_weight={1: self.pos_weight, 0: self.neg_weight}, penalty="l2",
                            loss="squared_hinge", dual=True, max_iter=2000, tol=self.tol, random_state=0)
            with warnings.catch_warnings():  # liblinear stops at max_iter at large C, as in VISSL
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(X[rows], Y[rows, m])
            coef[c, m], intercept[c, m], n_iter[c, m] = clf.coef_[0], clf.intercept_[0], clf.n_iter_
        return coef, intercept, n_iter

    def _fit_batched(self, X: np.ndarray, Y: np.ndarray, mask: np.ndarray,
                     costs: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        device = torch.device(self.device)
        basis = _Basis(X, device)
        F = basis.F
        y = torch.from_numpy(np.where(Y > 0, 1.0, -1.0)).to(device)
        a = torch.from_numpy(np.where(Y > 0, self.pos_weight, self.neg_weight) * mask).to(device)
        M = Y.shape[1]
        order = np.argsort(costs, kind="stable")
        coef = np.zeros((len(costs), M, X.shape[1]), np.float32)
        intercept = np.zeros((len(costs), M), np.float32)
        n_iter = np.zeros((len(costs), M), np.int64)
        v = torch.zeros(F.shape[1], M, dtype=torch.float64, device=device)
        z = torch.zeros(X.shape[0], M, dtype=torch.float64, device=device)
        for c in self._wrap(order, desc="svm costs", total=len(order)):
            n_iter[c] = _newton(F, y, a, costs[c], v, z, self.tol)
            w, b = basis.weights(v.float())
            coef[c], intercept[c] = w.cpu().numpy(), b.cpu().numpy()
        return coef, intercept, n_iter


def _check_inputs(X: np.ndarray, Y: np.ndarray,
                  mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X = np.ascontiguousarray(X, dtype=np.float32)
    Y = np.asarray(Y)
    if X.ndim != 2 or X.size and not np.isfinite([X.min(), X.max()]).all():  # no (N, D) temporary
        raise SslBenchError(f"features: expected a finite 2-D array (samples, dims), got shape {X.shape}")
    if Y.ndim != 2 or Y.shape[0] != X.shape[0]:
        raise SslBenchError(f"labels: expected shape ({X.shape[0]}, n_columns) to match the features, got {Y.shape}")
    mask = np.ones(Y.shape, bool) if mask is None else np.asarray(mask)
    if mask.shape != Y.shape or mask.dtype != bool:
        raise SslBenchError(f"mask: expected a boolean array of shape {Y.shape}, got {mask.dtype} {mask.shape}")
    if not np.isin(Y[mask], (0, 1)).all():
        raise SslBenchError("labels: expected 1 (positive) or 0 (negative) in every training row; "
                            "mask out the others")
    Y = Y.astype(np.int8)
    positives, negatives = (mask & (Y == 1)).sum(0), (mask & (Y == 0)).sum(0)
    bad = np.flatnonzero((positives == 0) | (negatives == 0))
    if bad.size:
        m = int(bad[0])
        raise SslBenchError(f"labels: column {m} has {positives[m]} positives and {negatives[m]} negatives "
                            "among its training rows; an SVM needs both, so drop that column")
    return X, Y, mask


class _Basis:
    """F (N, r) with orthogonal columns spanning X~ = [X, 1]'s rows: X~ w~ = F v for w~ = the weights of v.

    The eigendecomposition behind it runs in float64 on the host, in place (LAPACK's MRRR driver needs
    the matrix and its eigenvectors, 16 bytes per entry, and no O(n^2) workspace): F and the weights
    map are only consistent with each other to the accuracy of that decomposition, and a float32 one
    is visibly off the optimum at large C. Float32 copies are made once the float64 ones are freed."""

    def __init__(self, X: np.ndarray, device: torch.device) -> None:
        N, D = X.shape
        self.X = torch.from_numpy(X).to(device)
        if N <= D + 1:  # F = U sqrt(lambda) from the Gram matrix X~ X~^T = U lambda U^T
            K = _gram(self.X, self.X.T)
            K += 1.0
            lam, U = _eigh_inplace(K)
            del K
            U *= np.sqrt(lam)
            self.lam = torch.from_numpy(lam.astype(np.float32)).to(device)
            self.F = torch.from_numpy(np.array(U, dtype=np.float32, order="C")).to(device)
            self.V = None
        else:  # F = X~ V from the eigenvectors V of X~^T X~
            G = np.empty((D + 1, D + 1))
            G[:D, :D] = _gram(self.X.T, self.X)
            G[:D, D] = G[D, :D] = self.X.sum(0, dtype=torch.float64).cpu().numpy()
            G[D, D] = N
            _, V = _eigh_inplace(G)
            del G
            self.V = torch.from_numpy(np.array(V, dtype=np.float32, order="C")).to(device)
            del V
            self.F = torch.addmm(self.V[D], self.X, self.V[:D])
            self.lam = None

    def weights(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(w (M, D), b (M,)) of w~ = V v, through X~^T U lambda^-1/2 when V is not stored."""
        if self.V is None:
            alpha = self.F @ (v / self.lam[:, None])
            return (self.X.T @ alpha).T, alpha.sum(0)
        w = self.V @ v
        return w[:-1].T, w[-1]


def _gram(A: torch.Tensor, B: torch.Tensor) -> np.ndarray:
    """A @ B (float32 products) as a float64 host array, a block of GRAM_ROWS rows at a time."""
    out = np.empty((A.shape[0], B.shape[1]))
    for start in range(0, A.shape[0], GRAM_ROWS):
        out[start:start + GRAM_ROWS] = (A[start:start + GRAM_ROWS] @ B).cpu().numpy()
    return out


def _eigh_inplace(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric float64 A, overwriting A, without the
    directions whose eigenvalue is below RANK_RTOL of the largest (rounding noise of a singular A)."""
    # A.T: the same symmetric matrix in LAPACK's column order, so scipy does not copy it
    lam, U = scipy.linalg.eigh(A.T, overwrite_a=True, check_finite=False, driver="evr")
    first = int(np.searchsorted(lam, RANK_RTOL * lam[-1], side="right"))
    return lam[first:], U[:, first:]


def _newton(F: torch.Tensor, y: torch.Tensor, a: torch.Tensor, C: float, v: torch.Tensor,
            z: torch.Tensor, tol: float) -> np.ndarray:
    """Truncated Newton for all columns at cost C, updating v (r, M) and z = F v (N, M) in place (float64).
    Returns the Newton steps per column.

    A column stops when ||grad|| <= tol sqrt(2 f(v)): as f is 1-strongly convex, its v is then within
    a relative distance tol of the optimum and its objective within tol^2 / 2 of the optimal one. The
    margins z are accumulated in float64 from the steps' own products F d, so the squared hinge
    1 - y z keeps its precision when it is small (large C); a column whose step no longer moves v at
    float32 resolution stops too."""
    M = v.shape[1]
    steps = np.zeros(M, np.int64)
    live = torch.arange(M, device=v.device)
    moved = torch.ones(M, dtype=torch.bool, device=v.device)
    for _ in range(MAX_NEWTON):
        vl, zl, yl, al = v[:, live], z[:, live], y[:, live], a[:, live]
        xi = torch.clamp(1.0 - yl * zl, min=0.0)
        grad = vl - 2.0 * C * (F.T @ (al * yl * xi).float()).double()
        scale = (vl.square().sum(0) + 2.0 * C * (al * xi * xi).sum(0)).sqrt()
        keep = (grad.norm(dim=0) > tol * scale) & moved
        if not keep.all():
            live, vl, zl, yl, al, xi, grad = (t[..., keep] for t in (live, vl, zl, yl, al, xi, grad))
        if live.numel() == 0:
            break
        steps[live.cpu().numpy()] += 1
        act = (al * (xi > 0)).float()
        d, u = _cg(F, act, C, grad.float(), _Preconditioner(F, act, C))
        d, u = d.double(), u.double()
        t = _line_search(vl, d, zl, u, yl, al, C)
        v[:, live] = vl + t * d
        z[:, live] = zl + t * u
        moved = t * d.norm(dim=0) > STALL_RTOL * vl.norm(dim=0)
    return steps


class _Preconditioner:
    """Block-Jacobi preconditioner of I + 2C F^T act F per column: the exact block on the TOP_BLOCK
    leading principal directions (the last columns of F), the diagonal on the others."""

    def __init__(self, F: torch.Tensor, act: torch.Tensor, C: float) -> None:
        N, r = F.shape
        k = self.k = min(TOP_BLOCK, r)
        diag = torch.zeros(r - k, act.shape[1], dtype=F.dtype, device=F.device)
        rows = max(1, SCRATCH_FLOATS // max(1, r - k))  # per block of the squares F^2, a scratch
        for start in range(0, N, rows):
            diag.addmm_(F[start:start + rows, :r - k].square().T, act[start:start + rows])
        self.inv_diag = diag.mul_(2.0 * C).add_(1.0).reciprocal_()
        top = F[:, r - k:]
        block = torch.empty(act.shape[1], k, k, dtype=F.dtype, device=F.device)
        chunk = max(1, SCRATCH_FLOATS // (N * k))  # columns per batch of the (chunk, N, k) scratch
        for start in range(0, act.shape[1], chunk):
            weighted = act[:, start:start + chunk].T.unsqueeze(-1) * top
            torch.matmul(weighted.transpose(1, 2), top, out=block[start:start + chunk])
        block.mul_(2.0 * C).diagonal(dim1=1, dim2=2).add_(1.0)
        self.chol = torch.linalg.cholesky(block)

    def keep(self, going: torch.Tensor) -> None:
        """Drop the columns that left the batch."""
        self.inv_diag, self.chol = self.inv_diag[:, going], self.chol[going]

    def solve(self, r: torch.Tensor) -> torch.Tensor:
        """Apply the inverse to residuals r (r, columns)."""
        out = torch.empty_like(r)
        split = r.shape[0] - self.k
        torch.mul(r[:split], self.inv_diag, out=out[:split])
        out[split:] = torch.cholesky_solve(r[split:].T.unsqueeze(-1), self.chol).squeeze(-1).T
        return out


def _cg(F: torch.Tensor, act: torch.Tensor, C: float, grad: torch.Tensor,
        precond: _Preconditioner) -> tuple[torch.Tensor, torch.Tensor]:
    """Preconditioned CG on (I + 2C F^T act F) d = -grad per column (float32); returns d and u = F d.

    A column is done once its residual is below CG_RTOL of its gradient; done columns stay in the batch,
    frozen, until at most half of it is still going (fewer small operations than dropping each at once)."""
    d_out = torch.zeros_like(grad)
    u_out = torch.zeros(F.shape[0], grad.shape[1], dtype=grad.dtype, device=grad.device)
    on = torch.arange(grad.shape[1], device=grad.device)
    d, u = d_out.clone(), u_out.clone()
    r = -grad
    stop = CG_RTOL * grad.norm(dim=0)
    going = torch.ones_like(stop)
    p = precond.solve(r)
    rz = (r * p).sum(0)
    for _ in range(MAX_CG):
        Fp = F @ p
        Hp = torch.addmm(p, F.T, act * Fp, alpha=2.0 * C)
        # H >= I, so p Hp >= |p|^2 > 0 unless p = 0 (a frozen column at an exact solution): 0, not 0 / 0
        alpha = rz / (p * Hp).sum(0).clamp_min_(torch.finfo(p.dtype).tiny) * going
        d.addcmul_(alpha, p)
        u.addcmul_(alpha, Fp)
        r.addcmul_(alpha, Hp, value=-1.0)
        going = (r.norm(dim=0) > stop).to(r.dtype)
        n_going = int(going.sum())
        if n_going == 0:
            break
        if 2 * n_going <= going.numel():
            on_going = going.bool()
            d_out[:, on], u_out[:, on] = d, u
            on, d, u, r, p, rz, stop, act, going = (t[..., on_going]
                                                     for t in (on, d, u, r, p, rz, stop, act, going))
            precond.keep(on_going)
        zr = precond.solve(r)
        rz_new = (r * zr).sum(0)
        p = zr.addcmul_(rz_new / rz, p)
        rz = rz_new
    d_out[:, on], u_out[:, on] = d, u
    return d_out, u_out


def _line_search(v: torch.Tensor, d: torch.Tensor, z: torch.Tensor, u: torch.Tensor, y: torch.Tensor,
                 a: torch.Tensor, C: float) -> torch.Tensor:
    """Exact minimiser t >= 0 of the piecewise-quadratic objective along d, per column (safeguarded Newton);
    all arguments float64."""
    vd = (v * d).sum(0)
    dd = (d * d).sum(0)
    m = y * z
    q = y * u
    lo = torch.zeros_like(vd)
    hi = torch.full_like(vd, float("inf"))
    t = torch.ones_like(vd)
    for _ in range(LINE_SEARCH_STEPS):
        slack = 1.0 - m - t * q
        on = slack > 0
        slope = vd + t * dd - 2.0 * C * (a * q * slack * on).sum(0)
        curv = dd + 2.0 * C * (a * q * q * on).sum(0)
        lo = torch.where(slope < 0, t, lo)
        hi = torch.where(slope > 0, t, hi)
        if bool((slope.abs() <= 1e-12 * curv).all()):
            break
        step = t - slope / curv
        bisect = torch.where(torch.isinf(hi), 2.0 * t, 0.5 * (lo + hi))
        t = torch.where((step > lo) & (step < hi), step, bisect)
    return t
