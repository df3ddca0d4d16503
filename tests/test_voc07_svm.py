"""voc07_svm against an independent sklearn pipeline, on a fake context and through the runner."""

from __future__ import annotations

import json
import types
import warnings

import numpy as np
import pytest
from fakes import fake_context, reference_ap
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC

from benchmark.config import build_config
from benchmark.errors import SslBenchError
from benchmark.protocol import RunContext
from benchmark.results import PartialState, split_arrays
from benchmark.data.voc import VOC_CLASSES
from protocols import svm as svm_module
from protocols.svm_common import FAIR_COSTS, VISSL_COSTS
from protocols.voc07_svm import Voc07SvmConfig, Voc07SvmProtocol

NAMES = [f"c{i}" for i in range(6)]
FEW_COSTS = Voc07SvmConfig(custom_costs=(0.1, 1.0, 10.0))  # where the grid itself is not under test


def multilabel_data(n: int, n_classes: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features that carry the labels plus noise; labels 1/0 with some -1 (difficult only)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((n_classes, dim))
    labels = (rng.random((n, n_classes)) < 0.25).astype(np.int8)
    labels[rng.random((n, n_classes)) < 0.06] = -1
    X = (labels == 1) @ centres * 0.6 + (labels == -1) @ centres * 0.3 + rng.standard_normal((n, dim))
    return X.astype(np.float32), labels


def make_ctx(tmp_path, taps, splits, state=None, names=NAMES) -> RunContext:
    dataset = types.SimpleNamespace(train_split="trainval", test_split="test", classes=names,
                                    splits=("trainval", "test", "empty"))
    return fake_context(tmp_path, taps, splits, dataset=dataset, state=state, id_format="{split}{i:04d}")


# --- the independent reference: FAIR's recipe written with sklearn directly ------------------


def linear_svc(cost: float) -> LinearSVC:
    return LinearSVC(C=cost, class_weight={1: 2, 0: 1}, penalty="l2", loss="squared_hinge", dual=True,
                     max_iter=2000, tol=1e-4, random_state=0)


def reference_pipeline(X, labels, Q, q_labels, costs, folds=3, exclude_difficult=False, classes=None):
    """Per class: StratifiedKFold CV AP per cost (folds lacking a positive on either side, or a negative in
    training, skipped), first best cost, refit on all train rows, all-point AP on test rows != -1."""
    from sklearn.metrics import average_precision_score

    X = X.astype(np.float64) / (np.linalg.norm(X.astype(np.float64), axis=1, keepdims=True) + 1e-5)
    Q = Q.astype(np.float64) / (np.linalg.norm(Q.astype(np.float64), axis=1, keepdims=True) + 1e-5)
    cv, chosen, test_ap, converged = {}, {}, {}, {}
    for c in range(labels.shape[1]) if classes is None else classes:
        rows = labels[:, c] != -1 if exclude_difficult else np.ones(len(labels), bool)
        Xc, yc = X[rows], (labels[rows, c] == 1).astype(int)
        table = []
        for cost in costs:
            aps = []
            for fit_at, val_at in StratifiedKFold(folds).split(Xc, yc):
                if yc[fit_at].all() or not yc[fit_at].any() or not yc[val_at].any():
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    model = linear_svc(cost).fit(Xc[fit_at], yc[fit_at])
                aps.append(average_precision_score(yc[val_at], model.decision_function(Xc[val_at])))
            table.append(np.mean(aps))
        cv[c] = np.array(table)
        chosen[c] = costs[int(np.argmax(cv[c]))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = linear_svc(chosen[c]).fit(Xc, yc)
        converged[c] = model.n_iter_ < 2000
        keep = q_labels[:, c] != -1
        test_ap[c] = 100 * reference_ap(model.decision_function(Q[keep]), q_labels[keep, c])
    return cv, chosen, test_ap, converged


@pytest.fixture(scope="module")
def problem():
    return {"trainval": multilabel_data(240, 6, 24, 0), "test": multilabel_data(160, 6, 24, 1)}


@pytest.mark.parametrize("solver,grid,difficult", [
    ("batched", "vissl", "negative"), ("batched", "fair", "negative"), ("batched", "vissl", "exclude"),
    ("liblinear", "vissl", "negative")])
def test_matches_independent_sklearn_pipeline(tmp_path, problem, solver, grid, difficult) -> None:
    (X, labels), (Q, q_labels) = problem["trainval"], problem["test"]
    config = Voc07SvmConfig(costs=grid, solver=solver, train_difficult=difficult)
    result = Voc07SvmProtocol().run(make_ctx(tmp_path, ["res4"], problem), config)
    costs = VISSL_COSTS if grid == "vissl" else FAIR_COSTS
    cv, chosen, test_ap, converged_at_chosen = reference_pipeline(X, labels, Q, q_labels, list(costs),
                                                               exclude_difficult=difficult == "exclude")
    tap = result.details["per_class"]["res4"]
    same_cost = [c for c in range(6) if tap["chosen_cost"][NAMES[c]] == chosen[c]]
    assert len(same_cost) >= 0.9 * 6
    for c in range(6):
        # liblinear stops at max_iter (not converged) above C = 20 on this data: compare where it converges
        converged = np.array(costs) <= 20
        np.testing.assert_allclose(np.array(tap["cv_ap"][NAMES[c]])[converged], cv[c][converged], atol=3e-3)
        if c in same_cost:
            assert tap["ap"][NAMES[c]] == pytest.approx(test_ap[c], abs=0.3)
    assert result.metrics["res4"]["mAP"] == pytest.approx(np.mean([tap["ap"][n] for n in NAMES]))
    assert result.metrics["res4"]["mAP"] == pytest.approx(np.mean(list(test_ap.values())), abs=0.3)
    assert 50 < result.metrics["res4"]["mAP"] < 100  # the features carry the labels: not a trivial check
    assert result.details["costs"] == list(costs) and result.details["cost_grid"] == grid
    assert len(result.details["costs"]) == (11 if grid == "vissl" else 26)
    assert result.details["solver"] == solver and result.details["train_difficult"] == difficult
    flags = tap["over_liblinear_cap"]
    assert set(flags) == set(NAMES) and tap["n_over_liblinear_cap"] == sum(flags.values())
    assert result.details["classes_over_liblinear_cap"] == {"res4": sum(flags.values())}
    if solver == "liblinear":  # liblinear's own flag, the reference's refit at the same cost
        assert result.details["liblinear_settings"]["random_state"] == 0
        assert all(flags[NAMES[c]] == (not converged_at_chosen[c]) for c in same_cost)
    else:  # the bound flags at least every class whose reference refit stopped at max_iter
        assert result.details["liblinear_settings"] is None
        assert all(flags[NAMES[c]] for c in same_cost if not converged_at_chosen[c])
    json.dumps(split_arrays({"metrics": result.metrics, "details": result.details})[0], allow_nan=False)


def test_difficult_rows_negative_in_training_excluded_at_test(tmp_path, problem) -> None:
    q_labels = problem["test"][1]
    runs = {d: Voc07SvmProtocol().run(make_ctx(tmp_path / d, ["res4"], problem),
                                      Voc07SvmConfig(train_difficult=d, custom_costs=(0.1, 1.0, 10.0)))
            for d in ("negative", "exclude")}
    cv_tables = [runs[d].details["per_class"]["res4"]["cv_ap"] for d in ("negative", "exclude")]
    assert cv_tables[0] != cv_tables[1]
    per_image = runs["negative"].details["per_image"]
    assert per_image["tap"] == "res4" and per_image["ids"][0] == "test0000"
    for c, name in enumerate(NAMES):
        scores, truth = np.array(per_image["scores"][name]), np.array(per_image["labels"][name])
        np.testing.assert_array_equal(truth, q_labels[:, c])
        keep = truth != -1
        assert (~keep).any()
        assert runs["negative"].details["per_class"]["res4"]["ap"][name] == pytest.approx(
            100 * reference_ap(scores[keep], truth[keep]), abs=1e-3)
        # counting the difficult rows as negatives would give another number
        assert 100 * reference_ap(scores, (truth == 1).astype(int)) != pytest.approx(
            runs["negative"].details["per_class"]["res4"]["ap"][name], abs=1e-3)


def test_class_without_positives_is_recorded_and_left_out(tmp_path, problem) -> None:
    (X, labels), (Q, q_labels) = problem["trainval"], problem["test"]
    labels, q_labels = labels.copy(), q_labels.copy()
    labels[:, 2] = np.where(labels[:, 2] == 1, 0, labels[:, 2])  # c2: no positive in trainval
    q_labels[:, 4] = np.where(q_labels[:, 4] == 1, -1, q_labels[:, 4])  # c4: no positive in test
    result = Voc07SvmProtocol().run(make_ctx(tmp_path, ["res4"], {"trainval": (X, labels), "test": (Q, q_labels)}),
                                    Voc07SvmConfig())
    assert result.details["skipped_classes"] == {"c2": "no positive image in the train split",
                                                 "c4": "no positive image in the test split"}
    tap = result.details["per_class"]["res4"]
    assert set(tap["ap"]) == {"c0", "c1", "c3", "c5"}
    assert result.metrics["res4"]["mAP"] == pytest.approx(np.mean(list(tap["ap"].values())))


def test_folds_without_positives_are_skipped_and_fallback_cost_recorded(tmp_path, problem) -> None:
    (X, labels), test = problem["trainval"], problem["test"]
    labels = labels.copy()
    labels[np.flatnonzero(labels[:, 1] == 1)[1:], 1] = 0  # c1: one positive -> no fold has one on both sides
    labels[np.flatnonzero(labels[:, 3] == 1)[2:], 3] = 0  # c3: two positives -> two usable folds
    result = Voc07SvmProtocol().run(make_ctx(tmp_path, ["res4"], {"trainval": (X, labels), "test": test}),
                                    Voc07SvmConfig())
    tap = result.details["per_class"]["res4"]
    assert tap["cv_folds_used"]["c1"] == [] and tap["cv_ap"]["c1"] == [None] * 11
    assert len(tap["cv_folds_used"]["c3"]) == 2 and tap["cv_folds_used"]["c0"] == [0, 1, 2]
    assert tap["cv_fallback"] == ["c1"]
    usable = np.array([tap["cv_ap"][n] for n in NAMES if n != "c1"])
    assert tap["chosen_cost"]["c1"] == VISSL_COSTS[int(np.argmax(usable.mean(0)))]
    assert "c1" in tap["ap"]


def test_resume_after_a_crash_gives_identical_metrics(tmp_path, problem, monkeypatch) -> None:
    # res5: fewer dims, so another problem with other numbers
    splits = {split: ({"res4": X, "res5": X[:, :10].copy()}, labels) for split, (X, labels) in problem.items()}
    full = Voc07SvmProtocol().run(make_ctx(tmp_path / "full", ["res4", "res5"], splits), FEW_COSTS)
    assert full.metrics["res4"] != full.metrics["res5"]
    best = max(("res4", "res5"), key=lambda t: full.metrics[t]["mAP"])
    assert full.details["per_image"]["tap"] == best

    class Crashing(PartialState):
        def put(self, key, value):
            if key == "cv:res5":
                raise KeyboardInterrupt
            super().put(key, value)

    path = tmp_path / "state.json"
    with pytest.raises(KeyboardInterrupt):
        Voc07SvmProtocol().run(make_ctx(tmp_path, ["res4", "res5"], splits, Crashing(path)), FEW_COSTS)
    assert set(json.loads(path.read_text())) == {"cv:res4", "tap:res4"}
    fits = []
    original = svm_module.BatchedLinearSVC.fit
    monkeypatch.setattr(svm_module.BatchedLinearSVC, "fit",
                        lambda self, X, Y, mask=None, basis=None:
                        fits.append(Y.shape) or original(self, X, Y, mask, basis))
    resumed = Voc07SvmProtocol().run(make_ctx(tmp_path, ["res4", "res5"], splits, PartialState(path)),
                                     FEW_COSTS)
    assert len(fits) == 2  # res5 only: the CV fit and the refit
    assert resumed.metrics == full.metrics
    assert resumed.details["per_class"] == full.details["per_class"]


def test_liblinear_solver_resumes_per_class(tmp_path, problem, monkeypatch) -> None:
    class Crashing(PartialState):
        def put(self, key, value):
            if key == "cv:res4:c3":
                raise KeyboardInterrupt
            super().put(key, value)

    path = tmp_path / "state.json"
    config = Voc07SvmConfig(solver="liblinear", custom_costs=(0.1, 1.0))
    with pytest.raises(KeyboardInterrupt):
        Voc07SvmProtocol().run(make_ctx(tmp_path, ["res4"], problem, Crashing(path)), config)
    assert set(json.loads(path.read_text())) == {"cv:res4:c0", "cv:res4:c1", "cv:res4:c2"}
    fits = []
    original = svm_module.BatchedLinearSVC.fit
    monkeypatch.setattr(svm_module.BatchedLinearSVC, "fit",
                        lambda self, X, Y, mask=None, basis=None:
                        fits.append(len(self.costs)) or original(self, X, Y, mask, basis))
    resumed = Voc07SvmProtocol().run(make_ctx(tmp_path, ["res4"], problem, PartialState(path)), config)
    chosen = resumed.details["per_class"]["res4"]["chosen_cost"]
    # CV fits over both costs for classes c3..c5 only, then one refit per chosen cost
    assert fits == [2, 2, 2] + [1] * len(set(chosen.values()))
    fresh = Voc07SvmProtocol().run(make_ctx(tmp_path / "fresh", ["res4"], problem), config)
    assert resumed.metrics == fresh.metrics
    assert resumed.details["cost_grid"] == "custom" and resumed.details["costs"] == [0.1, 1.0]


def test_bad_inputs_raise_user_errors(tmp_path, problem) -> None:
    (X, labels), test = problem["trainval"], problem["test"]
    bad = X.copy()
    bad[3, 5] = np.nan
    with pytest.raises(SslBenchError, match="NaN/Inf for 1 of 240"):
        Voc07SvmProtocol().run(make_ctx(tmp_path, ["res4"], {"trainval": (bad, labels), "test": test}),
                               Voc07SvmConfig())
    empty = (np.zeros((0, X.shape[1]), np.float32), np.zeros((0, 6), np.int8))
    with pytest.raises(SslBenchError, match="split 'test' has no images"):
        Voc07SvmProtocol().run(make_ctx(tmp_path, ["res4"], {"trainval": (X, labels), "test": empty}),
                               Voc07SvmConfig())
    no_positive = np.where(test[1] == 1, -1, test[1]).astype(np.int8)
    with pytest.raises(SslBenchError, match="no class has positive"):
        Voc07SvmProtocol().run(make_ctx(tmp_path, ["res4"], {"trainval": (X, labels), "test": (test[0], no_positive)}),
                               Voc07SvmConfig())
    with pytest.raises(SslBenchError, match="multilabel"):
        Voc07SvmProtocol().run(make_ctx(tmp_path, ["res4"], {"trainval": (X, np.zeros(240, np.int64)), "test": test}),
                               Voc07SvmConfig())
    with pytest.raises(SslBenchError, match="no split 'nope'"):
        Voc07SvmProtocol().run(make_ctx(tmp_path, ["res4"], problem), Voc07SvmConfig(test_split="nope"))


def test_config_validation() -> None:
    owner = "protocol 'voc07_svm'"
    config = build_config(Voc07SvmConfig, {"custom_costs": "0.1,1,10", "folds": "4", "costs": "fair"}, owner)
    assert config.custom_costs == (0.1, 1.0, 10.0) and config.folds == 4 and config.costs == "fair"
    for key, value in (("folds", "1"), ("custom_costs", "0,1"), ("costs", "liblinear"), ("solver", "sklearn"),
                       ("train_difficult", "positive"), ("pos_weight", "-2"), ("tol", "0")):
        with pytest.raises(SslBenchError, match=key):
            build_config(Voc07SvmConfig, {key: value}, owner)


def test_through_the_runner_on_generated_voc(tmp_path, voc_root, monkeypatch) -> None:
    """The real pipeline (random resnet18_cifar on generated VOC) against the reference on the same features."""
    from benchmark import features as features_module
    from benchmark.runner import RunOptions, run

    captured = {}
    original = features_module.FeatureExtractor.extract

    def spy(self, dataset, split, taps, transform, transform_id):
        fs = original(self, dataset, split, taps, transform, transform_id)
        captured[split] = (dict(fs.features), np.asarray(fs.labels).copy())
        return fs

    monkeypatch.setattr(features_module.FeatureExtractor, "extract", spy)
    record, path = run(RunOptions(checkpoint="random:resnet18_cifar", protocol="voc07_svm", dataset="voc2007",
                                  data_root=voc_root, taps=("res3", "res5avg"), results_dir=tmp_path))
    assert path.exists() and set(record["metrics"]) == {"res3", "res5avg"}
    assert record["config"]["costs"] == "vissl" and record["config"]["folds"] == 3
    details = record["details"]
    # the reference on res5avg (512 dims; liblinear on res3's 8192 dims takes too long for a unit test)
    (X, labels), (Q, q_labels) = ((captured[s][0]["res5avg"], captured[s][1]) for s in ("trainval", "test"))
    per_class = details["per_class"]["res5avg"]
    # classes trained with their own CV cost (skips and the fallback are tested above)
    classes = [c for c, name in enumerate(VOC_CLASSES)
               if name in per_class["chosen_cost"] and name not in per_class["cv_fallback"]]
    assert len(classes) >= 10
    _, chosen, test_ap, converged = reference_pipeline(X, labels, Q, q_labels, list(VISSL_COSTS), classes=classes)
    same = [c for c in classes if per_class["chosen_cost"][VOC_CLASSES[c]] == chosen[c]]
    assert len(same) >= 0.9 * len(classes)
    # where liblinear stopped at max_iter its refit is not the optimum the batched solver reaches
    compared = [c for c in same if converged[c]]
    assert len(compared) >= 0.75 * len(classes)
    for c in compared:
        assert per_class["ap"][VOC_CLASSES[c]] == pytest.approx(test_ap[c], abs=0.3)
    assert details["per_image"]["tap"] in ("res3", "res5avg")
