"""lowshot: the draws, the statistics, cost selection and both tasks against independent sklearn references."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from fakes import fake_context, reference_ap
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

from benchmark.config import build_config
from benchmark.errors import SslBenchError
from benchmark.protocol import RunContext
from benchmark.results import PartialState
from protocols import svm as svm_module
from protocols.lowshot import LowshotConfig, LowshotProtocol, draw_multiclass, draw_multilabel
from protocols.svm import normalize_features
from protocols.svm_common import VISSL_COSTS


def multilabel_data(n: int, n_classes: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((n_classes, dim))
    labels = (rng.random((n, n_classes)) < 0.25).astype(np.int8)
    labels[rng.random((n, n_classes)) < 0.06] = -1
    X = (labels == 1) @ centres * 0.8 + rng.standard_normal((n, dim))
    return X.astype(np.float32), labels


def multiclass_data(per_class: list[int], dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(98).standard_normal((len(per_class), dim)) * 1.2
    y = np.repeat(np.arange(len(per_class)), per_class)
    return (centres[y] + rng.standard_normal((len(y), dim))).astype(np.float32), y


def make_ctx(tmp_path, taps, splits, state=None) -> RunContext:
    return fake_context(tmp_path, taps, splits, state=state)

def svc_scores(X: np.ndarray, y: np.ndarray, Q: np.ndarray, cost: float) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LinearSVC(C=cost, class_weight={1: 2, 0: 1}, penalty="l2", loss="squared_hinge", dual=True,
                          max_iter=2000, tol=1e-4, random_state=0).fit(X, y)
    return model.decision_function(Q)


def drawn(key: list[int], rows: np.ndarray, n: int) -> np.ndarray:
    """The documented draw, written out: default_rng(key).choice without replacement."""
    return np.random.default_rng(key).choice(rows, size=min(n, len(rows)), replace=False)


# --- the draws -------------------------------------------------------------------------------

def test_multilabel_draw_has_k_positives_and_19k_negatives() -> None:
    _, labels = multilabel_data(600, 20, 4, 0)
    classes = list(range(20))
    for k in (1, 2, 4):
        draw = draw_multilabel(labels, classes, [str(c) for c in classes], k, samples=3, seed=7)
        assert np.all(np.diff(draw.rows) > 0)
        for s in range(3):
            for c in classes:
                j = s * 20 + c
                rows = draw.rows[draw.masks[:, j]]
                assert (labels[rows, c] == 1).sum() == k and (labels[rows, c] == 0).sum() == 19 * k
                assert (labels[rows, c] != -1).all()
                np.testing.assert_array_equal(draw.targets[draw.masks[:, j], j], labels[rows, c])
                # the recorded generator reproduces the draw
                expected = np.r_[drawn([7, s, k, c, 1], np.flatnonzero(labels[:, c] == 1), k),
                                 drawn([7, s, k, c, 0], np.flatnonzero(labels[:, c] == 0), 19 * k)]
                np.testing.assert_array_equal(rows, np.sort(expected))
                assert draw.held[:, j].sum() == k // 3 + 19 * k // 3
                assert not (draw.held[:, j] & ~draw.masks[:, j]).any()
        again = draw_multilabel(labels, classes, [str(c) for c in classes], k, samples=3, seed=7)
        np.testing.assert_array_equal(again.masks, draw.masks)
        np.testing.assert_array_equal(again.rows, draw.rows)
        full = np.zeros((len(labels), 60), bool)
        full[draw.rows] = draw.masks
        differ = [(full[:, c] != full[:, 20 + c]).any() for c in classes]
        assert all(differ)  # another sample, another draw
        other_seed = draw_multilabel(labels, classes, [str(c) for c in classes], k, samples=1, seed=8)
        assert not np.array_equal(other_seed.rows, draw_multilabel(labels, classes, [str(c) for c in classes], k,
                                                                    samples=1, seed=7).rows)


def test_multiclass_draw_is_k_per_class_shared_by_the_columns_of_a_sample() -> None:
    _, y = multiclass_data([12, 9, 15, 10], 4, 0)
    draw = draw_multiclass(y, [0, 1, 2, 3], k=3, samples=2, seed=1)
    for s in range(2):
        block = draw.masks[:, s * 4:(s + 1) * 4]
        assert (block == block[:, :1]).all()  # every class's SVM sees the whole sample
        rows = draw.rows[block[:, 0]]
        np.testing.assert_array_equal(np.bincount(y[rows], minlength=4), [3, 3, 3, 3])
        for c in range(4):
            np.testing.assert_array_equal(draw.targets[block[:, 0], s * 4 + c], y[rows] == c)
        assert draw.held[:, s * 4].sum() == 4  # one of every class's three
    assert not np.array_equal(draw.masks[:, 0], draw.masks[:, 4])


# --- the protocol on a fake context ---------------------------------------------------------

@pytest.fixture(scope="module")
def voc_like():
    return {"train": multilabel_data(300, 5, 16, 0), "test": multilabel_data(200, 5, 16, 1)}


def test_multilabel_against_reference_and_statistics(tmp_path, voc_like) -> None:
    (X, labels), (Q, q_labels) = voc_like["train"], voc_like["test"]
    config = LowshotConfig(ks=(1, 4), samples=3, sample_seed=3)
    result = LowshotProtocol().run(make_ctx(tmp_path, ["res4"], voc_like), config)
    metrics, per_k = result.metrics["res4"], result.details["per_k"]["res4"]
    assert set(metrics) == {f"mAP_k{k}_{s}" for k in (1, 4) for s in ("mean", "std", "min", "max")}
    Xn, Qn = normalize_features(X), normalize_features(Q)
    for k in (1, 4):
        entry = per_k[str(k)]
        values = np.array(entry["per_sample"]["mAP"])
        assert len(values) == 3 and len(set(values.round(6))) > 1  # samples differ
        assert metrics[f"mAP_k{k}_mean"] == pytest.approx(np.mean(values))
        assert metrics[f"mAP_k{k}_std"] == pytest.approx(np.std(values))
        assert metrics[f"mAP_k{k}_min"] == pytest.approx(values.min())
        assert metrics[f"mAP_k{k}_max"] == pytest.approx(values.max())
        # FAIR selection: the cost with the best mean test mAP over the samples
        by_cost = np.array(entry["test_mAP_by_cost"])
        assert entry["cost"] == VISSL_COSTS[int(np.argmax(by_cost))]
        assert metrics[f"mAP_k{k}_mean"] == pytest.approx(by_cost.max())
        assert entry["cost_selected_on"] == "test"
        for s in range(3):
            aps = []
            for c in range(5):
                rows = np.sort(np.r_[drawn([3, s, k, c, 1], np.flatnonzero(labels[:, c] == 1), k),
                                     drawn([3, s, k, c, 0], np.flatnonzero(labels[:, c] == 0), 4 * k)])
                scores = svc_scores(Xn[rows], labels[rows, c], Qn, entry["cost"])
                keep = q_labels[:, c] != -1
                aps.append(100 * reference_ap(scores[keep], q_labels[keep, c]))
            assert values[s] == pytest.approx(np.mean(aps), abs=0.3)
    assert result.details["cost_selected_on"] == "test"
    assert result.details["sampling"]["sample_seed"] == 3 and result.details["sampling"]["samples"] == 3
    json.dumps({"metrics": result.metrics, "details": result.details}, allow_nan=False)


def test_heldout_selection(tmp_path, voc_like) -> None:
    (X, labels), _ = voc_like["train"], voc_like["test"]
    fair = LowshotProtocol().run(make_ctx(tmp_path / "a", ["res4"], voc_like), LowshotConfig(ks=(2, 6), samples=3))
    held = LowshotProtocol().run(make_ctx(tmp_path / "b", ["res4"], voc_like),
                                 LowshotConfig(ks=(2, 6), samples=3, select="heldout"))
    assert held.details["cost_selected_on"] == "heldout" and held.details["heldout"]
    k2, k6 = held.details["per_k"]["res4"]["2"], held.details["per_k"]["res4"]["6"]
    assert k2["cost_selected_on"].startswith("test (k < 3")
    assert k2["cost"] == fair.details["per_k"]["res4"]["2"]["cost"]
    assert k6["cost_selected_on"] == "heldout"
    assert k6["cost"] == VISSL_COSTS[int(np.argmax(k6["heldout_mAP_by_cost"]))]
    # the same full-sample fits: test numbers per cost agree, and test selection is an upper bound
    np.testing.assert_allclose(k6["test_mAP_by_cost"], fair.details["per_k"]["res4"]["6"]["test_mAP_by_cost"])
    assert held.metrics["res4"]["mAP_k6_mean"] <= fair.metrics["res4"]["mAP_k6_mean"] + 1e-9
    # held-out mAP at C = 1 from the documented split: the first third of each draw held out
    Xn = normalize_features(X)
    per_sample = []
    for s in range(3):
        aps = []
        for c in range(5):
            pos = drawn([0, s, 6, c, 1], np.flatnonzero(labels[:, c] == 1), 6)
            neg = drawn([0, s, 6, c, 0], np.flatnonzero(labels[:, c] == 0), 24)
            held_rows = np.r_[pos[:2], neg[:8]]
            fit_rows = np.sort(np.r_[pos[2:], neg[8:]])
            scores = svc_scores(Xn[fit_rows], labels[fit_rows, c], Xn[held_rows], 1.0)
            aps.append(100 * reference_ap(scores, labels[held_rows, c]))
        per_sample.append(np.mean(aps))
    assert k6["heldout_mAP_by_cost"][VISSL_COSTS.index(1.0)] == pytest.approx(np.mean(per_sample), abs=0.5)


def test_k_above_the_available_positives_uses_all_and_records(tmp_path, voc_like) -> None:
    (X, labels), test = voc_like["train"], voc_like["test"]
    labels = labels.copy()
    labels[np.flatnonzero(labels[:, 2] == 1)[3:], 2] = 0  # c2: 3 positives
    result = LowshotProtocol().run(make_ctx(tmp_path, ["res4"], {"train": (X, labels), "test": test}),
                                   LowshotConfig(ks=(2, 8), samples=2, custom_costs=(1.0,)))
    assert result.details["clipped"] == {"8": {"class2": {"positives": 3}}}
    draw = draw_multilabel(labels, list(range(5)), [f"class{c}" for c in range(5)], 8, samples=2, seed=0)
    rows = draw.rows[draw.masks[:, 2]]
    assert (labels[rows, 2] == 1).sum() == 3 and (labels[rows, 2] == 0).sum() == 32
    assert "mAP_k8_mean" in result.metrics["res4"] and result.details["costs"] == [1.0]


def test_class_without_positives_is_skipped(tmp_path, voc_like) -> None:
    (X, labels), (Q, q_labels) = voc_like["train"], voc_like["test"]
    labels = np.where(np.arange(5) == 1, np.where(labels == 1, 0, labels), labels).astype(np.int8)
    result = LowshotProtocol().run(make_ctx(tmp_path, ["res4"], {"train": (X, labels), "test": (Q, q_labels)}),
                                   LowshotConfig(ks=(1,), samples=2))
    assert result.details["skipped_classes"] == {"class1": "no positive image in the train split"}
    assert result.details["classes"] == ["class0", "class2", "class3", "class4"]
    assert set(result.details["per_k"]["res4"]["1"]["class_ap_mean"]) == {"class0", "class2", "class3", "class4"}


def test_resume_per_tap_and_k(tmp_path, voc_like, monkeypatch) -> None:
    config = LowshotConfig(ks=(1, 2, 4), samples=2)
    fresh = LowshotProtocol().run(make_ctx(tmp_path / "fresh", ["res4", "res5"], voc_like), config)

    class Crashing(PartialState):
        def put(self, key, value):
            if key == "k:res5:2":
                raise KeyboardInterrupt
            super().put(key, value)

    path = tmp_path / "state.json"
    with pytest.raises(KeyboardInterrupt):
        LowshotProtocol().run(make_ctx(tmp_path, ["res4", "res5"], voc_like, Crashing(path)), config)
    assert set(json.loads(path.read_text())) == {"k:res4:1", "k:res4:2", "k:res4:4", "k:res5:1"}
    fits = []
    original = svm_module.BatchedLinearSVC.fit
    monkeypatch.setattr(svm_module.BatchedLinearSVC, "fit",
                        lambda self, X, Y, mask=None: fits.append(Y.shape) or original(self, X, Y, mask))
    resumed = LowshotProtocol().run(make_ctx(tmp_path, ["res4", "res5"], voc_like, PartialState(path)), config)
    assert len(fits) == 2  # res5 at k = 2 and 4
    assert resumed.metrics == fresh.metrics
    assert resumed.details["per_k"] == fresh.details["per_k"]


def test_multiclass_skips_large_k_and_checks_top1(tmp_path) -> None:
    splits = {"train": multiclass_data([8, 5, 7], 12, 0), "test": multiclass_data([6, 6, 6], 12, 1)}
    result = LowshotProtocol().run(make_ctx(tmp_path, ["res5avg"], splits),
                                   LowshotConfig(ks=(1, 4, 6), samples=3, solver="liblinear", costs="vissl"))
    assert result.details["task"] == "multiclass"
    assert result.details["skipped_ks"] == {"6": "larger than the smallest class (5 images)"}
    assert {m.split("_")[1] for m in result.metrics["res5avg"]} == {"k1", "k4"}
    top1 = result.details["per_k"]["res5avg"]["4"]["per_sample"]["top1"]
    assert result.metrics["res5avg"]["top1_k4_std"] == pytest.approx(np.std(top1))
    held = LowshotProtocol().run(make_ctx(tmp_path / "h", ["res5avg"], splits),
                                 LowshotConfig(ks=(1, 3), samples=2, select="heldout"))
    k3 = held.details["per_k"]["res5avg"]["3"]
    assert k3["cost_selected_on"] == "heldout" and len(k3["heldout_mAP_by_cost"]) == len(VISSL_COSTS)
    assert held.details["per_k"]["res5avg"]["1"]["cost_selected_on"].startswith("test")
    with pytest.raises(SslBenchError, match="every k in \\[6, 8\\] is larger than the smallest class"):
        LowshotProtocol().run(make_ctx(tmp_path / "x", ["res5avg"], splits), LowshotConfig(ks=(6, 8)))


def test_train_split_extracted_only_at_the_drawn_rows(tmp_path) -> None:
    """The train split is asked for its labels, then for the features of the union of every k's draws only."""
    splits = {"train": multiclass_data([30, 25, 40], 12, 0), "test": multiclass_data([6, 6, 6], 12, 1)}
    calls = []
    ctx = fake_context(tmp_path, ["res5avg"], splits, calls=calls)
    config = LowshotConfig(ks=(1, 4), samples=3)
    LowshotProtocol().run(ctx, config)
    y = splits["train"][1]
    union = np.unique(np.concatenate([drawn([0, s, k, c], np.flatnonzero(y == c), k)
                                      for k in (1, 4) for s in range(3) for c in range(3)]))
    train_calls = [call for call in calls if call[0] == "train"]
    assert train_calls == [("train", ()), ("train", ("res5avg",), union.tolist())]
    assert len(union) < len(y)


def test_multiclass_through_the_runner_against_brute_force(tmp_path, monkeypatch) -> None:
    """Generated Places205, random resnet18_cifar; reference SVMs and a brute-force argmax on the same features."""
    from benchmark import features as features_module
    from benchmark.data.synthetic import write_places205
    from benchmark.runner import RunOptions, run

    root = write_places205(tmp_path / "places", seed=0, n_classes=4, train_per_class=6, val_per_class=4, size=32)
    captured = {}
    original = features_module.FeatureExtractor.extract
    original_rows = features_module.FeatureExtractor.extract_rows

    def spy(self, dataset, split, taps, transform, transform_id):
        fs = original(self, dataset, split, taps, transform, transform_id)
        captured[split] = (fs.features.get("res5avg"), np.asarray(fs.labels).copy())
        return fs

    def spy_rows(self, dataset, split, taps, transform, transform_id, rows):
        fs = original_rows(self, dataset, split, taps, transform, transform_id, rows)
        captured["rows"] = (np.asarray(rows).copy(), fs.features["res5avg"].copy())
        return fs

    monkeypatch.setattr(features_module.FeatureExtractor, "extract", spy)
    monkeypatch.setattr(features_module.FeatureExtractor, "extract_rows", spy_rows)
    record, _ = run(RunOptions(checkpoint="random:resnet18_cifar", protocol="lowshot", dataset="places205",
                               data_root=root, taps=("res5avg",), results_dir=tmp_path / "results",
                               overrides={"ks": "1,3,8", "samples": "2", "solver": "liblinear"}))
    details = record["details"]
    assert details["skipped_ks"] == {"8": "larger than the smallest class (6 images)"}
    assert details["solver"] == "liblinear" and details["liblinear_settings"]["random_state"] == 0
    (nothing, y), (Q, q_y) = captured["train"], captured["val"]
    assert nothing is None  # the train split's features come only for the drawn rows
    picked, subset = captured["rows"]
    X = np.full((len(y), subset.shape[1]), np.nan, np.float32)
    X[picked] = subset
    Xn, Qn = normalize_features(X, np.float64), normalize_features(Q, np.float64)  # liblinear's inputs
    for k in (1, 3):
        entry = details["per_k"]["res5avg"][str(k)]
        for s in range(2):
            rows = np.sort(np.concatenate([drawn([0, s, k, c], np.flatnonzero(y == c), k) for c in range(4)]))
            scores = np.stack([svc_scores(Xn[rows], (y[rows] == c).astype(int), Qn, entry["cost"])
                               for c in range(4)], axis=1)
            correct = 0
            for i in range(len(q_y)):  # brute-force argmax, first class on ties
                best = 0
                for c in range(1, 4):
                    if scores[i, c] > scores[i, best]:
                        best = c
                correct += best == q_y[i]
            assert entry["per_sample"]["top1"][s] == pytest.approx(100 * correct / len(q_y), abs=1e-9)
            ap = np.mean([reference_ap(scores[:, c], (q_y == c).astype(int)) for c in range(4)])
            assert entry["per_sample"]["mAP"][s] == pytest.approx(100 * ap, abs=1e-3)
        assert record["metrics"]["res5avg"][f"top1_k{k}_mean"] == pytest.approx(np.mean(entry["per_sample"]["top1"]))


def test_bad_inputs_and_config(tmp_path, voc_like) -> None:
    X, labels = voc_like["train"]
    bad = X.copy()
    bad[:, 0] = np.inf  # every row: only the drawn ones are extracted and checked
    with pytest.raises(SslBenchError, match="NaN/Inf"):
        LowshotProtocol().run(make_ctx(tmp_path, ["res4"], {"train": (bad, labels), "test": voc_like["test"]}),
                              LowshotConfig(ks=(1,), samples=1))
    empty = (np.zeros((0, X.shape[1]), np.float32), np.zeros((0, 5), np.int8))
    with pytest.raises(SslBenchError, match="split 'test' has no images"):
        LowshotProtocol().run(make_ctx(tmp_path, ["res4"], {"train": voc_like["train"], "test": empty}),
                              LowshotConfig(ks=(1,), samples=1))
    owner = "protocol 'lowshot'"
    config = build_config(LowshotConfig, {"ks": "1,2", "select": "heldout", "sample_seed": "4"}, owner)
    assert config.ks == (1, 2) and config.select == "heldout" and config.sample_seed == 4
    for key, value in (("ks", "2,1"), ("ks", "0"), ("samples", "0"), ("select", "val"), ("sample_seed", "-1"),
                       ("custom_costs", "-1"), ("solver", "sklearn")):
        with pytest.raises(SslBenchError, match=key):
            build_config(LowshotConfig, {key: value}, owner)
