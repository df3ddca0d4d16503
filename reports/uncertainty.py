"""Bootstrap 95% intervals and paired bootstrap tests over test images.

Two kinds of per-image evidence, both in the records' units (x100):

- `Correctness`: 0/1 per test image (kNN top-1). Resampling N images with
  replacement and counting the correct ones is exactly a Binomial(N, p) draw,
  and resampling pairs of two aligned arrays is a Multinomial over the four
  (right/wrong, right/wrong) cells, so both are drawn directly: O(n_boot).
- `Ranking`: scores and labels (N, C), -1 = left out for that class (VOC07
  mAP). A resample is a vector of counts per image; mAP is computed from the
  counts on the rows sorted once per class (vectorised over resamples), which
  equals `protocols.metrics.mean_average_precision` on the resampled rows.

Intervals are percentile intervals. `paired_bootstrap_pvalue(best, other)` is
the one-sided p-value of "other is worse than best": the share of resamples
(the same images for both) in which other is at least as good as best, with
the usual +1 correction, (1 + #{other* >= best*}) / (n_boot + 1). A
`Bootstrap` object shares resamples and caches statistics across many calls
(what the tables use); the functions are one-off shortcuts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy import sparse

N_BOOT = 1000
SEED = 0
ALPHA = 0.05
CHUNK = 200  # resamples per vectorised mAP step: bounds memory to CHUNK x N counts


@dataclasses.dataclass(frozen=True)
class Correctness:
    """Per-image 0/1 correctness (accuracy x100); pairs with another when dataset and ids agree."""

    correct: np.ndarray
    dataset_digest: str | None = None
    ids: tuple[str, ...] | None = None

    def point(self) -> float:
        return 100.0 * float(np.mean(self.correct))


@dataclasses.dataclass(frozen=True)
class Ranking:
    """Per-image class scores and labels (N, C) with 1/0 and -1 left out (mAP x100, all-point AP)."""

    scores: np.ndarray
    labels: np.ndarray
    dataset_digest: str | None = None
    ids: tuple[str, ...] | None = None

    def point(self) -> float:
        return float(weighted_map(self.scores, self.labels, np.ones((1, len(self.scores))))[0])


Evidence = Correctness | Ranking


def correctness(correct: Any, dataset_digest: str | None = None, ids: Any = None) -> Correctness:
    """Checked Correctness from a 0/1 sequence."""
    array = np.asarray(correct)
    if array.ndim != 1 or len(array) == 0 or not np.isin(array, (0, 1)).all():
        raise ValueError(f"correctness: expected a non-empty 1-D array of 0/1, got shape {array.shape}")
    return Correctness(array.astype(bool), dataset_digest, None if ids is None else tuple(ids))


def ranking(scores: Any, labels: Any, dataset_digest: str | None = None, ids: Any = None) -> Ranking:
    """Checked Ranking from (N, C) scores and labels in {1, 0, -1}."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape or len(scores) == 0:
        raise ValueError(f"ranking: expected scores and labels of one (N, C) shape, got {scores.shape}, {labels.shape}")
    if not np.isin(labels, (-1, 0, 1)).all() or not np.isfinite(scores).all():
        raise ValueError("ranking: labels must be 1, 0 or -1 and scores finite")
    return Ranking(scores, labels.astype(np.int8), dataset_digest, None if ids is None else tuple(ids))


def aligned(a: Evidence, b: Evidence) -> bool:
    """True when a and b are of one kind over the same test images, so they can be paired."""
    if type(a) is not type(b) or a.dataset_digest != b.dataset_digest:
        return False
    if isinstance(a, Ranking) and a.labels.shape[1] != b.labels.shape[1]:
        return False
    size = len(a.correct) if isinstance(a, Correctness) else len(a.scores)
    other = len(b.correct) if isinstance(b, Correctness) else len(b.scores)
    if size != other:
        return False
    return a.ids is None or b.ids is None or a.ids == b.ids


class Bootstrap:
    """Bootstrap statistics over test images, seeded, with resamples shared by every evidence it is given.

    Correctness: intervals from Binomial draws, paired tests from Multinomial
    draws over the four joint cells (both exact, O(n_boot)). Ranking: one set
    of resampled image counts per number of images, shared by all rankings of
    that size, so the statistics of each ranking are computed once and every
    paired test compares two cached vectors of the same resamples. Cost per
    ranking: about N x C x n_boot additions.
    """

    def __init__(self, n_boot: int = N_BOOT, seed: int = SEED) -> None:
        self.n_boot, self.seed = n_boot, seed
        self._counts: dict[int, list[np.ndarray]] = {}
        self._stats: dict[int, tuple[Ranking, np.ndarray]] = {}

    def interval(self, evidence: Evidence, level: float = 0.95) -> tuple[float, float]:
        """Percentile interval of the metric (x100)."""
        if isinstance(evidence, Correctness):
            n = len(evidence.correct)
            rng = np.random.default_rng(self.seed)
            stats = 100.0 * rng.binomial(n, float(np.mean(evidence.correct)), size=self.n_boot) / n
        else:
            stats = self.ranking_stats(evidence)
        tail = 100.0 * (1.0 - level) / 2.0
        lo, hi = np.nanpercentile(stats, [tail, 100.0 - tail])
        return float(lo), float(hi)

    def pvalue(self, best: Evidence, other: Evidence) -> float:
        """One-sided p-value that other is worse than best: (1 + #{other* >= best*}) / (n_boot + 1)."""
        if not aligned(best, other):
            raise ValueError("paired bootstrap needs two evidences of one kind over the same test images")
        if isinstance(best, Correctness):
            a, b = best.correct, other.correct
            cells = np.array([np.sum(a & ~b), np.sum(~a & b)], dtype=np.float64)
            others = len(a) - cells.sum()
            draws = np.random.default_rng(self.seed).multinomial(
                len(a), np.r_[cells, others] / len(a), size=self.n_boot)
            at_least_as_good = draws[:, 1] >= draws[:, 0]  # other right where best is wrong >= the reverse
        else:
            at_least_as_good = self.ranking_stats(other) >= self.ranking_stats(best)
        return float((1 + np.sum(at_least_as_good)) / (self.n_boot + 1))

    def ranking_stats(self, evidence: Ranking) -> np.ndarray:
        """mAP x100 of every resample (n_boot,), computed once per ranking."""
        cached = self._stats.get(id(evidence))
        if cached is None or cached[0] is not evidence:
            plan = MapPlan(evidence.scores, evidence.labels)
            cached = (evidence, np.concatenate([plan(counts) for counts in self._resamples(len(evidence.scores))]))
            self._stats[id(evidence)] = cached
        return cached[1]

    def _resamples(self, n: int) -> list[np.ndarray]:
        """Chunks of (n, b) float32 counts: how often each image is drawn in each resample of n images."""
        if n not in self._counts:
            rng, chunks = np.random.default_rng(self.seed), []
            for start in range(0, self.n_boot, CHUNK):
                b = min(CHUNK, self.n_boot - start)
                picks = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
                counts = np.bincount(picks.ravel(), minlength=b * n).reshape(b, n)
                chunks.append(np.ascontiguousarray(counts.T, dtype=np.float32))
            self._counts[n] = chunks
        return self._counts[n]


def bootstrap_interval(evidence: Evidence, n_boot: int = N_BOOT, seed: int = SEED,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the metric (x100), resampling test images with replacement."""
    return Bootstrap(n_boot, seed).interval(evidence, level)


def paired_bootstrap_pvalue(best: Evidence, other: Evidence, n_boot: int = N_BOOT, seed: int = SEED) -> float:
    """One-sided p-value that other is worse than best, resampling the same images for both."""
    return Bootstrap(n_boot, seed).pvalue(best, other)


def not_significantly_worse(best: Evidence, other: Evidence, alpha: float = ALPHA, n_boot: int = N_BOOT,
                            seed: int = SEED) -> bool:
    """True when the paired bootstrap cannot tell other is worse than best (p > alpha)."""
    return paired_bootstrap_pvalue(best, other, n_boot, seed) > alpha


class MapPlan:
    """What mAP needs of the rows of one (scores, labels), sorted once: evaluates any resample by its counts.

    All-point AP changes only where recall does, so only the ends of the tie
    groups that hold a positive matter: per class, the images are cut into
    segments ending at those groups. The counts of a resample summed per
    segment (one sparse product for all classes) give the true positives and
    the images seen at each such threshold.
    """

    def __init__(self, scores: np.ndarray, labels: np.ndarray) -> None:
        rows, seen_cols, tp_rows, tp_cols, self.spans = [], [], [], [], []
        width = 0
        for c in range(scores.shape[1]):
            keep = np.flatnonzero(labels[:, c] != -1)
            order = keep[np.argsort(-scores[keep, c], kind="stable")]
            positive = labels[order, c] == 1
            if not positive.any():
                continue
            ends = np.r_[np.flatnonzero(np.diff(scores[order, c])), len(order) - 1]
            group = np.searchsorted(ends, np.arange(len(order)))  # tie group of each sorted row
            closing = np.unique(group[positive])  # groups holding a positive, in rank order
            segment = np.searchsorted(closing, group)  # rows after the last such group fall off the end
            inside = segment < len(closing)
            rows.append(order[inside])
            seen_cols.append(width + segment[inside])
            tp_rows.append(order[inside & positive])
            tp_cols.append(width + len(closing) + segment[inside & positive])
            self.spans.append((width, len(closing)))
            width += 2 * len(closing)
        self.n_images, self.n_classes = scores.shape
        all_rows = np.concatenate(rows + tp_rows) if rows else np.zeros(0, dtype=np.int64)
        all_cols = np.concatenate(seen_cols + tp_cols) if rows else np.zeros(0, dtype=np.int64)
        self.segments = sparse.csr_matrix((np.ones(len(all_rows), dtype=np.float32), (all_cols, all_rows)),
                                          shape=(width, self.n_images))

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """mAP x100 for each column of counts (N, B); NaN where a resample has no positive in any class.

        float32 counts and sums are exact (integers below 2**24).
        """
        sums = self.segments @ np.ascontiguousarray(counts, dtype=np.float32)
        aps = np.full((sums.shape[1], self.n_classes), np.nan)
        for c, (start, size) in enumerate(self.spans):
            seen = np.cumsum(sums[start:start + size], axis=0, dtype=np.float64)
            tp = np.cumsum(sums[start + size:start + 2 * size], axis=0, dtype=np.float64)
            positives = tp[-1:]
            precision = np.divide(tp, seen, out=np.zeros_like(tp), where=seen > 0)
            recall = np.divide(tp, positives, out=np.zeros_like(tp), where=positives > 0)
            envelope = np.maximum.accumulate(precision[::-1], axis=0)[::-1]
            ap = np.sum(np.diff(recall, axis=0, prepend=0.0) * envelope, axis=0)
            aps[:, c] = np.where(positives[0] > 0, ap, np.nan)
        valid = ~np.isnan(aps)
        return 100.0 * np.where(valid.any(1), np.nansum(aps, axis=1) / np.maximum(valid.sum(1), 1), np.nan)


def weighted_map(scores: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """mAP x100 (all-point AP, mean over classes with a positive) for each row of counts (B, N).

    Row i of counts says how many times each image is in resample i; the result
    equals mean_average_precision on the resampled rows (ties are one threshold).
    """
    return MapPlan(np.asarray(scores, dtype=np.float64), np.asarray(labels))(np.asarray(counts).T)


def evidence_for(record: dict[str, Any], tap: str, metric: str) -> Evidence | None:
    """The per-image evidence a record keeps for (tap, metric), or None.

    Read by shape, not by protocol name: details.per_image[tap] = {k, correct_top1}
    backs top1_k{k}; details.per_image = {tap, scores, labels, ids} (one dict of
    per-class lists each) backs mAP of that tap.
    """
    per_image = (record.get("details") or {}).get("per_image")
    digest = record.get("dataset", {}).get("digest")
    if not isinstance(per_image, dict):
        return None
    entry = per_image.get(tap)
    if isinstance(entry, dict) and "correct_top1" in entry and metric == f"top1_k{entry.get('k')}":
        return correctness(entry["correct_top1"], digest, entry.get("ids"))
    if per_image.get("tap") == tap and metric == "mAP" and isinstance(per_image.get("scores"), dict):
        classes = list(per_image["scores"])
        scores = np.array([per_image["scores"][c] for c in classes], dtype=np.float64).T
        labels = np.array([per_image["labels"][c] for c in classes]).T
        return ranking(scores, labels, digest, per_image.get("ids"))
    return None
