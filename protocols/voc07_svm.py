"""Linear SVM per class and tap on VOC2007 (Goyal et al. 2019; FAIR and VISSL benchmarks).

Per tap: features normalised (x / (||x|| + 1e-5)); per class, k-fold stratified
CV on trainval without shuffling (ids in sorted order) scores every cost by
non-interpolated AP averaged over the folds; the best cost (the first in grid
order on ties, as np.argmax in FAIR and VISSL) is refit on all of trainval;
test AP is all-point (mAP) and VOC07 11-point (mAP_11pt), x100, over the test
images not labelled difficult-only for that class.

Training rows labelled -1 (difficult only) are negatives by default (FAIR);
train_difficult=exclude leaves them out of that class's folds and refit.
Edge cases, all recorded in details:
- a class with no positive (or no negative) training row, or no positive test
  row, is not trained and is left out of mAP (skipped_classes, with the reason);
- a CV fold whose training part lacks a positive or a negative, or whose
  validation part lacks a positive, is skipped for that class (cv_folds_used);
- a class with no usable fold takes the cost with the best mean CV AP over the
  other classes (cv_fallback); when no class has a usable fold, SslBenchError.
All CV columns (fold, class) of a tap are one batched fit over the cost grid
(one fit per class with solver=liblinear, so a killed run keeps finished classes);
the refit is one more fit over the distinct chosen costs (with solver=liblinear,
one per chosen cost over the classes that chose it); the batched fits of a tap
share one eigendecomposition of its features. Resume keeps "cv:{tap}"
(or "cv:{tap}:{class}") and "tap:{tap}" in ctx.state.

solver=batched (default) finds the exact optimum; solver=liblinear runs LinearSVC
as FAIR and VISSL do (max_iter 2000, float64 inputs; random_state recorded), the
way to compare with their published tables. Either way per_class records, per
class, whether liblinear stops (or, for batched, may stop: a bound) at its
iteration cap at the chosen cost (over_liblinear_cap), and
classes_over_liblinear_cap counts them per tap.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Literal

import numpy as np
from sklearn.model_selection import StratifiedKFold

from benchmark.config import is_int
from benchmark.errors import SslBenchError
from benchmark.protocol import MetricSpec, Protocol, ProtocolResult, RunContext
from benchmark.registry import PROTOCOLS
from protocols.metrics import average_precision
from protocols.svm import Basis
from protocols.svm_common import (check_multilabel, check_svm_fields, class_names, first_best, make_svm,
                                  nan_to_none, resolve_costs, scores_at, shared_basis, solver_details, splits_of,
                                  take_tap)

PER_IMAGE_LIMIT = 200_000  # test scores (images x classes) kept in details for the best tap, for bootstrap


@dataclasses.dataclass(frozen=True)
class Voc07SvmConfig:
    """Settings of the voc07_svm protocol; see PROTOCOLS.md, section voc07_svm."""

    costs: Literal["vissl", "fair"] = "vissl"  # cost grid; custom_costs overrides it when non-empty
    custom_costs: tuple[float, ...] = ()
    folds: int = 3
    train_difficult: Literal["negative", "exclude"] = "negative"  # FAIR: difficult-only rows are negatives
    solver: Literal["batched", "liblinear"] = "batched"
    pos_weight: float = 2.0
    neg_weight: float = 1.0
    tol: float = 1e-4
    train_split: str | None = None  # None: the dataset's train split (trainval)
    test_split: str | None = None  # None: the dataset's test split

    def __post_init__(self) -> None:
        check_svm_fields(self)
        if not is_int(self.folds) or self.folds < 2:
            raise ValueError(f"folds: expected an integer >= 2, got {self.folds!r}")
        if self.train_difficult not in ("negative", "exclude"):
            raise ValueError(f"train_difficult: expected negative or exclude, got {self.train_difficult!r}")


def stratified_folds(y: np.ndarray, folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) positions of StratifiedKFold without shuffling; [] when there are fewer rows than folds."""
    if len(y) < folds:
        return []
    with warnings.catch_warnings():  # "least populated class has only n members": handled by fold checks
        warnings.simplefilter("ignore", UserWarning)
        return list(StratifiedKFold(n_splits=folds, shuffle=False).split(np.zeros(len(y)), y))


@PROTOCOLS.register("voc07_svm")
class Voc07SvmProtocol(Protocol):
    """Linear SVMs per class on VOC07 trainval, cost by 3-fold CV, test mAP per tap."""

    name = "voc07_svm"
    version = "1"
    Config = Voc07SvmConfig
    default_dataset = "voc2007"
    default_taps = None
    needs = ("multilabel",)

    def metrics(self, config: Voc07SvmConfig, dataset: Any) -> tuple[MetricSpec, ...]:
        """mAP (all-point AP, primary) and mAP_11pt (VOC07 11-point) over classes, x 100."""
        return MetricSpec("mAP", primary=True), MetricSpec("mAP_11pt")

    def run(self, ctx: RunContext, config: Voc07SvmConfig) -> ProtocolResult:
        train_split, test_split = splits_of(ctx, config, self.name)
        grid, costs = resolve_costs(config.costs, config.custom_costs)
        pending = [tap for tap in ctx.taps if f"tap:{tap}" not in ctx.state]
        if len(pending) < len(ctx.taps):
            ctx.log(f"voc07_svm: taps {[t for t in ctx.taps if t not in pending]} done in an earlier run; reusing them")
        if pending:
            train = ctx.features(train_split, pending)
            test = ctx.features(test_split, pending)
            for tap in ctx.progress(pending, desc="voc07_svm taps", total=len(pending)):
                X, labels = take_tap(train, tap, train_split, self.name, config.solver)
                Q, q_labels = take_tap(test, tap, test_split, self.name, config.solver)
                ctx.state.put(f"tap:{tap}", self._run_tap(
                    ctx, config, tap, costs, (X, check_multilabel(labels, train_split, self.name)),
                    (Q, check_multilabel(q_labels, test_split, self.name)), list(test.ids)))
                del train.features[tap], test.features[tap]
        per_tap = {tap: ctx.state.get(f"tap:{tap}") for tap in ctx.taps}
        best = max(ctx.taps, key=lambda t: per_tap[t]["metrics"]["mAP"])
        details: dict[str, Any] = {
            **solver_details(config.solver),
            # None for a tap resumed from a state written before the flag existed
            "classes_over_liblinear_cap": {t: r.get("n_over_liblinear_cap") for t, r in per_tap.items()},
            "cost_grid": grid,
            "costs": list(costs),
            "folds": config.folds,
            "cv_score": "non-interpolated AP (sklearn average_precision_score), mean over usable folds",
            "cost_tie_break": "first in grid order",
            "test_ap": "mAP: all-point interpolated (VOC2010+); mAP_11pt: VOC07 11-point",
            "train_difficult": config.train_difficult,
            "class_weight": {"1": config.pos_weight, "0": config.neg_weight},
            "tol": config.tol,
            "splits": {"train": train_split, "test": test_split},
            "skipped_classes": per_tap[best]["skipped_classes"],
            "per_class": {t: {k: v for k, v in r.items() if k not in ("metrics", "per_image", "skipped_classes")}
                          for t, r in per_tap.items()},
            "per_image": _per_image_arrays(best, per_tap[best]["per_image"]),
        }
        return ProtocolResult({t: r["metrics"] for t, r in per_tap.items()}, details)

    def _run_tap(self, ctx: RunContext, config: Voc07SvmConfig, tap: str, costs: tuple[float, ...],
                 train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                 test_ids: list[str]) -> dict[str, Any]:
        """Metrics and details of one tap, JSON-ready (what resume stores)."""
        (X, labels), (Q, q_labels) = train, test
        if X.shape[1] != Q.shape[1]:
            raise SslBenchError(f"voc07_svm: tap '{tap}' has {X.shape[1]} dims on the train split but "
                                f"{Q.shape[1]} on the test split; clear the feature cache and rerun")
        if labels.shape[1] != q_labels.shape[1]:
            raise SslBenchError(f"voc07_svm: {labels.shape[1]} classes in the train split but "
                                f"{q_labels.shape[1]} in the test split; check the dataset")
        names = class_names(ctx, labels.shape[1])
        rows = labels != -1 if config.train_difficult == "exclude" else np.ones(labels.shape, bool)
        targets = (labels == 1).astype(np.int8)
        skipped = {}
        for c, name in enumerate(names):
            if not targets[rows[:, c], c].any():
                skipped[name] = "no positive image in the train split"
            elif targets[rows[:, c], c].all():
                skipped[name] = "no negative image in the train split"
            elif not (q_labels[:, c] == 1).any():
                skipped[name] = "no positive image in the test split"
        active = [c for c, name in enumerate(names) if name not in skipped]
        if not active:
            raise SslBenchError("voc07_svm: no class has positive and negative train images and a positive "
                                "test image; check --data-root and the split lists")

        basis = shared_basis(config, ctx, X)
        cv_ap, folds_used = self._cross_validate(ctx, config, tap, costs, X, targets, rows, active, names, basis)
        usable = [c for c in active if np.isfinite(cv_ap[c]).any()]
        if not usable:
            raise SslBenchError(f"voc07_svm: no class has a usable {config.folds}-fold split of the train images "
                                "(each fold needs positives on both sides); use more images or --set folds=2")
        fallback = first_best(np.nanmean(cv_ap[usable], axis=0))
        chosen = {c: first_best(cv_ap[c]) if c in usable else fallback for c in active}

        distinct = sorted(set(chosen.values()))
        # batched: one refit over the distinct chosen costs; liblinear: one per cost, only the classes that chose it
        groups = ([(distinct, active)] if config.solver == "batched"
                  else [([k], [c for c in active if chosen[c] == k]) for k in distinct])
        scores = np.full(q_labels.shape, np.nan, dtype=np.float32)
        over_cap = {}
        for grid_index, members in groups:
            svm = make_svm(config, ctx, [costs[k] for k in grid_index])
            svm.fit(X, targets[:, members], rows[:, members], basis=basis)
            for j, c in enumerate(members):
                scores[:, c] = scores_at(svm, Q, grid_index.index(chosen[c]), [j])[:, 0]
                over_cap[names[c]] = bool(svm.over_cap_[grid_index.index(chosen[c]), j])
        ap = np.full(len(names), np.nan)
        ap_11pt = np.full(len(names), np.nan)
        for c in active:
            keep = q_labels[:, c] != -1
            ap[c] = average_precision(scores[keep, c], q_labels[keep, c], "all_point")
            ap_11pt[c] = average_precision(scores[keep, c], q_labels[keep, c], "voc07_11point")
        return {
            "metrics": {"mAP": 100.0 * float(np.nanmean(ap)), "mAP_11pt": 100.0 * float(np.nanmean(ap_11pt))},
            "ap": {names[c]: 100.0 * float(ap[c]) for c in active},
            "ap_11pt": {names[c]: 100.0 * float(ap_11pt[c]) for c in active},
            "chosen_cost": {names[c]: costs[chosen[c]] for c in active},
            "over_liblinear_cap": over_cap,
            "n_over_liblinear_cap": sum(over_cap.values()),
            "cv_ap": {names[c]: nan_to_none(cv_ap[c]) for c in active},
            "cv_folds_used": {names[c]: folds_used[names[c]] for c in active},
            "cv_fallback": [names[c] for c in active if c not in usable],
            "skipped_classes": skipped,
            "n_train": int(X.shape[0]), "n_test": int(Q.shape[0]),
            "per_image": {"ids": test_ids,
                          "scores": {names[c]: scores[:, c].tolist() for c in active},
                          "labels": {names[c]: q_labels[:, c].tolist() for c in active}}
            if q_labels.size <= PER_IMAGE_LIMIT else None,
        }

    def _cross_validate(self, ctx: RunContext, config: Voc07SvmConfig, tap: str, costs: tuple[float, ...],
                        X: np.ndarray, targets: np.ndarray, rows: np.ndarray, active: list[int],
                        names: list[str], basis: Basis | None) -> tuple[np.ndarray, dict[str, list[int]]]:
        """CV AP (classes, costs), NaN where a class has no usable fold, and the folds used per class.

        Resumable: one state entry per tap (batched) or per (tap, class) (liblinear).
        """
        chunks = [active] if config.solver == "batched" else [[c] for c in active]
        cv_ap = np.full((len(names), len(costs)), np.nan)
        folds_used: dict[str, list[int]] = {}
        for chunk in chunks:
            key = f"cv:{tap}" if config.solver == "batched" else f"cv:{tap}:{names[chunk[0]]}"
            if key not in ctx.state:
                ctx.state.put(key, self._cv_chunk(ctx, config, costs, X, targets, rows, chunk, names, basis))
            stored = ctx.state.get(key)
            for c in chunk:
                cv_ap[c] = [np.nan if v is None else v for v in stored["cv_ap"][names[c]]]
                folds_used[names[c]] = stored["folds_used"][names[c]]
        return cv_ap, folds_used

    def _cv_chunk(self, ctx: RunContext, config: Voc07SvmConfig, costs: tuple[float, ...], X: np.ndarray,
                  targets: np.ndarray, rows: np.ndarray, chunk: list[int], names: list[str],
                  basis: Basis | None) -> dict[str, Any]:
        """One fit over every usable (fold, class) column of `chunk`; CV AP per class and cost."""
        columns: list[tuple[int, int, np.ndarray]] = []  # (class, fold, validation rows)
        masks = []
        for c in chunk:
            members = np.flatnonzero(rows[:, c])
            y = targets[members, c]
            for f, (fit_at, val_at) in enumerate(stratified_folds(y, config.folds)):
                if y[fit_at].all() or not y[fit_at].any() or not y[val_at].any():
                    continue
                mask = np.zeros(len(X), bool)
                mask[members[fit_at]] = True
                masks.append(mask)
                columns.append((c, f, members[val_at]))
        per_fold = np.full((len(columns), len(costs)), np.nan)
        if columns:
            svm = make_svm(config, ctx, costs)
            svm.fit(X, targets[:, [c for c, _, _ in columns]], np.stack(masks, axis=1), basis=basis)
            for k in range(len(costs)):
                scores = scores_at(svm, X, k)
                for j, (c, _, val) in enumerate(columns):
                    per_fold[j, k] = average_precision(scores[val, j], targets[val, c], "non_interpolated")
        result: dict[str, Any] = {"cv_ap": {}, "folds_used": {}}
        for c in chunk:
            mine = [j for j, column in enumerate(columns) if column[0] == c]
            table = per_fold[mine].mean(axis=0) if mine else np.full(len(costs), np.nan)
            result["cv_ap"][names[c]] = nan_to_none(table)
            result["folds_used"][names[c]] = [columns[j][1] for j in mine]
        return result


def _per_image_arrays(tap: str, per_image: dict[str, Any] | None) -> dict[str, Any] | None:
    """The best tap's test scores (float32, as the SVMs gave them), labels and image ids as arrays."""
    if per_image is None:
        return None
    return {"tap": tap, "ids": np.asarray(per_image["ids"], dtype=str),
            "scores": {c: np.asarray(v, dtype=np.float32) for c, v in per_image["scores"].items()},
            "labels": {c: np.asarray(v, dtype=np.int8) for c, v in per_image["labels"].items()}}
