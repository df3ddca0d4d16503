"""One-vs-rest linear SVMs (squared hinge, L2) for many columns and costs at once.

Every (column, cost) pair is the problem liblinear solves for
``LinearSVC(C, class_weight={1: pos, 0: neg}, penalty="l2", loss="squared_hinge", dual=True)``:
minimise over w~ = [w, b]  0.5 ||w~||^2 + C sum_i s_i max(0, 1 - y_i (w.x_i + b))^2,
with y in {-1, +1}, s_i the class weight (0 for masked rows) and the intercept
penalised like a weight (liblinear's intercept_scaling=1). The objective is
strongly convex, so its optimum is unique and any exact solver reaches it.

The batched solver shares X between all problems. It works in the principal
basis of X~ = [X, 1] (X~ = F V^T, V orthonormal, F = X~ V with orthogonal
columns), so every product is N x r with r = min(N, D + 1). Each cost is a
truncated Newton (preconditioned CG) with exact line search on the piecewise
quadratic (Keerthi & DeCoste 2005), warm-started from the previous cost;
converged problems leave the batch, and columns stop moving in CG as soon as
their own residual is small enough. At each Newton step, the systems
I + 2C F_s^T W F_s (s: the rows inside the margin) of all columns are
preconditioned alike, by whichever is cheaper for the step: each one's block on
the leading directions plus its diagonal on the rest, or, when few rows are
inside the margin (large C, where the first needs hundreds of CG steps) and
N <= D + 1, its exact inverse through the Woodbury identity on the Gram matrix
of those rows (then CG takes a step or two).

Everything runs on the solver's device (torch), the eigendecomposition too
except on the CPU, where scipy's in-place one is faster and smaller. Memory,
beyond X: the float64 eigendecomposition (two r x r or (D + 1)^2 matrices, 16
bytes per entry, in place on the host; torch.linalg.eigh's workspace on a
GPU) while the basis is built, then F (float32, N x r) and a few MB of scratch
while solving; when N <= D + 1 also the Gram matrix (float32, N x N) and, at Woodbury
steps, Cholesky factors (FACTOR_SHARE of X's bytes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import scipy.linalg
import torch

from benchmark.errors import SslBenchError, did_you_mean
from protocols.svm_liblinear import SETTINGS, fit_liblinear, over_cap_bound

MAX_NEWTON = 100  # Newton steps per cost; a well-posed problem needs far fewer
MAX_CG = 200  # CG steps per Newton step
LINE_SEARCH_STEPS = 30
STALL_RTOL = 1e-7  # a Newton step this small relative to v is below float32 resolution
TOP_BLOCK = 64  # leading directions whose Hessian block is factorised exactly for the preconditioner
RANK_RTOL = 1e-7  # basis directions with a smaller share of the largest eigenvalue are rounding noise
CG_RTOL = 0.01  # inexact Newton: CG stops at this fraction of the gradient norm (0.1 costs ~20% more
# in all: the Newton steps it saves at large C are worth more than the extra CG steps)
ACTIVE_SET_CG_STEPS = 20  # block-preconditioned CG steps per Newton step assumed before the first is seen
FACTOR_SLOWDOWN = 4.0  # a float64 Cholesky flop against a float32 matrix product flop (2 CPU cores: 4-5)
FACTOR_SHARE = 0.5  # Woodbury factors held at once, as a share of X's bytes
GRAM_ROWS = 256  # rows per float32 block of a Gram matrix on its way into the float64 one
SCRATCH_FLOATS = 1 << 20  # the preconditioner's scratch: a few MB, reused from step to step
# device types whose eigendecomposition runs in scipy on the host: in place (half the memory of
# torch.linalg.eigh's divide and conquer) and ~1.5x faster on the CPU; CUDA uses torch.linalg.eigh
HOST_EIGH = ("cpu",)


def normalize_features(X: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """PROTOCOLS.md's SVM normalisation, in float64: rows x / (||x||_2 + 1e-5), returned as dtype."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise SslBenchError(f"features: expected a 2-D array (samples, dims), got shape {X.shape}; "
                            "flatten or pool them first")
    X64 = X.astype(np.float64, copy=False)
    return (X64 / (np.linalg.norm(X64, axis=1, keepdims=True) + 1e-5)).astype(dtype, copy=False)


class BatchedLinearSVC:
    """One-vs-rest linear SVMs (squared hinge, L2, penalised intercept as liblinear's intercept_scaling=1,
    class weights pos:neg) for many classes and many costs at once: solver=batched, the optimum
    sklearn.svm.LinearSVC(C, class_weight={1: pos_weight, 0: neg_weight}, penalty="l2",
    loss="squared_hinge", dual=True) converges to; solver=liblinear, LinearSVC itself as FAIR and VISSL
    run it (svm_liblinear.SETTINGS: max_iter 2000, so it may stop short of that optimum at large C)."""

    def __init__(self, costs: Sequence[float], pos_weight: float = 2.0, neg_weight: float = 1.0,
                 tol: float = 1e-4, solver: Literal["batched", "liblinear"] = "batched",
                 device: str | torch.device = "cpu", progress: Callable[..., Any] | None = None) -> None:
        self.costs = costs
        self.pos_weight = pos_weight
        self.neg_weight = neg_weight
        self.tol = tol
        self.solver = solver
        self.device = device
        self.progress = progress

    def fit(self, X: np.ndarray, Y: np.ndarray, mask: np.ndarray | None = None,
            basis: Basis | None = None) -> BatchedLinearSVC:
        """X float32 (N, D) (already normalised by the caller); Y (N, M) with 1 = positive, 0 = negative
        for M independent binary problems ("columns"); mask bool (N, M): rows that take part in column m's
        training (None = all). Columns may be classes, or (fold, class) pairs stacked side by side, or
        (sample, class) pairs: the solver treats every column as its own problem, sharing X.
        A column with no positive or no negative among its masked rows is a user error
        (SslBenchError naming the column index) unless the caller filtered it out.
        X float64 stays float64 with solver=liblinear, as FAIR and VISSL fit it. basis: Basis(X, device) of
        this same X, to share one eigendecomposition between fits (solver=batched; built here when None).
        Sets coef_ (n_costs, M, D) and intercept_ (n_costs, M) (float32; float64 with liblinear on float64 X),
        n_iter_ (n_costs, M) and over_cap_ bool (n_costs, M): whether liblinear with SETTINGS stops
        (solver=liblinear) or may stop (solver=batched: svm_liblinear.over_cap_bound) at its iteration cap
        before its tolerance."""
        costs = self._check_params()
        X, Y, mask = _check_inputs(X, Y, mask, np.float64 if self.solver == "liblinear" else np.float32)
        if self.solver == "liblinear":
            self.coef_, self.intercept_, self.n_iter_ = fit_liblinear(
                X, Y, mask, costs, {1: self.pos_weight, 0: self.neg_weight}, self.tol, self._wrap)
            self.over_cap_ = self.n_iter_ >= SETTINGS["max_iter"]
        else:
            self._fit_batched(X, Y, mask, costs, basis)
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
        if self.solver not in ("batched", "liblinear"):
            raise SslBenchError(f"solver: expected 'batched' or 'liblinear', got {self.solver!r}."
                                f"{did_you_mean(str(self.solver), ('batched', 'liblinear'))}")
        return costs

    def _wrap(self, iterable: Any, desc: str, total: int) -> Any:
        """The progress bar around iterable, when there is one."""
        return self.progress(iterable, desc=desc, total=total) if self.progress else iterable

    def _fit_batched(self, X: np.ndarray, Y: np.ndarray, mask: np.ndarray, costs: list[float],
                     basis: Basis | None) -> None:
        device = torch.device(self.device)
        if basis is None:
            basis = Basis(X, device)
        elif tuple(basis.X.shape) != X.shape or basis.X.device.type != device.type:
            raise SslBenchError(f"basis: built for {tuple(basis.X.shape)} features on {basis.X.device}, "
                                f"not for these {X.shape} on {device}; build Basis(X, device) of this X")
        F = basis.F
        y = torch.from_numpy(np.where(Y > 0, 1.0, -1.0)).to(device)
        a = torch.from_numpy(np.where(Y > 0, self.pos_weight, self.neg_weight) * mask).to(device)
        M = Y.shape[1]
        order = np.argsort(costs, kind="stable")
        coef = np.zeros((len(costs), M, X.shape[1]), np.float32)
        intercept = np.zeros((len(costs), M), np.float32)
        n_iter = np.zeros((len(costs), M), np.int64)
        over_cap = np.zeros((len(costs), M), bool)
        row_sq = torch.linalg.vector_norm(basis.X, dim=1).double().square() + 1.0
        max_row_sq = (row_sq[:, None] * (a > 0)).amax(0).cpu().numpy()
        weights = (min(self.pos_weight, self.neg_weight), max(self.pos_weight, self.neg_weight))
        v = torch.zeros(F.shape[1], M, dtype=torch.float64, device=device)
        z = torch.zeros(X.shape[0], M, dtype=torch.float64, device=device)
        systems = _NewtonSystems(basis)
        for c in self._wrap(order, desc="svm costs", total=len(order)):
            n_iter[c] = _newton(systems, y, a, costs[c], v, z, self.tol)
            w, b = basis.weights(v.float())
            coef[c], intercept[c] = w.cpu().numpy(), b.cpu().numpy()
            over_cap[c] = over_cap_bound(_objective(v, z, y, a, costs[c]).cpu().numpy(), max_row_sq, costs[c],
                                         weights, (basis.lam_min, basis.lam_max), self.tol)
        self.coef_, self.intercept_, self.n_iter_, self.over_cap_ = coef, intercept, n_iter, over_cap


def _check_inputs(X: np.ndarray, Y: np.ndarray, mask: np.ndarray | None,
                  dtype: type) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X = np.ascontiguousarray(X, dtype=dtype)
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


class Basis:
    """F (N, r) with orthogonal columns spanning X~ = [X, 1]'s rows: X~ w~ = F v for w~ = the weights of v.

    The eigendecomposition behind it runs in float64: on the host for the device types in HOST_EIGH (scipy,
    in place: LAPACK's MRRR driver needs the matrix and its eigenvectors, 16 bytes per entry, and no O(n^2)
    workspace), elsewhere on the device (torch.linalg.eigh). F and the weights map are only consistent with
    each other to the accuracy of that decomposition, and a float32 one is visibly off the optimum at large
    C. Float32 copies are made once the float64 ones are freed. lam_min and lam_max bound the eigenvalues of
    the Gram matrix X~ X~^T (lam_min 0 when it is singular)."""

    def __init__(self, X: np.ndarray, device: torch.device) -> None:
        N, D = X.shape
        self.X = torch.from_numpy(X).to(device)
        on_host = device.type in HOST_EIGH
        at = torch.device("cpu") if on_host else device
        if N <= D + 1:  # F = U sqrt(lambda) from the Gram matrix X~ X~^T = U lambda U^T
            self.K = _gram(self.X, self.X.T, torch.empty(N, N, dtype=torch.float32, device=device))
            lam, U = _eigh_inplace(self.K.to(at, torch.float64).add_(1.0), on_host)
            self.lam_min = float(lam[0]) if lam.numel() == N else 0.0
            U *= lam.sqrt()
            self.lam = lam.to(device, torch.float32)
            self.F = torch.empty(U.shape, dtype=torch.float32, device=device).copy_(U)
            self.V = None
        else:  # F = X~ V from the eigenvectors V of X~^T X~
            self.K = None
            G = torch.empty(D + 1, D + 1, dtype=torch.float64, device=at)
            _gram(self.X.T, self.X, G[:D, :D])
            G[:D, D] = G[D, :D] = self.X.sum(0, dtype=torch.float64).to(at)
            G[D, D] = N
            lam, V = _eigh_inplace(G, on_host)
            del G
            self.lam_min = 0.0
            self.V = torch.empty(V.shape, dtype=torch.float32, device=device).copy_(V)
            del V
            self.F = torch.addmm(self.V[D], self.X, self.V[:D])
            self.lam = None
        self.lam_max = float(lam[-1])

    def weights(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(w (M, D), b (M,)) of w~ = V v, through X~^T U lambda^-1/2 when V is not stored."""
        if self.V is None:
            alpha = self.F @ (v / self.lam[:, None])
            return (self.X.T @ alpha).T, alpha.sum(0)
        w = self.V @ v
        return w[:-1].T, w[-1]


def _gram(A: torch.Tensor, B: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out (on its own device and dtype) = A @ B in float32 products, a block of GRAM_ROWS rows at a time."""
    for start in range(0, A.shape[0], GRAM_ROWS):
        out[start:start + GRAM_ROWS] = A[start:start + GRAM_ROWS] @ B
    return out


def _eigh_inplace(A: torch.Tensor, on_host: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric float64 A, without the directions whose
    eigenvalue is below RANK_RTOL of the largest (rounding noise of a singular A). on_host: scipy on the
    host tensor A, overwriting it; else torch.linalg.eigh on A's device."""
    if on_host:
        # A.T: the same symmetric matrix in LAPACK's column order, so scipy does not copy it
        lam_np, U_np = scipy.linalg.eigh(A.numpy().T, overwrite_a=True, check_finite=False, driver="evr")
        lam, U = torch.from_numpy(lam_np), torch.from_numpy(U_np)
    else:
        lam, U = torch.linalg.eigh(A)
    first = int(torch.searchsorted(lam, RANK_RTOL * lam[-1], right=True))
    return lam[first:], U[:, first:]


def _objective(v: torch.Tensor, z: torch.Tensor, y: torch.Tensor, a: torch.Tensor, C: float) -> torch.Tensor:
    """0.5 ||v||^2 + C sum_i a_i max(0, 1 - y_i z_i)^2 per column (float64)."""
    xi = torch.clamp(1.0 - y * z, min=0.0)
    return 0.5 * v.square().sum(0) + C * (a * xi * xi).sum(0)


def _newton(systems: _NewtonSystems, y: torch.Tensor, a: torch.Tensor, C: float, v: torch.Tensor,
            z: torch.Tensor, tol: float) -> np.ndarray:
    """Truncated Newton for all columns at cost C, updating v (r, M) and z = F v (N, M) in place (float64).
    Returns the Newton steps per column.

    A column stops when ||grad|| <= tol sqrt(2 f(v)): as f is 1-strongly convex, its v is then within
    a relative distance tol of the optimum and its objective within tol^2 / 2 of the optimal one. The
    margins z are accumulated in float64 from the steps' own products F d, so the squared hinge
    1 - y z keeps its precision when it is small (large C); a column whose step no longer moves v at
    float32 resolution stops too."""
    F = systems.basis.F
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
        d, u = systems.direction(act, C, grad.float())
        d, u = d.double(), u.double()
        t = _line_search(vl, d, zl, u, yl, al, C)
        v[:, live] = vl + t * d
        z[:, live] = zl + t * u
        moved = t * d.norm(dim=0) > STALL_RTOL * vl.norm(dim=0)
    return steps


class _NewtonSystems:
    """Solves the Newton systems of a fit (CG's d and u = F d, float32) with the cheaper preconditioner.

    Per Newton step, every column takes the Woodbury preconditioner (CG then needs a step or two) when the
    float64 factors of all columns cost less than the block-preconditioned CG steps they replace (as many as
    the last block CG took, ACTIVE_SET_CG_STEPS before the first), else the block one; all columns alike,
    as a CG step reads F whatever the number of columns in it. Factors are held FACTOR_SHARE of X's bytes
    at a time (at least one column)."""

    def __init__(self, basis: Basis) -> None:
        self.basis = basis
        self.block_cg_steps = ACTIVE_SET_CG_STEPS
        self.factor_bytes = FACTOR_SHARE * basis.X.numel() * basis.X.element_size()

    def direction(self, act: torch.Tensor, C: float, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        F = self.basis.F
        N, r = F.shape
        inside = (act > 0).sum(0).double()
        factor_flops = FACTOR_SLOWDOWN * float(inside.pow(3).sum()) / 3
        if self.basis.K is None or factor_flops > self.block_cg_steps * 4.0 * N * r * act.shape[1]:
            d, u, self.block_cg_steps = _cg(F, act, C, grad, _Preconditioner(F, act, C))
            return d, u
        d = torch.empty_like(grad)
        u = torch.empty(N, grad.shape[1], dtype=grad.dtype, device=grad.device)
        for chunk in self._chunks(inside):
            sub = act[:, chunk]
            precond = _WoodburyPreconditioner(self.basis.K, F, sub, C)
            d[:, chunk], u[:, chunk], _ = _cg(F, sub, C, grad[:, chunk], precond)
        return d, u

    def _chunks(self, inside: torch.Tensor) -> list[slice]:
        """Runs of columns whose float64 factors (inside^2 entries each) fit in factor_bytes."""
        chunks, start, held = [], 0, 0.0
        for i, size in enumerate((8 * inside.square()).tolist()):
            if i > start and held + size > self.factor_bytes:
                chunks.append(slice(start, i))
                start, held = i, 0.0
            held += size
        chunks.append(slice(start, len(inside)))
        return chunks


class _WoodburyPreconditioner:
    """The inverse of I + 2C F_s^T W F_s per column (s: its rows inside the margin, W their class weights)
    through the Woodbury identity: r - F_s^T (W^-1 / 2C + K_ss + 1)^-1 F_s r, with the float64 Cholesky
    factor of that small matrix, applied in float64 (F converted GRAM_ROWS rows at a time: in float32,
    r - F_s^T (...) cancels in the stiff directions at large C and CG needs tens of steps). K_ss + 1 >= F_s F_s^T (F drops only rounding-noise
    directions), so this is at least the exact inverse and positive definite; it equals it up to float32
    rounding of K and F, and CG with it takes a step or two. A factorisation that fails (float32 K at a huge
    C) is retried with the diagonal raised by K's float32 rounding bound, then left as the identity."""

    def __init__(self, K: torch.Tensor, F: torch.Tensor, act: torch.Tensor, C: float) -> None:
        self.F = F
        self.rows: list[torch.Tensor] = []
        self.chol: list[torch.Tensor | None] = []
        for j in range(act.shape[1]):
            rows = torch.nonzero(act[:, j]).squeeze(1)
            A = K[rows[:, None], rows].double().add_(1.0)
            A.diagonal().add_(act[rows, j].double().mul(2.0 * C).reciprocal())
            L, info = torch.linalg.cholesky_ex(A)
            if info and rows.numel():
                A.diagonal().add_(rows.numel() * torch.finfo(torch.float32).eps * float(A.diagonal().max()))
                L, info = torch.linalg.cholesky_ex(A)
            self.rows.append(rows)
            self.chol.append(None if info else L)

    def keep(self, going: torch.Tensor) -> None:
        """Drop the columns that left the batch."""
        kept = going.tolist()
        self.rows = [rows for rows, on in zip(self.rows, kept) if on]
        self.chol = [L for L, on in zip(self.chol, kept) if on]

    def solve(self, r: torch.Tensor) -> torch.Tensor:
        """Apply the inverse to residuals r (r, columns)."""
        r64 = r.double()
        blocks = [slice(start, start + GRAM_ROWS) for start in range(0, self.F.shape[0], GRAM_ROWS)]
        projected = torch.cat([self.F[rows].double() @ r64 for rows in blocks])
        inner = torch.zeros_like(projected)
        for j, (rows, L) in enumerate(zip(self.rows, self.chol)):
            if L is not None and rows.numel():
                inner[rows, j] = torch.cholesky_solve(projected[rows, j].unsqueeze(1), L).squeeze(1)
        for rows in blocks:
            r64.addmm_(self.F[rows].double().T, inner[rows], alpha=-1.0)
        return r64.float()


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
        precond: _Preconditioner | _WoodburyPreconditioner) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Preconditioned CG on (I + 2C F^T act F) d = -grad per column (float32); returns d, u = F d and the
    number of CG steps.

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
    for step in range(1, MAX_CG + 1):
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
    return d_out, u_out, step


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
