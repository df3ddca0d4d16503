"""k-shot linear SVMs per class (Goyal et al. 2019; FAIR and VISSL low-shot benchmarks).

Samples: for sample s, k and class c, numpy's default_rng draws without
replacement, keyed [sample_seed, s, k, c, 1 or 0] for a multilabel class's
positives or negatives and [sample_seed, s, k, c] for a multiclass class
(recorded in details["sampling"]), so draws do not depend on the other ks.
- multilabel (VOC07): k positives (label 1) and (n_classes - 1) * k negatives
  (label 0) of trainval for class c; every other row, difficult-only ones
  included, is left out of c's training. A class with fewer positives or
  negatives than asked uses all it has (details["clipped"]); a class without a
  positive train image or without a positive test image is left out
  (details["skipped_classes"]).
- multiclass (Places205, folders, Fashion-MNIST): k images of every class that
  has train images; class c's SVM takes the sample's other images as
  negatives. k above the smallest class is skipped (details["skipped_ks"]), as
  in FAIR.
Same SVM and normalisation as voc07_svm, no CV. All (sample, class) columns of
one k are one fit over the cost grid. Test metric per sample: mean over
classes of all-point AP on the test split (difficult rows excluded), x100,
and for multiclass top-1 of the argmax, x100.

Cost per k: select=test (FAIR) takes the cost with the highest mean test mAP
over the samples (a choice made on the test set). select=heldout holds out,
in every (sample, class) draw, the first floor(n/3) of the drawn positives and
of the drawn negatives (the draw order is random, so this is a stratified
random third), fits on the rest, and takes the cost with the highest mean
held-out mAP; the reported numbers are the full-sample fits at that cost.
k < 3 has no held-out positive, so there the cost is selected on test, noted in
details. Ties go to the first cost in grid order. std is over samples with
ddof=0 (numpy's default, as FAIR and VISSL). solver as in voc07_svm; per k,
columns_over_liblinear_cap counts the (sample, class) fits at the chosen cost
that liblinear stops (or may stop) at its iteration cap.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np

from benchmark.config import is_int
from benchmark.errors import SslBenchError
from benchmark.protocol import MetricSpec, Protocol, ProtocolResult, RunContext
from benchmark.registry import PROTOCOLS
from protocols.metrics import average_precision, mean_average_precision
from protocols.svm_common import (check_multilabel, check_svm_fields, class_names, first_best, make_svm,
                                  nan_to_none, resolve_costs, scores_at, solver_details, splits_of, take_tap)

SAMPLING = ("numpy.random.default_rng(key).choice(rows, n, replace=False); key [sample_seed, sample, k, class, 1|0] "
            "for a multilabel class's positives|negatives, [sample_seed, sample, k, class] for a multiclass class")
HELDOUT = "first floor(n/3) drawn positives and negatives of every (sample, class) draw, fit on the rest"


@dataclasses.dataclass(frozen=True)
class LowshotConfig:
    """Settings of the lowshot protocol; see PROTOCOLS.md, section lowshot."""

    ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 96)
    samples: int = 5
    sample_seed: int = 0
    select: Literal["test", "heldout"] = "test"  # FAIR picks the cost on the test set
    costs: Literal["vissl", "fair"] = "vissl"  # cost grid; custom_costs overrides it when non-empty
    custom_costs: tuple[float, ...] = ()
    solver: Literal["batched", "liblinear"] = "batched"
    pos_weight: float = 2.0
    neg_weight: float = 1.0
    tol: float = 1e-4
    train_split: str | None = None  # None: the dataset's train split
    test_split: str | None = None  # None: the dataset's test split

    def __post_init__(self) -> None:
        check_svm_fields(self)
        ks = tuple(self.ks) if isinstance(self.ks, list) else self.ks
        object.__setattr__(self, "ks", ks)
        if (not isinstance(ks, tuple) or not ks or not all(is_int(k) and k >= 1 for k in ks)
                or any(a >= b for a, b in zip(ks, ks[1:]))):
            raise ValueError(f"ks: expected positive integers in increasing order without repeats, got {self.ks!r}")
        if not is_int(self.samples) or self.samples < 1:
            raise ValueError(f"samples: expected an integer >= 1, got {self.samples!r}")
        if not is_int(self.sample_seed) or self.sample_seed < 0:
            raise ValueError(f"sample_seed: expected an integer >= 0, got {self.sample_seed!r}")
        if self.select not in ("test", "heldout"):
            raise ValueError(f"select: expected test or heldout, got {self.select!r}")


@dataclasses.dataclass
class Draw:
    """The sampled training rows of one k, over the rows any column uses; columns (sample, class), sample-major."""

    rows: np.ndarray  # int (R,): indices into the train split, sorted
    masks: np.ndarray  # bool (R, samples * classes): training rows of each column
    held: np.ndarray  # bool (R, samples * classes): rows of each column held out for select=heldout
    targets: np.ndarray  # int8 (R, samples * classes): 1 positive, 0 negative


def _draw(rng_key: list[int], rows: np.ndarray, n: int) -> np.ndarray:
    """Up to n of `rows` in random order; the first third of a draw is what select=heldout holds out."""
    return np.random.default_rng(rng_key).choice(rows, size=min(n, len(rows)), replace=False)


def _compress(picks: list[list[np.ndarray]], positive: Any) -> Draw:
    """Draw from per-column lists of drawn row arrays; positive(rows, column) -> bool targets."""
    rows = np.unique(np.concatenate([part for column in picks for part in column]))
    shape = (len(rows), len(picks))
    masks, held = np.zeros(shape, bool), np.zeros(shape, bool)
    targets = np.zeros(shape, np.int8)
    for j, column in enumerate(picks):
        for part in column:
            at = np.searchsorted(rows, part)
            masks[at, j] = True
            held[at[:len(at) // 3], j] = True
        targets[:, j] = positive(rows, j)
    return Draw(rows, masks, held, targets)


def draw_multilabel(labels: np.ndarray, classes: list[int], names: list[str], k: int, samples: int,
                    seed: int) -> Draw:
    """k positives (label 1) and (n_classes - 1) k negatives (label 0) per (sample, class)."""
    want = {1: k, 0: (labels.shape[1] - 1) * k}
    picks = [[_draw([seed, s, k, c, value], np.flatnonzero(labels[:, c] == value), want[value]) for value in (1, 0)]
             for s in range(samples) for c in classes]
    return _compress(picks, lambda rows, j: labels[rows, classes[j % len(classes)]] == 1)


def draw_multiclass(y: np.ndarray, classes: list[int], k: int, samples: int, seed: int) -> Draw:
    """k images per class and sample; column (s, c) trains on the whole sample s, c against the rest."""
    picks = []
    for s in range(samples):
        sample = [_draw([seed, s, k, c], np.flatnonzero(y == c), k) for c in classes]
        picks += [sample] * len(classes)
    return _compress(picks, lambda rows, j: y[rows] == classes[j % len(classes)])


@PROTOCOLS.register("lowshot")
class LowshotProtocol(Protocol):
    """k-shot linear SVMs (k = 1..96, 5 samples): mean/std/min/max test mAP per tap and k."""

    name = "lowshot"
    version = "1"
    Config = LowshotConfig
    default_dataset = "voc2007"
    default_taps = None
    needs = ("labels",)

    def metrics(self, config: LowshotConfig, dataset: Any) -> tuple[MetricSpec, ...]:
        """mean/std/min/max over samples of mAP (and top-1 on single-label data) per k; primary: mean mAP at max k."""
        names = ("mAP", "top1") if dataset.task == "multiclass" else ("mAP",)
        primary = f"mAP_k{max(config.ks)}_mean"
        return tuple(MetricSpec(f"{name}_k{k}_{stat}", higher_is_better=None if stat == "std" else True,
                                primary=f"{name}_k{k}_{stat}" == primary)
                     for name in names for k in config.ks for stat in ("mean", "std", "min", "max"))

    def run(self, ctx: RunContext, config: LowshotConfig) -> ProtocolResult:
        train_split, test_split = splits_of(ctx, config, self.name)
        grid, costs = resolve_costs(config.costs, config.custom_costs)
        keys = [(tap, k) for tap in ctx.taps for k in config.ks]
        pending_taps = list(dict.fromkeys(tap for tap, k in keys if f"k:{tap}:{k}" not in ctx.state))
        train = ctx.features(train_split, ())  # labels only: the features of just the drawn rows come below
        test = ctx.features(test_split, pending_taps or ctx.taps[:1])
        plan = self._plan(ctx, config, np.asarray(train.labels), np.asarray(test.labels), train_split, test_split)
        drawn = np.unique(np.concatenate([plan["draw"](k).rows for k in plan["ks"]]))
        if pending_taps:
            train = ctx.features(train_split, pending_taps, rows=drawn)
        for tap in ctx.progress(pending_taps, desc="lowshot taps", total=len(pending_taps)):
            X, _ = take_tap(train, tap, train_split, self.name, config.solver)
            Q, _ = take_tap(test, tap, test_split, self.name, config.solver)
            if X.shape[1] != Q.shape[1]:
                raise SslBenchError(f"lowshot: tap '{tap}' has {X.shape[1]} dims on the train split but "
                                    f"{Q.shape[1]} on the test split; clear the feature cache and rerun")
            for k in ctx.progress(plan["ks"], desc=f"lowshot {tap} k", total=len(plan["ks"])):
                if f"k:{tap}:{k}" not in ctx.state:
                    draw = plan["draw"](k)
                    ctx.state.put(f"k:{tap}:{k}", self._run_k(ctx, config, costs, plan, k, draw,
                                                               X[np.searchsorted(drawn, draw.rows)], Q))
            del train.features[tap], test.features[tap]
        metrics: dict[str, dict[str, float]] = {}
        per_k: dict[str, dict[str, Any]] = {}
        for tap in ctx.taps:
            metrics[tap], per_k[tap] = {}, {}
            for k in plan["ks"]:
                entry = ctx.state.get(f"k:{tap}:{k}")
                metrics[tap].update(entry["metrics"])
                per_k[tap][str(k)] = {key: v for key, v in entry.items() if key != "metrics"}
        details: dict[str, Any] = {
            "task": plan["task"],
            "cost_selected_on": config.select,
            "heldout": HELDOUT if config.select == "heldout" else None,
            **solver_details(config.solver),
            "cost_grid": grid,
            "costs": list(costs),
            "cost_tie_break": "first in grid order",
            "class_weight": {"1": config.pos_weight, "0": config.neg_weight},
            "tol": config.tol,
            "test_ap": "all-point interpolated AP, mean over classes, x100",
            "std": "over samples, ddof=0",
            "sampling": {"generator": SAMPLING, "sample_seed": config.sample_seed, "samples": config.samples,
                         "negatives": ("(n_classes - 1) * k images labelled 0 for the class"
                                       if plan["task"] == "multilabel" else "the other classes' sampled images")},
            "splits": {"train": train_split, "test": test_split},
            "classes": [plan["names"][c] for c in plan["classes"]],
            "skipped_classes": plan["skipped_classes"],
            "skipped_ks": plan["skipped_ks"],
            "clipped": plan["clipped"],
            "per_k": per_k,
        }
        return ProtocolResult(metrics, details)

    def _plan(self, ctx: RunContext, config: LowshotConfig, labels: np.ndarray, q_labels: np.ndarray,
              train_split: str, test_split: str) -> dict[str, Any]:
        """Label-only decisions shared by every tap: task, classes, ks, the draws."""
        if len(labels) == 0 or len(q_labels) == 0:
            empty = train_split if len(labels) == 0 else test_split
            raise SslBenchError(f"lowshot: split '{empty}' has no images; check --data-root and the split lists")
        plan: dict[str, Any] = {"skipped_classes": {}, "skipped_ks": {}, "clipped": {}}
        if labels.ndim == 2:
            plan["task"] = "multilabel"
            labels = check_multilabel(labels, train_split, self.name)
            q_labels = check_multilabel(q_labels, test_split, self.name)
            names = class_names(ctx, labels.shape[1])
            for c, name in enumerate(names):
                if not (labels[:, c] == 1).any():
                    plan["skipped_classes"][name] = "no positive image in the train split"
                elif not (labels[:, c] == 0).any():
                    plan["skipped_classes"][name] = "no negative image in the train split"
                elif not (q_labels[:, c] == 1).any():
                    plan["skipped_classes"][name] = "no positive image in the test split"
            classes = [c for c, name in enumerate(names) if name not in plan["skipped_classes"]]
            if not classes:
                raise SslBenchError("lowshot: no class has positive and negative train images and a positive test "
                                    "image; check --data-root and the split lists")
            plan["ks"] = list(config.ks)
            n_pos, n_neg = (labels[:, classes] == 1).sum(0), (labels[:, classes] == 0).sum(0)
            for k in plan["ks"]:
                short = {}
                for c, pos, neg in zip(classes, n_pos, n_neg):
                    counts = {**({"positives": int(pos)} if pos < k else {}),
                              **({"negatives": int(neg)} if neg < (len(names) - 1) * k else {})}
                    if counts:
                        short[names[c]] = counts
                if short:
                    plan["clipped"][str(k)] = short
            plan["draw"] = lambda k: draw_multilabel(labels, classes, names, k, config.samples, config.sample_seed)
            plan["eval_labels"] = q_labels[:, classes]
        else:
            plan["task"] = "multiclass"
            y, q_y = labels.astype(np.int64), q_labels.astype(np.int64)
            if y.ndim != 1 or q_y.ndim != 1 or y.min() < 0 or q_y.min() < 0:
                raise SslBenchError(f"lowshot: labels must be class indices >= 0 or multilabel (N, classes); got "
                                    f"shapes {labels.shape} and {q_labels.shape}")
            names = class_names(ctx, int(max(y.max(), q_y.max())) + 1)
            classes = sorted(set(y.tolist()))
            for c in sorted(set(range(len(names))) - set(classes)):
                plan["skipped_classes"][names[c]] = "no image in the train split"
            smallest = int(np.bincount(y)[classes].min())
            plan["ks"] = [k for k in config.ks if k <= smallest]
            plan["skipped_ks"] = {str(k): f"larger than the smallest class ({smallest} images)"
                                  for k in config.ks if k > smallest}
            if not plan["ks"]:
                raise SslBenchError(f"lowshot: every k in {list(config.ks)} is larger than the smallest class of "
                                    f"the train split ({smallest} images); pass --set ks=... with smaller values")
            plan["draw"] = lambda k: draw_multiclass(y, classes, k, config.samples, config.sample_seed)
            plan["eval_labels"] = (q_y[:, None] == np.asarray(classes)[None, :]).astype(np.int8)
            if not plan["eval_labels"].any():
                raise SslBenchError(f"lowshot: no image of split '{test_split}' belongs to a class of split "
                                    f"'{train_split}'; check the split lists")
            plan["test_y"] = q_y
        plan["names"], plan["classes"] = names, classes
        return plan

    def _run_k(self, ctx: RunContext, config: LowshotConfig, costs: tuple[float, ...], plan: dict[str, Any],
               k: int, draw: Draw, X: np.ndarray, Q: np.ndarray) -> dict[str, Any]:
        """Metrics and details of one (tap, k), JSON-ready (what resume stores); X holds draw.rows' features."""
        n_classes, S = len(plan["classes"]), config.samples
        multiclass = plan["task"] == "multiclass"
        test_map, test_top1 = np.zeros((S, len(costs))), np.zeros((S, len(costs)))
        class_ap = np.zeros((S, len(costs), n_classes))
        svm = self._fit(ctx, config, costs, X, draw.targets, draw.masks)
        classes = np.asarray(plan["classes"])
        for c in range(len(costs)):
            scores = scores_at(svm, Q, c)
            for s in range(S):
                block = scores[:, s * n_classes:(s + 1) * n_classes]
                test_map[s, c], class_ap[s, c] = mean_average_precision(block, plan["eval_labels"], "all_point")
                if multiclass:
                    test_top1[s, c] = np.mean(classes[block.argmax(1)] == plan["test_y"])
        selection = "test"
        heldout_by_cost = None
        if config.select == "heldout" and k >= 3:
            heldout_map = self._heldout(ctx, config, costs, X, draw, n_classes)
            if np.isfinite(heldout_map).any():
                selection = "heldout"
                heldout_by_cost = np.nanmean(heldout_map, axis=0)
        elif config.select == "heldout":
            selection = "test (k < 3: no held-out positive)"
        best = first_best(test_map.mean(0) if heldout_by_cost is None else heldout_by_cost)
        values = {"mAP": 100.0 * test_map[:, best]}
        if multiclass:
            values["top1"] = 100.0 * test_top1[:, best]
        metrics = {f"{name}_k{k}_{stat}": float(getattr(np, stat)(v))
                   for name, v in values.items() for stat in ("mean", "std", "min", "max")}
        return {
            "metrics": metrics,
            "cost": costs[best],
            "columns_over_liblinear_cap": int(svm.over_cap_[best].sum()),
            "cost_selected_on": selection,
            "test_mAP_by_cost": (100.0 * test_map.mean(0)).tolist(),
            "heldout_mAP_by_cost": None if heldout_by_cost is None else nan_to_none(100.0 * heldout_by_cost),
            "per_sample": {name: v.tolist() for name, v in values.items()},
            "class_ap_mean": {plan["names"][c]: 100.0 * float(np.mean(class_ap[:, best, i]))
                              for i, c in enumerate(plan["classes"]) if plan["eval_labels"][:, i].any()},
        }

    def _fit(self, ctx: RunContext, config: LowshotConfig, costs: tuple[float, ...], X: np.ndarray,
             targets: np.ndarray, masks: np.ndarray) -> Any:
        """One fit of every column; X, targets and masks hold only the drawn rows."""
        return make_svm(config, ctx, costs).fit(X, targets, masks)

    def _heldout(self, ctx: RunContext, config: LowshotConfig, costs: tuple[float, ...], X: np.ndarray,
                 draw: Draw, n_classes: int) -> np.ndarray:
        """Held-out mAP (samples, costs) of fits on the rest of each draw; NaN where a sample has no usable column.

        A column counts when its fit part has a positive and a negative and its held-out part a positive.
        """
        fit_masks = draw.masks & ~draw.held
        usable = ((fit_masks & (draw.targets == 1)).any(0) & (fit_masks & (draw.targets == 0)).any(0)
                  & (draw.held & (draw.targets == 1)).any(0))
        columns = np.flatnonzero(usable)
        result = np.full((config.samples, len(costs)), np.nan)
        if not len(columns):
            return result
        svm = self._fit(ctx, config, costs, X, draw.targets[:, columns], fit_masks[:, columns])
        for c in range(len(costs)):
            scores = scores_at(svm, X, c)
            aps: dict[int, list[float]] = {}
            for j, column in enumerate(columns):
                rows = draw.held[:, column]
                aps.setdefault(column // n_classes, []).append(
                    average_precision(scores[rows, j], draw.targets[rows, column], "all_point"))
            for sample, values in aps.items():
                result[sample, c] = np.mean(values)
        return result
