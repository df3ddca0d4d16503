"""Bootstrap 95% intervals and paired bootstrap tests over test images.

Two kinds of per-image evidence, both in the records' units (x100):

- `Correctness`: 0/1 per test image (kNN top-1 accuracy).
- `Ranking`: scores and labels (N, C), -1 = left out for that class (VOC07
  mAP, all-point AP, mean over classes with a positive).

Every statistic is computed on one shared set of resamples: for a seed,
n_boot and number of images N, the resamples are fixed (`SCHEME` names how
they are drawn), so the bootstrap vector of one record can be computed once,
stored beside the record (`precompute`, called by the runner) and compared
later, resample by resample, with that of any other record over the same test
images. A resample is a vector of counts per image; accuracy is a dot product
with the counts and mAP is computed from the counts on the rows sorted once
per class (`MapPlan`), which equals `protocols.metrics.mean_average_precision`
on the resampled rows.

Intervals are BCa intervals (`benchmark.bca`): the percentiles of the
statistics corrected for their bias against the point value (mAP on small test
sets: repeated images raise AP) and for skew, with the acceleration from the
jackknife (leave one image out), which records store beside the statistics.
`Bootstrap.pvalue(best, other)` is the
one-sided p-value of "other is worse than best": the share of resamples in
which other is at least as good as best, with the usual +1 correction,
(1 + #{other* >= best*}) / (n_boot + 1).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import sparse

from benchmark.bca import acceleration, bca_interval

N_BOOT = 1000
SEED = 0
ALPHA = 0.05
CHUNK = 200  # resamples per vectorised step: bounds memory to CHUNK x N counts
SCHEME = "image-counts-pcg64-v1"  # how resamples are drawn; stored statistics of another scheme are recomputed


@dataclasses.dataclass(frozen=True)
class Pairing:
    """What two evidences must share to be paired: kind, test set, image count, classes and image ids."""

    kind: str
    dataset_digest: str | None
    n_images: int
    n_classes: int = 1
    ids_digest: str | None = None

    def matches(self, other: Pairing) -> bool:
        same = (self.kind, self.dataset_digest, self.n_images, self.n_classes) == (
            other.kind, other.dataset_digest, other.n_images, other.n_classes)
        return same and (self.ids_digest is None or other.ids_digest is None or self.ids_digest == other.ids_digest)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], dataset_digest: str | None) -> Pairing:
        return cls(str(data["kind"]), dataset_digest, int(data["n_images"]), int(data.get("n_classes", 1)),
                   data.get("ids_digest"))


def ids_digest(ids: Any) -> str | None:
    """sha256 of the test image ids in order (None when a record keeps no ids)."""
    if ids is None:
        return None
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()


@dataclasses.dataclass(frozen=True, eq=False)
class Correctness:
    """Per-image 0/1 correctness (accuracy x100)."""

    correct: np.ndarray
    dataset_digest: str | None = None
    ids: tuple[str, ...] | None = None

    def point(self) -> float:
        return 100.0 * float(np.mean(self.correct))

    @functools.cached_property
    def acceleration(self) -> float:
        """BCa's acceleration from the leave-one-out accuracies (closed form)."""
        n = len(self.correct)
        correct = self.correct.astype(np.float64)
        return acceleration(100.0 * (correct.sum() - correct) / (n - 1)) if n > 1 else 0.0

    @functools.cached_property
    def pairing(self) -> Pairing:
        return Pairing("correctness", self.dataset_digest, len(self.correct), 1, ids_digest(self.ids))


@dataclasses.dataclass(frozen=True, eq=False)
class Ranking:
    """Per-image class scores and labels (N, C) with 1/0 and -1 left out (mAP x100, all-point AP)."""

    scores: np.ndarray
    labels: np.ndarray
    dataset_digest: str | None = None
    ids: tuple[str, ...] | None = None

    @functools.cached_property
    def plan(self) -> MapPlan:
        """The rows sorted once per class, shared by the point value and every resample."""
        return MapPlan(self.scores, self.labels)

    def point(self) -> float:
        return float(self.plan(np.ones((len(self.scores), 1), dtype=np.float32))[0])

    @functools.cached_property
    def acceleration(self) -> float:
        """BCa's acceleration from the leave-one-out mAPs, CHUNK images at a time (about N / n_boot resamplings)."""
        n, values = len(self.scores), []
        for start in range(0, n, CHUNK):
            b = min(CHUNK, n - start)
            counts = np.ones((n, b), dtype=np.float32)
            counts[start + np.arange(b), np.arange(b)] = 0.0
            values.append(self.plan(counts))
        return acceleration(np.concatenate(values))

    @functools.cached_property
    def pairing(self) -> Pairing:
        return Pairing("ranking", self.dataset_digest, len(self.scores), self.labels.shape[1], ids_digest(self.ids))


@dataclasses.dataclass(frozen=True, eq=False)
class Resampled:
    """Statistics already computed on the shared resamples of (n_boot, seed, scheme): what records store.

    acceleration is None in records made before BCa intervals; their intervals use 0 (bias-corrected only).
    """

    pairing: Pairing
    value: float
    stats: np.ndarray
    n_boot: int
    seed: int
    scheme: str = SCHEME
    acceleration: float | None = None

    def point(self) -> float:
        return self.value


Evidence = Correctness | Ranking | Resampled
EVIDENCE = (Correctness, Ranking, Resampled)


def correctness(correct: Any, dataset_digest: str | None = None, ids: Any = None) -> Correctness:
    """Checked Correctness from a 0/1 sequence."""
    array = np.asarray(correct)
    if array.ndim != 1 or len(array) == 0 or not np.isin(array, (0, 1)).all():
        raise ValueError(f"correctness: expected a non-empty 1-D array of 0/1, got shape {array.shape}")
    return Correctness(array.astype(bool), dataset_digest, None if ids is None else tuple(map(str, ids)))


def unpack_correct(bits: Any, n_images: Any) -> np.ndarray:
    """The 0/1 correctness of n_images images from its np.packbits form; ValueError when the sizes disagree."""
    bits = np.asarray(bits)
    size_ok = isinstance(n_images, int) and n_images > 0 and bits.shape == (-(-n_images // 8),)
    if not size_ok or not np.issubdtype(bits.dtype, np.integer) or bits.min() < 0 or bits.max() > 255:
        raise ValueError(f"packed correctness of {n_images!r} images: expected {n_images!r}/8 bytes (0..255) "
                         f"rounded up, got shape {bits.shape} of {bits.dtype}")
    return np.unpackbits(bits.astype(np.uint8), count=n_images)


def ranking(scores: Any, labels: Any, dataset_digest: str | None = None, ids: Any = None) -> Ranking:
    """Checked Ranking from (N, C) scores and labels in {1, 0, -1}."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape or len(scores) == 0:
        raise ValueError(f"ranking: expected scores and labels of one (N, C) shape, got {scores.shape}, {labels.shape}")
    if not np.isin(labels, (-1, 0, 1)).all() or not np.isfinite(scores).all():
        raise ValueError("ranking: labels must be 1, 0 or -1 and scores finite")
    return Ranking(scores, labels.astype(np.int8), dataset_digest, None if ids is None else tuple(map(str, ids)))


def aligned(a: Evidence, b: Evidence) -> bool:
    """True when a and b are of one kind over the same test images, so they can be paired."""
    return a.pairing.matches(b.pairing)


class Bootstrap:
    """Bootstrap statistics over test images on resamples shared by every evidence it is given.

    One set of resampled image counts per number of images N, drawn in order
    from one seeded generator (the same for every N), so the statistics of an
    evidence are computed once (cached) and every paired test compares two
    vectors of the same resamples. Stored statistics (`Resampled`) are used
    as they are when their n_boot, seed and scheme are this bootstrap's.
    Cost per evidence: about N x C x n_boot additions.
    """

    def __init__(self, n_boot: int = N_BOOT, seed: int = SEED) -> None:
        self.n_boot, self.seed = n_boot, seed
        self._counts: dict[int, list[np.ndarray]] = {}
        self._stats: dict[int, tuple[Evidence, np.ndarray]] = {}

    def interval(self, evidence: Evidence, level: float = 0.95) -> tuple[float, float]:
        """BCa interval of the metric (x100), see benchmark.bca."""
        return bca_interval(self.statistics(evidence), evidence.point(), evidence.acceleration or 0.0, level)

    def pvalue(self, best: Evidence, other: Evidence) -> float:
        """One-sided p-value that other is worse than best: (1 + #{other* >= best*}) / (n_boot + 1)."""
        if not aligned(best, other):
            raise ValueError("paired bootstrap needs two evidences of one kind over the same test images")
        at_least_as_good = self.statistics(other) >= self.statistics(best)
        return float((1 + np.sum(at_least_as_good)) / (self.n_boot + 1))

    def statistics(self, evidence: Evidence) -> np.ndarray:
        """The metric (x100) on every resample, (n_boot,); computed once per evidence."""
        if isinstance(evidence, Resampled):
            if (evidence.n_boot, evidence.seed, evidence.scheme) != (self.n_boot, self.seed, SCHEME):
                raise ValueError(f"stored statistics of n_boot={evidence.n_boot}, seed={evidence.seed}, "
                                 f"scheme={evidence.scheme} cannot pair with n_boot={self.n_boot}, seed={self.seed}")
            return evidence.stats
        cached = self._stats.get(id(evidence))
        if cached is None or cached[0] is not evidence:
            cached = (evidence, self._compute(evidence))
            self._stats[id(evidence)] = cached
        return cached[1]

    def resampled(self, evidence: Correctness | Ranking) -> Resampled:
        """The evidence's statistics in the form records store."""
        return Resampled(evidence.pairing, evidence.point(), self.statistics(evidence), self.n_boot, self.seed,
                         acceleration=evidence.acceleration)

    def _compute(self, evidence: Correctness | Ranking) -> np.ndarray:
        chunks = self._resamples(evidence.pairing.n_images)
        if isinstance(evidence, Correctness):
            correct = evidence.correct.astype(np.float32)
            return np.concatenate([100.0 * (correct @ counts).astype(np.float64) / len(correct)
                                   for counts in chunks])
        return np.concatenate([evidence.plan(counts) for counts in chunks])

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
    """BCa bootstrap interval of the metric (x100), resampling test images with replacement."""
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


def evidence_for(record: dict[str, Any], tap: str, metric: str,
                 array: Callable[[Any], np.ndarray] = np.asarray) -> Correctness | Ranking | None:
    """The per-image evidence a record keeps for (tap, metric), or None.

    Read by shape, not by protocol name: details.per_image[tap] = {n_images,
    correct_bits: {metric: uint8}} backs each metric it names (np.packbits of
    the 0/1 correctness, kNN); {k, correct_top1} (kNN before packed bits)
    backs top1_k{k}; {metric, correct} backs that metric; details.per_image =
    {tap, scores, labels, ids} (one dict of per-class arrays each) backs mAP of
    that tap. `array` turns a stored value (a list, an array, or a reference
    into the record's side file) into an array.
    """
    per_image = (record.get("details") or {}).get("per_image")
    digest = record.get("dataset", {}).get("digest")
    if not isinstance(per_image, dict):
        return None
    entry = per_image.get(tap)
    if isinstance(entry, dict) and isinstance(entry.get("correct_bits"), dict) and metric in entry["correct_bits"]:
        return correctness(unpack_correct(array(entry["correct_bits"][metric]), entry["n_images"]), digest)
    if isinstance(entry, dict) and "correct" in entry and metric == entry.get("metric"):
        ids = entry.get("ids")
        return correctness(array(entry["correct"]), digest, None if ids is None else array(ids))
    if isinstance(entry, dict) and "correct_top1" in entry and metric == f"top1_k{entry.get('k')}":
        ids = entry.get("ids")
        return correctness(array(entry["correct_top1"]), digest, None if ids is None else array(ids))
    if per_image.get("tap") == tap and metric == "mAP" and isinstance(per_image.get("scores"), dict):
        classes = list(per_image["scores"])
        scores = np.stack([array(per_image["scores"][c]) for c in classes], axis=1).astype(np.float64)
        labels = np.stack([array(per_image["labels"][c]) for c in classes], axis=1)
        ids = per_image.get("ids")
        return ranking(scores, labels, digest, None if ids is None else array(ids))
    return None


def precompute(record: dict[str, Any], n_boot: int = N_BOOT, seed: int = SEED) -> dict[str, Any] | None:
    """The record's bootstrap block: statistics of every (tap, metric) it keeps per-image evidence for.

    {n_boot, seed, scheme, entries: {tap: {metric: {value, pairing, stats, acceleration}}}}, with
    stats an (n_boot,) array and acceleration BCa's a; None when the record keeps no per-image evidence.
    """
    bootstrap = Bootstrap(n_boot, seed)
    entries: dict[str, dict[str, Any]] = {}
    for tap, values in record["metrics"].items():
        for metric in values:
            found = evidence_for(record, tap, metric)
            if found is not None:
                stored = bootstrap.resampled(found)
                entries.setdefault(tap, {})[metric] = {"value": stored.value, "pairing": stored.pairing.to_json(),
                                                       "stats": stored.stats, "acceleration": stored.acceleration}
    if not entries:
        return None
    return {"n_boot": n_boot, "seed": seed, "scheme": SCHEME, "entries": entries}


def stored_statistics(record: dict[str, Any], tap: str, metric: str, n_boot: int, seed: int,
                      array: Callable[[Any], np.ndarray] = np.asarray) -> Resampled | None:
    """The statistics the record stores for (tap, metric) on the resamples of (n_boot, seed), or None."""
    block = record.get("bootstrap")
    if not isinstance(block, dict) or (block.get("n_boot"), block.get("seed"), block.get("scheme")) != (
            n_boot, seed, SCHEME):
        return None
    entries = block.get("entries")
    by_metric = entries.get(tap) if isinstance(entries, dict) else None
    entry = by_metric.get(metric) if isinstance(by_metric, dict) else None
    if not isinstance(entry, dict):
        return None
    stats = np.asarray(array(entry["stats"]), dtype=np.float64)
    if stats.shape != (n_boot,):
        raise ValueError(f"stored bootstrap statistics of {tap}/{metric} have shape {stats.shape}, not ({n_boot},)")
    pairing = Pairing.from_json(entry["pairing"], record.get("dataset", {}).get("digest"))
    accel = entry.get("acceleration")
    return Resampled(pairing, float(entry["value"]), stats, n_boot, seed,
                     acceleration=float(accel) if isinstance(accel, (int, float)) else None)
