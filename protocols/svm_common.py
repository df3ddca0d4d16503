"""What voc07_svm and lowshot share: cost grids, config checks, loading normalised features, scoring."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from benchmark.config import check_split_fields
from benchmark.errors import SslBenchError, did_you_mean
from benchmark.features import check_features
from benchmark.protocol import FeatureSet, RunContext
from protocols.svm import Basis, BatchedLinearSVC, normalize_features
from protocols.svm_liblinear import OVER_CAP, SETTINGS

# PROTOCOLS.md, voc07_svm: VISSL's grid, and FAIR's (its list, then 0.5**n for n = 4..19), in their order
VISSL_COSTS = (0.01, 0.1, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 50.0, 100.0, 1000.0)
FAIR_COSTS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0, 100.0) + tuple(0.5 ** n for n in range(4, 20))
COST_GRIDS = {"vissl": VISSL_COSTS, "fair": FAIR_COSTS}


def resolve_costs(grid: str, custom: Sequence[float]) -> tuple[str, tuple[float, ...]]:
    """(grid name, costs): the custom costs when given, else the named grid."""
    if custom:
        return "custom", tuple(float(c) for c in custom)
    return grid, COST_GRIDS[grid]


def check_svm_fields(config: Any) -> None:
    """ValueError naming the field for the settings every SVM protocol has (costs, solver, weights, splits)."""
    custom = tuple(config.custom_costs) if isinstance(config.custom_costs, list) else config.custom_costs
    object.__setattr__(config, "custom_costs", custom)
    if config.costs not in COST_GRIDS:
        raise ValueError(f"costs: expected one of {', '.join(COST_GRIDS)}, got {config.costs!r}")
    if not isinstance(custom, tuple) or not all(
            isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) and c > 0 for c in custom):
        raise ValueError(f"custom_costs: expected numbers > 0 (empty: use the named grid), got {config.custom_costs!r}")
    if len(set(custom)) != len(custom):
        raise ValueError(f"custom_costs: expected distinct numbers, got {config.custom_costs!r}")
    if config.solver not in ("batched", "liblinear"):
        raise ValueError(f"solver: expected batched or liblinear (LinearSVC as FAIR and VISSL run it), "
                         f"got {config.solver!r}")
    for name in ("pos_weight", "neg_weight", "tol"):
        value = getattr(config, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    check_split_fields(config)


def splits_of(ctx: RunContext, config: Any, protocol: str) -> tuple[str, str]:
    """(train split, test split) from the config or the dataset, checked against the dataset's splits."""
    train = config.train_split or ctx.dataset.train_split
    test = config.test_split or ctx.dataset.test_split
    available = getattr(ctx.dataset, "splits", None)
    for split in (train, test):
        if available is not None and split not in available:
            raise SslBenchError(f"{protocol}: dataset has no split '{split}'.{did_you_mean(split, available)} "
                                f"Available: {', '.join(available)}")
    return train, test


def class_names(ctx: RunContext, n_classes: int) -> list[str]:
    """The dataset's class names, or class0, class1, ... when it has none for these labels."""
    names = list(getattr(ctx.dataset, "classes", None) or [])
    return names if len(names) == n_classes else [f"class{c}" for c in range(n_classes)]


def check_multilabel(labels: np.ndarray, split: str, protocol: str) -> np.ndarray:
    """int8 (N, C) labels in {-1, 0, 1}, or SslBenchError."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.isin(labels, (-1, 0, 1)).all():
        raise SslBenchError(f"{protocol}: split '{split}' needs multilabel labels (N, classes) of 1/0/-1, got "
                            f"shape {labels.shape}; use a VOC-style dataset")
    return labels.astype(np.int8)


def take_tap(fs: FeatureSet, tap: str, split: str, protocol: str, solver: str) -> tuple[np.ndarray, np.ndarray]:
    """(normalised features, labels) of one tap: float64 for solver=liblinear (FAIR's and VISSL's inputs),
    else float32; SslBenchError when the split is empty or not finite."""
    if len(fs) == 0:
        raise SslBenchError(f"{protocol}: split '{split}' has no images; check --data-root and the split lists")
    X = fs.features[tap]
    check_features(X, fs.labels, tap, split)
    return normalize_features(X, np.float64 if solver == "liblinear" else np.float32), np.asarray(fs.labels)


def solver_details(solver: str) -> dict[str, Any]:
    """What a record says about its solver: the name, liblinear's settings when it ran, the cap flag's meaning."""
    return {"solver": solver, "liblinear_settings": dict(SETTINGS) if solver == "liblinear" else None,
            "over_liblinear_cap": OVER_CAP[solver]}


def make_svm(config: Any, ctx: RunContext, costs: Sequence[float]) -> BatchedLinearSVC:
    """The solver with the config's weights, tolerance and solver, on the run's device."""
    return BatchedLinearSVC(costs, pos_weight=config.pos_weight, neg_weight=config.neg_weight, tol=config.tol,
                            solver=config.solver, device=ctx.device, progress=ctx.progress)


def shared_basis(config: Any, ctx: RunContext, X: np.ndarray) -> Basis | None:
    """The batched solver's eigendecomposition of X, for every fit on this X to share; None for liblinear."""
    if config.solver != "batched":
        return None
    return Basis(np.ascontiguousarray(X, dtype=np.float32), torch.device(ctx.device))


def scores_at(svm: BatchedLinearSVC, X: np.ndarray, cost: int, columns: Any = slice(None)) -> np.ndarray:
    """float32 (N, len(columns)) decision values of the fitted columns at one cost index (memory: one cost)."""
    return X @ svm.coef_[cost, columns].T + svm.intercept_[cost, columns]


def first_best(values: np.ndarray) -> int:
    """Index of the highest finite value, the first one on ties (np.argmax, as FAIR and VISSL pick costs)."""
    values = np.asarray(values, dtype=np.float64)
    return int(np.argmax(np.where(np.isnan(values), -np.inf, values)))


def nan_to_none(values: Any) -> Any:
    """Nested lists of floats with NaN as None (strict JSON)."""
    if isinstance(values, (list, tuple, np.ndarray)):
        return [nan_to_none(v) for v in values]
    value = float(values)
    return None if math.isnan(value) else value
