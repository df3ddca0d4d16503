"""VOC detection scoring as detectron2's PascalVOCDetectionEvaluator does it, and the devkit's comp4 files.

PROTOCOLS.md, detection. Per class, detections of every image sorted by
descending score (np.argsort(-score), as py-faster-rcnn's `voc_eval`); each
is matched to the ground-truth box of its image with the largest IoU (pixel
coordinates inclusive, hence the +1 in widths); IoU above the threshold with
a non-difficult box not yet taken is a true positive, with a difficult box it
is ignored, anything else a false positive. Difficult boxes do not count as
positives. AP is the VOC07 11-point interpolation at thresholds
np.arange(0.0, 1.1, 0.1) exactly (as floats several sit just above k/10), or
the all-point area (VOC2010+) on request. AP is the mean of the per-class
AP over IoU thresholds 0.50, 0.55, ..., 0.95 (detectron2's VOC "AP": the same
11-point AP at each threshold, not COCO's 101-point one); AP50 and AP75 are
the thresholds 0.5 and 0.75. Everything is vectorised: each detection's best
box and IoU are found once per class, then every threshold is a few array
operations, so VOC07 test's detections score in about a second.

Boxes here are VOC's: 1-based inclusive pixel coordinates (x1, y1, x2, y2),
as in the Annotations and in comp4 files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmark.errors import SslBenchError

IOU_THRESHOLDS = tuple(t / 100 for t in range(50, 100, 5))  # detectron2: thresh / 100 for thresh in range(50, 100, 5)
VOC07_RECALLS = np.arange(0.0, 1.1, 0.1)  # py-faster-rcnn voc_ap(use_07_metric=True), float quirks included
CONVENTION = ("detectron2 PascalVOCDetectionEvaluator / py-faster-rcnn voc_eval: inclusive +1 IoU, "
              "difficult ignored, VOC07 11-point AP at np.arange(0.0, 1.1, 0.1); AP = mean over IoU 0.50:0.95")


@dataclasses.dataclass
class GroundTruth:
    """Objects of the test images: per image, boxes (M, 4) 1-based inclusive, class indices (M,), difficult (M,)."""

    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    difficult: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.boxes)


@dataclasses.dataclass
class Detections:
    """Flat detections: image index (N,), class index (N,), score (N,), boxes (N, 4) 1-based inclusive."""

    image: np.ndarray
    label: np.ndarray
    score: np.ndarray
    boxes: np.ndarray

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros((0, 4)))

    @classmethod
    def concat(cls, parts: Sequence[Detections]) -> Detections:
        parts = [cls.empty(), *parts]
        return cls(np.concatenate([p.image for p in parts]).astype(np.int64),
                   np.concatenate([p.label for p in parts]).astype(np.int64),
                   np.concatenate([p.score for p in parts]).astype(np.float64),
                   np.concatenate([np.asarray(p.boxes, np.float64).reshape(-1, 4) for p in parts]))

    def __len__(self) -> int:
        return len(self.score)


@dataclasses.dataclass
class DetectionScores:
    """AP per class (x 100) per IoU threshold; NaN for a class without a non-difficult test object."""

    classes: list[str]
    thresholds: tuple[float, ...]
    ap: np.ndarray  # (n_thresholds, n_classes)
    positives: np.ndarray  # (n_classes,)
    interpolation: str

    def at(self, threshold: float) -> np.ndarray:
        return self.ap[self.thresholds.index(threshold)]

    def summary(self) -> dict[str, float]:
        """AP (mean over thresholds), AP50 and AP75, each the mean over classes that have positives."""
        scored = self.positives > 0
        per_threshold = self.ap[:, scored].mean(axis=1) if scored.any() else np.zeros(len(self.thresholds))
        out = {"AP": float(per_threshold.mean())}
        for name, threshold in (("AP50", 0.5), ("AP75", 0.75)):
            if threshold in self.thresholds:
                out[name] = float(per_threshold[self.thresholds.index(threshold)])
        return out

    def per_class(self) -> dict[str, dict[str, float | None]]:
        """{class: {AP, AP50, AP75}}; None for a class without positives (left out of the means)."""
        out: dict[str, dict[str, float | None]] = {}
        for c, name in enumerate(self.classes):
            if not self.positives[c]:
                out[name] = {"AP": None, "AP50": None, "AP75": None}
                continue
            column = self.ap[:, c]
            out[name] = {"AP": float(column.mean())}
            for metric, threshold in (("AP50", 0.5), ("AP75", 0.75)):
                if threshold in self.thresholds:
                    out[name][metric] = float(column[self.thresholds.index(threshold)])
        return out


def voc_ap(recall: np.ndarray, precision: np.ndarray, interpolation: str = "voc07") -> float:
    """AP of one precision/recall curve: VOC07 11-point (detectron2's thresholds) or all-point area."""
    if interpolation == "voc07":
        ap = 0.0
        for t in VOC07_RECALLS:
            reached = recall >= t
            ap += (precision[reached].max() if reached.any() else 0.0) / 11.0
        return float(ap)
    if interpolation != "all_point":
        raise ValueError(f"interpolation: expected voc07 or all_point, got {interpolation!r}")
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changed = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[changed + 1] - mrec[changed]) * mpre[changed + 1]))


def best_overlaps(boxes: np.ndarray, image: np.ndarray, gt_boxes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """For each detection, the largest inclusive-pixel IoU with a box of its image and that box's index.

    -inf and -1 where its image has no box (voc_eval's ovmax = -inf). Ties go to the
    first box, as np.argmax in voc_eval.
    """
    n = len(boxes)
    most = max((len(b) for b in gt_boxes), default=0)
    if n == 0 or most == 0:
        return np.full(n, -np.inf), np.full(n, -1, dtype=np.int64)
    padded = np.zeros((len(gt_boxes), most, 4))
    valid = np.zeros((len(gt_boxes), most), dtype=bool)
    for i, b in enumerate(gt_boxes):
        padded[i, :len(b)] = b
        valid[i, :len(b)] = True
    gt, ok = padded[image], valid[image]  # (N, G, 4), (N, G)
    d = boxes[:, None, :]
    iw = np.maximum(np.minimum(gt[..., 2], d[..., 2]) - np.maximum(gt[..., 0], d[..., 0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(gt[..., 3], d[..., 3]) - np.maximum(gt[..., 1], d[..., 1]) + 1.0, 0.0)
    inter = iw * ih
    union = ((d[..., 2] - d[..., 0] + 1.0) * (d[..., 3] - d[..., 1] + 1.0)
             + (gt[..., 2] - gt[..., 0] + 1.0) * (gt[..., 3] - gt[..., 1] + 1.0) - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(ok, inter / union, -np.inf)
    best = iou.argmax(axis=1)
    overlap = iou[np.arange(n), best]
    return overlap, np.where(np.isfinite(overlap), best, -1)


def score_class(detections: Detections, truth: GroundTruth, c: int, thresholds: Sequence[float],
                interpolation: str = "voc07") -> tuple[np.ndarray, int]:
    """AP (fraction, one per threshold) of class c and its number of non-difficult objects."""
    gt_boxes = [b[l == c] for b, l in zip(truth.boxes, truth.labels)]
    gt_difficult = [d[l == c] for d, l in zip(truth.difficult, truth.labels)]
    positives = int(sum((~d).sum() for d in gt_difficult))
    mine = np.flatnonzero(detections.label == c)
    order = mine[np.argsort(-detections.score[mine])]
    image = detections.image[order]
    overlap, box = best_overlaps(detections.boxes[order], image, gt_boxes)
    offsets = np.concatenate(([0], np.cumsum([len(b) for b in gt_boxes])))
    flat_difficult = np.concatenate([np.zeros(0, bool), *gt_difficult])
    key = np.where(box >= 0, offsets[image] + box, -1)  # a global id of the matched box
    hits_difficult = np.zeros(len(order), dtype=bool)
    hits_difficult[box >= 0] = flat_difficult[key[box >= 0]]
    aps = np.zeros(len(thresholds))
    for k, threshold in enumerate(thresholds):
        above = overlap > threshold
        candidate = above & ~hits_difficult
        tp = np.zeros(len(order))
        where = np.flatnonzero(candidate)
        _, first = np.unique(key[where], return_index=True)  # the first (highest-scored) claim on each box wins
        tp[where[first]] = 1.0
        fp = (~above | (candidate & (tp == 0))).astype(np.float64)
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        if positives == 0:
            continue
        recall = tp / positives
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps[k] = voc_ap(recall, precision, interpolation)
    return aps, positives


def score_detections(detections: Detections, truth: GroundTruth, classes: Sequence[str],
                     thresholds: Sequence[float] = IOU_THRESHOLDS, interpolation: str = "voc07") -> DetectionScores:
    """Per-class AP (x 100) at every IoU threshold over all test images."""
    if len(detections) and (detections.image.min() < 0 or detections.image.max() >= len(truth)):
        raise ValueError("detections name images outside the ground truth")
    ap = np.zeros((len(thresholds), len(classes)))
    positives = np.zeros(len(classes), dtype=np.int64)
    for c in range(len(classes)):
        values, positives[c] = score_class(detections, truth, c, thresholds, interpolation)
        ap[:, c] = np.nan if positives[c] == 0 else 100.0 * values
    return DetectionScores(list(classes), tuple(thresholds), ap, positives, interpolation)


# ---------------------------------------------------------------- comp4 files (VOC devkit results format)

def comp4_name(class_name: str) -> str:
    return f"comp4_det_test_{class_name}.txt"


def write_comp4(folder: Path, detections: Detections, image_ids: Sequence[str], classes: Sequence[str]) -> list[Path]:
    """One `comp4_det_test_<class>.txt` per class: '<image id> <score> <x1> <y1> <x2> <y2>' per line.

    Boxes are 1-based inclusive pixel coordinates; precision as detectron2 writes
    them (score to 3 decimals, coordinates to 1), in image order then score order.
    Returns the paths written (every class gets a file, possibly empty).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    order = np.lexsort((-detections.score, detections.image))
    for c, name in enumerate(classes):
        rows = order[detections.label[order] == c]
        lines = [f"{image_ids[detections.image[i]]} {detections.score[i]:.3f} "
                 + " ".join(f"{v:.1f}" for v in detections.boxes[i]) + "\n" for i in rows]
        path = folder / comp4_name(name)
        path.write_text("".join(lines))
        paths.append(path)
    return paths


def read_comp4(folder: Path, image_ids: Sequence[str], classes: Sequence[str]) -> Detections:
    """Detections from comp4 files (a missing class file means no detections of that class)."""
    where = {image_id: i for i, image_id in enumerate(image_ids)}
    parts = []
    for c, name in enumerate(classes):
        path = Path(folder) / comp4_name(name)
        if not path.is_file():
            continue
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
        bad = next((k for k, row in enumerate(rows, 1) if len(row) != 6 or row[0] not in where), None)
        if bad is not None:
            raise SslBenchError(f"{path}:{bad}: expected '<test image id> <score> <x1> <y1> <x2> <y2>'")
        values = np.asarray([row[1:] for row in rows], dtype=np.float64).reshape(-1, 5)
        parts.append(Detections(np.asarray([where[row[0]] for row in rows], dtype=np.int64),
                                np.full(len(rows), c, dtype=np.int64), values[:, 0], values[:, 1:]))
    return Detections.concat(parts)
