"""`--limit N`: a seeded subset in which the classes take turns, the same rule on every dataset, recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmark.data.subset import balanced_subset
from benchmark.data.synthetic import make_data, write_folder
from benchmark.registry import DATASETS
from test_cli import knn_args, run_cli


def assert_max_min_fair(labels: np.ndarray, kept: np.ndarray, limit: int) -> None:
    """Brute force over class pairs: a class lags another by two or more only when it has no image left."""
    available = np.bincount(labels)
    counts = np.bincount(labels[kept], minlength=len(available))
    assert counts.sum() == limit and len(set(kept.tolist())) == limit
    for a in range(len(counts)):
        for b in range(len(counts)):
            assert counts[a] >= counts[b] - 1 or counts[a] == available[a], (a, b, counts, available)


@pytest.mark.parametrize("sizes, limit", [([20, 20, 20, 20], 40), ([3, 30, 9], 20), ([5, 5], 7), ([1, 50], 50)])
def test_multiclass_subsets_are_fair_sorted_and_seeded(sizes, limit):
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(len(sizes)), sizes))
    kept = balanced_subset(labels, limit, seed=0)
    assert np.all(np.diff(kept) > 0)
    assert_max_min_fair(labels, kept, limit)
    assert np.array_equal(kept, balanced_subset(labels, limit, seed=0))
    assert any(not np.array_equal(kept, balanced_subset(labels, limit, seed=s)) for s in range(1, 4))
    assert np.array_equal(balanced_subset(labels, None, seed=0), np.arange(len(labels)))
    assert np.array_equal(balanced_subset(labels, len(labels) + 5, seed=0), np.arange(len(labels)))


def test_multilabel_subset_shows_every_class_and_fills_with_unlabelled_images():
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 6)) < np.array([0.02, 0.05, 0.3, 0.5, 0.5, 0.6])).astype(np.int8)
    labels[:, 0][labels[:, 0] == 0] = -1 * (rng.random((labels[:, 0] == 0).sum()) < 0.1)  # difficult-only marks
    kept = balanced_subset(labels, 12, seed=3)
    present = [c for c in range(6) if (labels[:, c] == 1).any()]
    assert all((labels[kept, c] == 1).any() for c in present)
    everything_but_one = balanced_subset(labels, 199, seed=3)
    assert len(everything_but_one) == 199 and len(set(everything_but_one.tolist())) == 199
    no_classes = balanced_subset(np.zeros((30, 0), dtype=np.int8), 10, seed=2)
    assert len(no_classes) == 10 and np.all(np.diff(no_classes) > 0)


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path | None]:
    base = tmp_path_factory.mktemp("limit")
    return {"voc2007": make_data("voc", base / "voc"), "nyuv2": make_data("nyuv2", base / "nyu"),
            "folder": write_folder(base / "folder", seed=0, n_classes=4, per_class=10, size=16),
            "places205": make_data("places205", base / "places"), "fashion_mnist": None}


@pytest.mark.parametrize("name", ["voc2007", "nyuv2", "folder", "places205", "fashion_mnist"])
def test_every_dataset_limits_with_the_same_rule_and_records_it(roots, name):
    cls = DATASETS.get(name)
    full, limited = cls(roots[name]), cls(roots[name], limit=6, seed=5)
    split = full.test_split
    ids = full.ids(split)
    kept = np.asarray([ids.index(i) for i in limited.ids(split)])
    assert np.array_equal(kept, balanced_subset(full.labels(split), 6, seed=5))
    np.testing.assert_array_equal(limited.labels(split), full.labels(split)[kept])
    if full.labels(split).ndim == 1:
        assert_max_min_fair(full.labels(split), kept, 6)
    assert limited.ids(split) != cls(roots[name], limit=6, seed=6).ids(split) or len(ids) <= 6
    described = limited.describe()
    assert (described["limit"], described["limit_rule"], described["limit_seed"]) == (6, "class-balanced", 5)
    assert described["digest"] != full.describe()["digest"]
    assert "limit_seed" not in full.describe()


def test_limit_on_a_sorted_folder_takes_every_class(capsys, tmp_path, monkeypatch):
    """The issue's case: 40 images of a class-sorted folder used to be all class_00."""
    import benchmark.features

    root = write_folder(tmp_path / "folder", seed=0, n_classes=4, per_class=20, size=16)
    seen = {}
    original = benchmark.features.FeatureExtractor.extract

    def spy(self, dataset, split, *args, **kwargs):
        features = original(self, dataset, split, *args, **kwargs)
        seen[split] = np.asarray(features.labels)
        return features

    monkeypatch.setattr(benchmark.features.FeatureExtractor, "extract", spy)
    code, _, err = run_cli(capsys, *knn_args("random:resnet18_cifar", root, tmp_path / "r", "--taps", "res5avg",
                                             "--limit", "40", "--seed", "3"))
    assert code == 0, err
    assert np.bincount(seen["train"]).tolist() == [10, 10, 10, 10]
    assert np.bincount(seen["val"]).tolist() == [10, 10, 10, 10]
    record = json.loads(next((tmp_path / "r").rglob("knn.json")).read_text())
    dataset = record["dataset"]
    assert (dataset["limit"], dataset["limit_rule"], dataset["limit_seed"]) == (40, "class-balanced", 3)
    assert dataset["splits"] == {"train": 40, "val": 40}
