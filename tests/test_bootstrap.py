"""Bootstrap intervals, paired tests and stored statistics, checked against explicit resampling."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.bootstrap import (Bootstrap, aligned, bootstrap_interval, correctness, evidence_for,
                                 not_significantly_worse, paired_bootstrap_pvalue, precompute, ranking,
                                 stored_statistics, weighted_map)
from protocols.metrics import mean_average_precision


def simulated_ranking(rng: np.random.Generator, n: int, n_classes: int = 4, signal: float = 1.0
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Scores rounded to one decimal (many ties) and labels with some -1 rows."""
    labels = (rng.random((n, n_classes)) < 0.3).astype(np.int64)
    scores = np.round(signal * labels + rng.normal(size=(n, n_classes)), 1)
    labels[rng.random((n, n_classes)) < 0.05] = -1
    return scores, labels


def test_weighted_map_equals_protocols_metrics_on_resampled_rows():
    rng = np.random.default_rng(0)
    scores, labels = simulated_ranking(rng, 60, n_classes=5)
    labels[:, 4] = np.where(np.arange(60) == 7, 1, 0)  # a class with one positive: often absent in a resample
    picks = [np.arange(60)] + [rng.integers(0, 60, 60) for _ in range(30)]
    counts = np.stack([np.bincount(p, minlength=60) for p in picks])
    expected = [100 * mean_average_precision(scores[p], labels[p], "all_point")[0] for p in picks]
    np.testing.assert_allclose(weighted_map(scores, labels, counts), expected, rtol=0, atol=1e-9)
    assert ranking(scores, labels).point() == pytest.approx(expected[0], abs=1e-9)


def test_accuracy_interval_matches_explicit_resampling():
    rng = np.random.default_rng(1)
    correct = rng.random(300) < 0.72
    lo, hi = bootstrap_interval(correctness(correct), n_boot=4000, seed=3)
    explicit = 100 * correct[rng.integers(0, 300, (4000, 300))].mean(1)
    assert lo == pytest.approx(np.percentile(explicit, 2.5), abs=0.8)
    assert hi == pytest.approx(np.percentile(explicit, 97.5), abs=0.8)
    assert lo < 100 * correct.mean() < hi


def test_map_resamples_match_explicit_resampling():
    rng = np.random.default_rng(2)
    scores, labels = simulated_ranking(rng, 120)
    stats = Bootstrap(1000, 0).statistics(ranking(scores, labels))
    picks = rng.integers(0, 120, (1000, 120))
    explicit = [100 * mean_average_precision(scores[p], labels[p])[0] for p in picks]
    np.testing.assert_allclose(np.percentile(stats, [2.5, 50, 97.5]), np.percentile(explicit, [2.5, 50, 97.5]),
                               atol=1.5)


def test_accuracy_intervals_cover_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    p, n, trials = 0.7, 400, 400
    hits = 0
    for seed in range(trials):
        lo, hi = bootstrap_interval(correctness(rng.random(n) < p), n_boot=1000, seed=seed)
        hits += lo <= 100 * p <= hi
    assert 0.91 <= hits / trials <= 0.985


def test_map_intervals_cover_the_population_map_loosely():
    rng = np.random.default_rng(4)
    scores, labels = simulated_ranking(rng, 200_000, n_classes=3)
    population = 100 * mean_average_precision(scores, labels)[0]
    trials, hits = 40, 0
    for seed in range(trials):
        s, y = simulated_ranking(rng, 400, n_classes=3)
        lo, hi = bootstrap_interval(ranking(s, y), n_boot=500, seed=seed)
        hits += lo <= population <= hi
    assert hits / trials >= 0.8


def test_intervals_are_seeded():
    evidence = correctness(np.random.default_rng(5).random(200) < 0.5)
    assert bootstrap_interval(evidence, seed=7) == bootstrap_interval(evidence, seed=7)
    scores, labels = simulated_ranking(np.random.default_rng(6), 80)
    assert bootstrap_interval(ranking(scores, labels), seed=1) == bootstrap_interval(ranking(scores, labels), seed=1)


def test_equal_entries_are_not_worse_and_clearly_worse_ones_are():
    rng = np.random.default_rng(7)
    correct = rng.random(500) < 0.8
    best = correctness(correct, "d")
    assert paired_bootstrap_pvalue(best, correctness(correct.copy(), "d")) == 1.0
    assert not_significantly_worse(best, correctness(correct.copy(), "d"))
    worse = correct & (rng.random(500) < 0.8)  # loses about 80 correct images, gains none
    assert paired_bootstrap_pvalue(best, correctness(worse, "d")) < 0.05
    assert not not_significantly_worse(best, correctness(worse, "d"))

    scores, labels = simulated_ranking(rng, 300, signal=2.0)
    good = ranking(scores, labels, "d")
    assert paired_bootstrap_pvalue(good, ranking(scores.copy(), labels, "d")) == 1.0
    noisy = ranking(scores + rng.normal(scale=3.0, size=scores.shape), labels, "d")
    assert paired_bootstrap_pvalue(good, noisy) < 0.05
    assert not not_significantly_worse(good, noisy)


def test_paired_p_value_matches_explicit_shared_resampling():
    rng = np.random.default_rng(8)
    a = rng.random(400) < 0.7
    b = a.copy()
    flips = rng.choice(400, 40, replace=False)
    b[flips[:23]] = False
    b[flips[23:]] = True
    picks = rng.integers(0, 400, (5000, 400))
    explicit = (1 + np.sum(b[picks].sum(1) >= a[picks].sum(1))) / 5001
    p = paired_bootstrap_pvalue(correctness(a), correctness(b), n_boot=5000, seed=1)
    assert 0.02 < explicit < 0.5 and p == pytest.approx(explicit, abs=0.03)


def test_paired_test_is_tighter_than_unpaired_on_correlated_results():
    rng = np.random.default_rng(9)
    a = rng.random(2000) < 0.7
    b = a.copy()
    b[rng.choice(np.flatnonzero(a), 40, replace=False)] = False  # 2 points worse, on the same images otherwise
    n_boot = 2000
    unpaired = (1 + np.sum(b[rng.integers(0, 2000, (n_boot, 2000))].sum(1)
                           >= a[rng.integers(0, 2000, (n_boot, 2000))].sum(1))) / (n_boot + 1)
    paired = paired_bootstrap_pvalue(correctness(a), correctness(b), n_boot=n_boot)
    assert paired < 0.05 < unpaired


def test_pairing_needs_the_same_test_images():
    correct = np.ones(10, dtype=int)
    assert aligned(correctness(correct, "d", list("abcdefghij")), correctness(correct, "d", list("abcdefghij")))
    assert not aligned(correctness(correct, "d"), correctness(correct, "e"))
    assert not aligned(correctness(correct, "d", list("abcdefghij")), correctness(correct, "d", list("abcdefghik")))
    assert not aligned(correctness(correct, "d"), correctness(correct[:9], "d"))
    assert not aligned(correctness(correct, "d"), ranking(np.zeros((10, 2)), np.ones((10, 2)), "d"))
    with pytest.raises(ValueError, match="same test images"):
        paired_bootstrap_pvalue(correctness(correct, "d"), correctness(correct, "e"))


def test_evidence_is_read_from_record_details_by_shape():
    rng = np.random.default_rng(10)
    scores, labels = simulated_ranking(rng, 50, n_classes=2)
    labels[:2] = 1
    knn = {"dataset": {"digest": "d"},
           "details": {"per_image": {"res5avg": {"k": 10, "correct_top1": [1, 0, 1, 1]}}}}
    found = evidence_for(knn, "res5avg", "top1_k10")
    assert found is not None and found.point() == 75.0 and found.dataset_digest == "d"
    assert evidence_for(knn, "res5avg", "top1_k20") is None
    assert evidence_for(knn, "res4", "top1_k10") is None
    voc = {"dataset": {"digest": "d"}, "details": {"per_image": {
        "tap": "res5", "ids": [str(i) for i in range(50)],
        "scores": {"cat": scores[:, 0].tolist(), "dog": scores[:, 1].tolist()},
        "labels": {"cat": labels[:, 0].tolist(), "dog": labels[:, 1].tolist()}}}}
    found = evidence_for(voc, "res5", "mAP")
    assert found.point() == pytest.approx(100 * mean_average_precision(scores, labels)[0])
    assert found.ids == tuple(str(i) for i in range(50))
    assert evidence_for(voc, "res4", "mAP") is None and evidence_for(voc, "res5", "mAP_11pt") is None
    assert evidence_for({"dataset": {"digest": "d"}, "details": {}}, "res5", "mAP") is None


def test_bad_evidence_is_refused():
    with pytest.raises(ValueError, match="0/1"):
        correctness([0, 2, 1])
    with pytest.raises(ValueError, match=r"one \(N, C\) shape"):
        ranking(np.zeros((3, 2)), np.zeros((3, 3)))


def test_stored_statistics_are_used_only_for_their_own_resamples():
    rng = np.random.default_rng(11)
    record = {"dataset": {"digest": "d"}, "metrics": {"res5avg": {"top1_k10": 0.0, "top5_k10": 0.0}},
              "details": {"per_image": {"res5avg": {"k": 10, "correct_top1": (rng.random(300) < 0.6).astype(int)}}}}
    block = precompute(record, n_boot=400, seed=2)
    assert list(block["entries"]) == ["res5avg"] and list(block["entries"]["res5avg"]) == ["top1_k10"]
    record["bootstrap"] = block
    stored = stored_statistics(record, "res5avg", "top1_k10", 400, 2)
    fresh = Bootstrap(400, 2)
    evidence = evidence_for(record, "res5avg", "top1_k10")
    np.testing.assert_array_equal(stored.stats, fresh.statistics(evidence))
    assert fresh.pvalue(stored, evidence) == 1.0 and aligned(stored, evidence)
    assert stored.point() == evidence.point()
    assert stored_statistics(record, "res5avg", "top1_k10", 400, 3) is None  # another seed: resample again
    assert stored_statistics(record, "res5avg", "top1_k10", 1000, 2) is None
    assert stored_statistics(record, "res5avg", "top5_k10", 400, 2) is None
    with pytest.raises(ValueError, match="cannot pair"):
        Bootstrap(1000, 2).interval(stored)
    record["bootstrap"] = {**block, "entries": ["not", "a", "dict"]}
    assert stored_statistics(record, "res5avg", "top1_k10", 400, 2) is None
    assert precompute({"dataset": {"digest": "d"}, "metrics": {"res5": {"mAP": 1.0}}, "details": {}}) is None
