"""The noise-aware gate against simulations where the truth is known: equal accuracies pass, real drops fail."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from test_regress import KNN_CONFIG, write_record

from benchmark.bootstrap import Bootstrap, correctness
from benchmark.cli import main
from benchmark.errors import SslBenchError
from reports.noise import ALPHA
from reports.records import load_records
from reports.regress import Entry, compare, judge, read_baseline, run_regress, write_baseline

N_IMAGES = 2000
TRIALS = 200
# the accepted count of failures among TRIALS when each fails with probability ALPHA: mean + 3 binomial sd
FALSE_ALARMS = TRIALS * ALPHA + 3 * np.sqrt(TRIALS * ALPHA * (1 - ALPHA))


def two_runs(rng: np.random.Generator, accuracy: float, other: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of two runs (random inits) whose true accuracies are `accuracy` and `other` <= it.

    Image i is right with probability p_i ~ Beta(2 accuracy, 2 (1 - accuracy)) (mean `accuracy`) in the first
    run and p_i x other / accuracy in the second, so easy images are easy for both; runs draw independently.
    The difference of the two accuracies then has sd 100 sqrt(2 E[p(1 - p)] / n) ~ 1.2 points on 2000 images.
    """
    p = rng.beta(2 * accuracy, 2 * (1 - accuracy), N_IMAGES)
    return rng.random(N_IMAGES) < p, rng.random(N_IMAGES) < p * other / accuracy


def entry(correct: np.ndarray, boot: Bootstrap) -> Entry:
    """A gated top-1 entry backed by its bootstrap statistics."""
    stats = boot.resampled(correctness(correct, "d"))
    return Entry("ckpt", "knn", "1", "knn", None, {}, "synthetic", "d", 0, "res5avg", "top1_k20", True,
                 stats.value, None, N_IMAGES, stats)


def verdicts(rng: np.random.Generator, accuracy: float, other: float, tolerance: float | None) -> list[str]:
    boot = Bootstrap()
    return [judge(entry(base, boot), entry(new, boot), tolerance).status
            for base, new in (two_runs(rng, accuracy, other) for _ in range(TRIALS))]


def test_equal_true_accuracy_passes_but_fails_an_absolute_tolerance():
    """Two runs of equal true accuracy differ by ~1 point on 2000 images: the old 0.5-point gate fails a third."""
    rng = np.random.default_rng(0)
    noise_aware = verdicts(rng, 0.7, 0.7, None)
    assert noise_aware.count("dropped") <= FALSE_ALARMS and noise_aware.count("improved") <= FALSE_ALARMS
    assert verdicts(rng, 0.7, 0.7, 0.5).count("dropped") > FALSE_ALARMS


def test_a_real_drop_fails():
    """5 points worse on 2000 images: 4.2 sd of the difference, so a one-sided 95% test has power 0.995."""
    dropped = verdicts(np.random.default_rng(1), 0.7, 0.65, None).count("dropped")
    assert dropped >= TRIALS - FALSE_ALARMS


def test_z_test_without_per_image_results_holds_its_level():
    """Independent binomial accuracies on n images, no per-image results: the z-test on the test-set size."""
    rng, n = np.random.default_rng(2), 10_000
    template = Entry("ckpt", "knn", "1", "knn", None, {}, "synthetic", "d", 0, "res5avg", "top1_k20", True,
                     0.0, None, n)
    equal, drop = [], []
    for _ in range(TRIALS):
        base, same, worse = 100 * rng.binomial(n, [0.6, 0.6, 0.57]) / n
        equal.append(judge(dataclasses.replace(template, value=base), dataclasses.replace(template, value=same),
                           None))
        drop.append(judge(dataclasses.replace(template, value=base), dataclasses.replace(template, value=worse),
                          None).status)
    assert sum(row.status == "dropped" for row in equal) <= FALSE_ALARMS
    assert drop.count("dropped") >= TRIALS - FALSE_ALARMS  # 3 points: 4.3 sd of the difference, power 0.996
    assert "z-test on 10000 test images, one-sided 95%" in equal[0].note


def knn_record(root, correct: np.ndarray) -> None:
    """A knn record with packed per-image correctness (no stored statistics: the gate resamples the bits)."""
    path = write_record(root, "ckpt", "knn", {"res5avg": {"top1_k20": 100 * float(correct.mean())}})
    record = json.loads(path.read_text())
    record["details"] = {"per_image": {"res5avg": {"n_images": len(correct),
                                                   "correct_bits": {"top1_k20": np.packbits(correct).tolist()}}}}
    path.write_text(json.dumps(record))


def test_baseline_keeps_bootstrap_statistics_and_the_gate_pairs_them(tmp_path):
    """End to end: write a noise-aware baseline, then a noisy rerun passes and a real drop fails, both on files."""
    rng = np.random.default_rng(3)
    base, noisy = two_runs(rng, 0.7, 0.7)
    knn_record(tmp_path / "base", base)
    out: list[str] = []
    assert run_regress(tmp_path / "b.json", [tmp_path / "base"], write_baseline=True, emit=out.append) == 0
    assert "1 entries, noise-aware at one-sided 95%, 1 with bootstrap statistics" in out[0]
    baseline = read_baseline(tmp_path / "b.json")
    assert baseline.tolerance is None and baseline.entries[0].stats.stats.shape == (1000,)
    np.testing.assert_array_equal(baseline.entries[0].stats.stats, Bootstrap().statistics(correctness(base, "d")))

    knn_record(tmp_path / "noisy", np.where(np.arange(N_IMAGES) < 60, False, base))  # 60 fewer right: -3 points
    knn_record(tmp_path / "rerun", noisy)
    drop = compare(baseline, load_records([tmp_path / "noisy"]))
    rerun = compare(baseline, load_records([tmp_path / "rerun"]))
    assert [row.status for row in drop.rows] == ["dropped"] and "paired bootstrap over 2000 test images" in \
        drop.rows[0].note
    assert [row.status for row in rerun.rows] == ["ok"], rerun.rows[0]
    assert "noise-aware: a drop fails when significant at one-sided 95% (p <= 0.05)" in \
        run_and_read(baseline.path, tmp_path / "rerun")
    assert compare(baseline, load_records([tmp_path / "noisy"]), tolerance=5.0).rows[0].note == (
        "allowed 5.00 (tolerance 5)")  # --tolerance: the absolute rule, as before


def run_and_read(baseline, results) -> str:
    out: list[str] = []
    run_regress(baseline, [results], emit=out.append)
    return "".join(out)


def test_absolute_tolerance_is_kept_in_the_baseline_and_used_as_before(tmp_path):
    write_record(tmp_path / "base", "ckpt", "knn", {"res5avg": {"top1_k20": 60.0}})
    path = write_baseline(load_records([tmp_path / "base"]), tmp_path / "b.json", tolerance=0.5)
    write_record(tmp_path / "new", "ckpt", "knn", {"res5avg": {"top1_k20": 59.4}}, config=KNN_CONFIG)
    row = compare(read_baseline(path), load_records([tmp_path / "new"])).rows[0]
    assert (row.status, row.note) == ("dropped", "allowed 0.50 (tolerance 0.5)")


def test_broken_bootstrap_in_a_baseline_is_one_line(tmp_path):
    write_record(tmp_path / "base", "ckpt", "knn", {"res5avg": {"top1_k20": 60.0}})
    path = write_baseline(load_records([tmp_path / "base"]), tmp_path / "b.json")
    document = json.loads(path.read_text())
    document["entries"][0]["bootstrap"] = {"n_boot": 3, "seed": 0, "scheme": "x", "pairing": {},
                                           "stats_float64_base64": "AAAA"}
    path.write_text(json.dumps(document))
    with pytest.raises(SslBenchError, match=r"entry 0 has a broken 'bootstrap' .*; regenerate it") as info:
        read_baseline(path)
    assert "\n" not in str(info.value)


def test_help_states_the_level(capsys):
    with pytest.raises(SystemExit):
        main(["regress", "--help"])
    assert "one-sided 95% (p <= 0.05)" in " ".join(capsys.readouterr().out.split())
