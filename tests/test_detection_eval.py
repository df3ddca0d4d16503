"""VOC detection scoring against an independent loop over py-faster-rcnn's voc_eval definition, and hand cases.

pycocotools and torchmetrics are not installed (and their AP differs by
definition: 101-point interpolation, no +1 in box sizes), so the reference
here is a plain re-statement of voc_eval / voc_ap (use_07_metric=True), one
detection at a time.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.errors import SslBenchError
from protocols.voc_detection_eval import (IOU_THRESHOLDS, Detections, GroundTruth, read_comp4, score_detections,
                                          voc_ap, write_comp4)

CLASSES = ["cat", "dog", "cow"]


def reference_voc_eval(truth: GroundTruth, dets: Detections, c: int, ovthresh: float, use_07: bool = True) -> float:
    """py-faster-rcnn voc_eval + voc_ap, statement by statement (loops, no vectorisation)."""
    recs = {}
    npos = 0
    for i in range(len(truth)):
        keep = truth.labels[i] == c
        recs[i] = {"bbox": truth.boxes[i][keep], "difficult": truth.difficult[i][keep],
                   "det": [False] * int(keep.sum())}
        npos += int((~truth.difficult[i][keep]).sum())
    mine = np.flatnonzero(dets.label == c)
    confidence = dets.score[mine]
    sorted_ind = np.argsort(-confidence)
    bb_all = dets.boxes[mine][sorted_ind]
    image_ids = dets.image[mine][sorted_ind]
    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        r = recs[image_ids[d]]
        bb = bb_all[d]
        ovmax = -np.inf
        bbgt = r["bbox"]
        if bbgt.size > 0:
            ixmin = np.maximum(bbgt[:, 0], bb[0])
            iymin = np.maximum(bbgt[:, 1], bb[1])
            ixmax = np.minimum(bbgt[:, 2], bb[2])
            iymax = np.minimum(bbgt[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (bbgt[:, 2] - bbgt[:, 0] + 1.0) * (bbgt[:, 3] - bbgt[:, 1] + 1.0) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not r["difficult"][jmax]:
                if not r["det"][jmax]:
                    tp[d] = 1.0
                    r["det"][jmax] = True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return 100.0 * ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return 100.0 * np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def hand_truth() -> GroundTruth:
    """Three images: cats and dogs, one difficult dog, a cow in image 2."""
    return GroundTruth(
        boxes=[np.array([[10, 10, 50, 50], [60, 60, 100, 100]], float),
               np.array([[1, 1, 30, 40], [40, 5, 80, 60]], float),
               np.array([[20, 20, 70, 90]], float)],
        labels=[np.array([0, 1]), np.array([0, 1]), np.array([2])],
        difficult=[np.array([False, False]), np.array([False, True]), np.array([False])])


def dets(rows: list[tuple[int, int, float, list[float]]]) -> Detections:
    if not rows:
        return Detections.empty()
    return Detections(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
                      np.array([r[2] for r in rows], float), np.array([r[3] for r in rows], float))


def perfect(truth: GroundTruth) -> Detections:
    return dets([(i, int(l), 0.9, list(b)) for i in range(len(truth))
                 for b, l, d in zip(truth.boxes[i], truth.labels[i], truth.difficult[i]) if not d])


def test_perfect_detections_score_100_everywhere() -> None:
    scores = score_detections(perfect(hand_truth()), hand_truth(), CLASSES)
    assert scores.summary() == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0})
    assert all(v == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0}) for v in scores.per_class().values())


def test_missed_duplicate_and_difficult_by_hand() -> None:
    truth = hand_truth()
    # cats: image 0 found, image 1 missed -> recall 0.5 at precision 1 -> 11-point: t=0..0.5 -> 6/11
    # dogs: image 0 found, then a duplicate (fp), a hit on the difficult dog (ignored) -> 100
    rows = [(0, 0, 0.9, [10, 10, 50, 50]),
            (0, 1, 0.8, [60, 60, 100, 100]), (0, 1, 0.7, [61, 60, 100, 100]), (1, 1, 0.95, [40, 5, 80, 60]),
            (2, 2, 0.5, [20, 20, 70, 90])]
    scores = score_detections(dets(rows), truth, CLASSES)
    per_class = scores.per_class()
    assert per_class["cat"]["AP50"] == pytest.approx(100 * 6 / 11)
    assert per_class["dog"]["AP50"] == pytest.approx(100.0)  # difficult match ignored, duplicate after the hit
    assert per_class["cow"]["AP50"] == pytest.approx(100.0)
    # the duplicate ranked first would cost precision: dog dup at 0.99 shifted so it overlaps less than 0.5
    rows[2] = (0, 1, 0.99, [80, 80, 120, 120])
    dog = score_detections(dets(rows), truth, CLASSES).per_class()["dog"]["AP50"]
    assert dog == pytest.approx(100 * 0.5)  # precision 1/2 at recall 1, all 11 points


def test_recall_exactly_three_tenths_misses_the_float_threshold() -> None:
    """np.arange(0, 1.1, 0.1)[3] is 0.30000000000000004: a recall of exactly 0.3 does not reach it."""
    assert np.arange(0.0, 1.1, 0.1)[3] > 0.3
    recall = np.array([0.1, 0.2, 0.3])
    precision = np.array([1.0, 1.0, 1.0])
    assert voc_ap(recall, precision) == pytest.approx(3 / 11)  # t = 0, 0.1, 0.2 only
    exact = sum(1.0 for k in range(11) if recall.max() >= k / 10) / 11
    assert exact == pytest.approx(4 / 11)  # the exact-k/10 reading would count t = 0.3 too


def random_case(seed: int, n_images: int = 40, n_classes: int = 3) -> tuple[GroundTruth, Detections]:
    rng = np.random.default_rng(seed)
    boxes, labels, difficult = [], [], []
    for _ in range(n_images):
        m = int(rng.integers(0, 5))
        xy = rng.uniform(1, 200, size=(m, 2))
        wh = rng.uniform(5, 120, size=(m, 2))
        boxes.append(np.round(np.concatenate([xy, xy + wh], axis=1)))
        labels.append(rng.integers(0, n_classes, size=m))
        difficult.append(rng.random(m) < 0.2)
    truth = GroundTruth(boxes, labels, difficult)
    rows = []
    for i in range(n_images):
        for b, l in zip(boxes[i], labels[i]):
            for _ in range(int(rng.integers(0, 3))):  # jittered hits and duplicates
                rows.append((i, int(l), float(rng.random()), list(b + rng.normal(0, 6, 4))))
        for _ in range(int(rng.integers(0, 4))):  # false positives, shuffled classes
            xy = rng.uniform(1, 200, 2)
            rows.append((i, int(rng.integers(n_classes)), float(rng.random()), [*xy, *(xy + rng.uniform(5, 90, 2))]))
    rng.shuffle(rows)
    return truth, dets(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("interpolation", ["voc07", "all_point"])
def test_matches_the_reference_loop_at_every_threshold(seed: int, interpolation: str) -> None:
    truth, detections = random_case(seed)
    scores = score_detections(detections, truth, CLASSES, interpolation=interpolation)
    for k, threshold in enumerate(IOU_THRESHOLDS):
        for c in range(len(CLASSES)):
            expected = reference_voc_eval(truth, detections, c, threshold, use_07=interpolation == "voc07")
            assert scores.ap[k, c] == pytest.approx(expected, abs=1e-9), (threshold, c)
    summary = scores.summary()
    assert summary["AP50"] == pytest.approx(scores.ap[0].mean())
    assert summary["AP75"] == pytest.approx(scores.ap[5].mean())
    assert summary["AP"] == pytest.approx(scores.ap.mean())


def test_shuffling_detections_changes_nothing_and_shuffled_labels_hurt() -> None:
    truth, detections = random_case(3)
    order = np.random.default_rng(0).permutation(len(detections))
    shuffled = Detections(detections.image[order], detections.label[order], detections.score[order],
                          detections.boxes[order])
    np.testing.assert_allclose(score_detections(shuffled, truth, CLASSES).ap,
                               score_detections(detections, truth, CLASSES).ap)
    wrong = Detections(detections.image, (detections.label + 1) % 3, detections.score, detections.boxes)
    assert score_detections(wrong, truth, CLASSES).summary()["AP50"] < \
        score_detections(detections, truth, CLASSES).summary()["AP50"]


def test_class_without_positives_is_left_out_of_the_mean() -> None:
    truth = hand_truth()
    truth.labels[2] = np.array([0])  # no cow any more
    scores = score_detections(perfect(hand_truth()), truth, CLASSES)
    assert scores.per_class()["cow"] == {"AP": None, "AP50": None, "AP75": None}
    assert scores.positives.tolist() == [3, 1, 0]
    assert np.isfinite(scores.summary()["AP50"])


def test_comp4_round_trip_one_based_and_rounded(tmp_path) -> None:
    truth, detections = random_case(4)
    ids = [f"{k:06d}" for k in range(len(truth))]
    paths = write_comp4(tmp_path, detections, ids, CLASSES)
    assert [p.name for p in paths] == [f"comp4_det_test_{c}.txt" for c in CLASSES]
    first = paths[0].read_text().splitlines()[0].split()
    assert len(first) == 6 and first[0] in ids and len(first[1].split(".")[1]) == 3
    back = read_comp4(tmp_path, ids, CLASSES)
    assert len(back) == len(detections)
    a = score_detections(detections, truth, CLASSES).summary()
    b = score_detections(back, truth, CLASSES).summary()
    assert b["AP50"] == pytest.approx(a["AP50"], abs=2.0)
    (tmp_path / "comp4_det_test_dog.txt").write_text("999999 0.5 1 2 3 4\n")
    with pytest.raises(SslBenchError, match="comp4_det_test_dog.txt:1"):
        read_comp4(tmp_path, ids, CLASSES)


def test_scores_voc07_test_sized_detections_in_under_10_seconds() -> None:
    """4952 images, 1-5 objects each over 20 classes, 100 detections per image (perf/bench_detection.py's case)."""
    from perf.bench_detection import scoring_seconds
    assert scoring_seconds() < 10.0
