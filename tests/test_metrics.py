"""AP in three modes against float64 references written from the definitions, and sklearn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from protocols.metrics import average_precision, mean_average_precision, precision_recall


def reference_points(scores: np.ndarray, labels: np.ndarray) -> list[tuple[float, float]]:
    """(precision, recall) at each distinct threshold, highest first, by counting rows above it."""
    points = []
    for threshold in sorted(set(scores.tolist()), reverse=True):
        selected = scores >= threshold
        tp = float(np.sum(labels[selected] == 1))
        points.append((tp / selected.sum(), tp / np.sum(labels == 1)))
    return points


def reference_ap(scores: np.ndarray, labels: np.ndarray, mode: str) -> float:
    points = reference_points(np.asarray(scores, dtype=np.float64), np.asarray(labels))
    if mode == "voc07_11point":
        total = 0.0
        for t in [i / 10 for i in range(11)]:
            reached = [p for p, r in points if r >= t - 1e-12]
            total += max(reached) if reached else 0.0
        return total / 11
    ap, previous_recall = 0.0, 0.0
    for i, (p, r) in enumerate(points):
        if mode == "all_point":
            p = max(q for q, _ in points[i:])
        ap += (r - previous_recall) * p
        previous_recall = r
    return ap


MODES = ("all_point", "voc07_11point", "non_interpolated")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", MODES)
def test_matches_float64_reference(seed: int, mode: str) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    labels = (rng.random(n) < rng.uniform(0.05, 0.6)).astype(int)
    labels[rng.integers(n)] = 1
    scores = rng.standard_normal(n) + labels * rng.uniform(0, 2)
    if seed % 2:
        scores = np.round(scores, 1)  # many ties
    assert average_precision(scores, labels, mode) == pytest.approx(reference_ap(scores, labels, mode), abs=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_non_interpolated_equals_sklearn(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    labels = (rng.random(300) < 0.2).astype(int)
    scores = rng.standard_normal(300) + labels
    if seed % 2:
        scores = np.round(scores, 1)
    assert average_precision(scores, labels, "non_interpolated") == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12)


def test_hand_computed_values() -> None:
    # ranking: + - + - -: precision 1, 1/2, 2/3, 2/4, 2/5 at recall 1/2, 1/2, 1, 1, 1
    scores, labels = np.array([5.0, 4, 3, 2, 1]), np.array([1, 0, 1, 0, 0])
    assert average_precision(scores, labels, "non_interpolated") == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert average_precision(scores, labels, "all_point") == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # 11-point: recall >= 0..0.5 -> best precision 1 (6 points), recall >= 0.6..1 -> 2/3 (5 points)
    assert average_precision(scores, labels, "voc07_11point") == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)


def test_all_point_and_non_interpolated_differ_where_precision_rises() -> None:
    # - + +: precision 0, 1/2, 2/3 at recall 0, 1/2, 1; the envelope lifts the first step to 2/3
    scores, labels = np.array([3.0, 2, 1]), np.array([0, 1, 1])
    assert average_precision(scores, labels, "non_interpolated") == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert average_precision(scores, labels, "all_point") == pytest.approx(2 / 3)


def test_monotone_precision_makes_all_point_equal_non_interpolated() -> None:
    scores = np.array([9.0, 8, 7, 6, 5, 4])
    labels = np.array([1, 1, 1, 0, 0, 0])
    for mode in MODES:
        assert average_precision(scores, labels, mode) == 1.0


def test_ties_are_one_threshold_and_order_free() -> None:
    # all scores tied: one point, precision = prevalence, recall 1
    labels = np.array([1, 0, 0, 1, 0])
    for mode in ("all_point", "non_interpolated"):
        assert average_precision(np.zeros(5), labels, mode) == pytest.approx(0.4)
    assert average_precision(np.zeros(5), labels, "voc07_11point") == pytest.approx(0.4)
    # a tie between a positive and a negative at the top: same AP whatever the row order
    scores = np.array([2.0, 2.0, 1.0, 0.0])
    labels = np.array([1, 0, 1, 0])
    for mode in MODES:
        a = average_precision(scores, labels, mode)
        b = average_precision(scores[[1, 0, 3, 2]], labels[[1, 0, 3, 2]], mode)
        assert a == b
    # tie at the top: precision 1/2 at recall 1/2, then 2/3 at recall 1
    assert average_precision(scores, labels, "non_interpolated") == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert average_precision(scores, labels, "all_point") == pytest.approx(2 / 3)
    assert average_precision_score(labels, scores) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)


def test_precision_recall_points() -> None:
    precision, recall = precision_recall(np.array([0.1, 0.9, 0.5, 0.5]), np.array([0, 1, 1, 0]))
    np.testing.assert_allclose(precision, [1.0, 2 / 3, 2 / 4])
    np.testing.assert_allclose(recall, [0.5, 1.0, 1.0])


def test_edge_cases_raise() -> None:
    with pytest.raises(ValueError, match="without a positive"):
        average_precision(np.array([1.0, 2.0]), np.array([0, 0]))
    with pytest.raises(ValueError, match="drop ignored"):
        average_precision(np.array([1.0, 2.0]), np.array([1, -1]))
    with pytest.raises(ValueError, match="finite"):
        average_precision(np.array([np.nan, 2.0]), np.array([1, 0]))
    with pytest.raises(ValueError, match="mode"):
        average_precision(np.array([1.0]), np.array([1]), "11pt")
    with pytest.raises(ValueError, match="differ in length"):
        average_precision(np.array([1.0, 2.0]), np.array([1]))


def test_mean_average_precision_excludes_difficult_rows_and_empty_classes() -> None:
    rng = np.random.default_rng(7)
    labels = rng.choice([-1, 0, 1], size=(80, 4), p=[0.1, 0.6, 0.3]).astype(np.int8)
    labels[:, 3] = np.where(labels[:, 3] == 1, 0, labels[:, 3])  # class 3: no positive at all
    scores = rng.standard_normal((80, 4)) + labels
    for mode in MODES:
        mean, aps = mean_average_precision(scores, labels, mode)
        for c in range(3):
            keep = labels[:, c] != -1
            assert aps[c] == pytest.approx(reference_ap(scores[keep, c], labels[keep, c], mode), abs=1e-12)
        assert np.isnan(aps[3])
        assert mean == pytest.approx(np.mean(aps[:3]))
    # the -1 rows really are dropped: giving them the top score changes nothing
    boosted = np.where(labels == -1, 100.0, scores)
    np.testing.assert_array_equal(mean_average_precision(boosted, labels)[1], mean_average_precision(scores, labels)[1])
    with pytest.raises(ValueError, match="no class has a positive"):
        mean_average_precision(scores[:, 3:], labels[:, 3:])
    with pytest.raises(ValueError, match="same"):
        mean_average_precision(scores, labels[:, :2])
