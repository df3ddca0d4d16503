"""DeepCluster: PCA whitening against sklearn, empty-cluster reassignment, the weighted loss, labels kept on resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from benchmark.pretrain import PretrainOptions, pretrain
from benchmark.training.state import STATE_NAME
from checkpoints.recipes import deepcluster
from checkpoints.recipes.deepcluster import cluster_features, cluster_loss, fill_empty_clusters, pca_whiten


def blobs(sizes: list[int], dim: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian blobs, their centres 10 apart: points and blob of each point."""
    rng = np.random.default_rng(seed)
    centres = 10 * np.eye(len(sizes), dim)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return (centres[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def test_pca_whitening_matches_sklearn() -> None:
    x = np.random.default_rng(0).normal(size=(200, 12)) @ np.random.default_rng(1).normal(size=(12, 12))
    got = pca_whiten(x.astype(np.float32), 5)
    reference = PCA(n_components=5, whiten=True, svd_solver="full").fit_transform(x)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    signs = np.sign((got * reference).sum(0))  # components are defined up to sign
    np.testing.assert_allclose(got, reference * signs, rtol=0, atol=1e-4)
    assert pca_whiten(x[:4].astype(np.float32), 256).shape == (4, 3)  # capped at the rank of 4 centred points


def test_an_empty_cluster_takes_part_of_a_big_one() -> None:
    x, blob = blobs([30, 20, 10])
    centroids = np.stack([x[blob == c].mean(0) for c in range(3)] + [np.zeros(4, dtype=np.float32)])
    labels = fill_empty_clusters(x, centroids, blob, np.random.default_rng(0))
    assert np.bincount(labels, minlength=4).min() > 0
    moved = labels != blob
    assert (labels[moved] == 3).all() and len(set(blob[moved])) == 1  # one cluster split, into the empty one


def test_identical_points_are_halved_and_several_empty_clusters_filled() -> None:
    x = np.ones((8, 3), dtype=np.float32)  # no centroid perturbation can separate them
    labels = fill_empty_clusters(x, np.ones((4, 3), dtype=np.float32), np.zeros(8, dtype=np.int64),
                                 np.random.default_rng(0))
    assert np.bincount(labels, minlength=4).min() > 0
    with pytest.raises(ValueError, match="cannot fill"):
        fill_empty_clusters(x[:3], np.ones((4, 3), dtype=np.float32), np.zeros(3, dtype=np.int64),
                            np.random.default_rng(0))


def test_clustering_finds_the_blobs_and_is_seeded() -> None:
    x, blob = blobs([40, 30, 20])
    labels = cluster_features(x, 3, pca_dim=3, iterations=20, seed=4)
    assert len({(a, b) for a, b in zip(labels, blob)}) == 3  # the blobs, up to naming
    np.testing.assert_array_equal(labels, cluster_features(x, 3, pca_dim=3, iterations=20, seed=4))
    assert np.bincount(cluster_features(x, 60, pca_dim=3, iterations=5, seed=1), minlength=60).min() > 0


def test_weighted_loss_matches_the_formula() -> None:
    rng = np.random.default_rng(2)
    logits, targets, weights = rng.normal(size=(5, 3)), np.array([0, 2, 2, 1, 0]), np.array([0.5, 2.0, 1.5])
    expected = 0.0
    for row, y in zip(logits, targets):
        expected += weights[y] * -(row[y] - math.log(sum(math.exp(v) for v in row))) / len(targets)
    got = cluster_loss(torch.tensor(logits, dtype=torch.float32), torch.tensor(targets),
                       torch.tensor(weights, dtype=torch.float32))
    assert float(got) == pytest.approx(expected, rel=1e-5)


class Interrupted(Exception):
    pass


def test_pseudo_labels_survive_resume(tmp_path, monkeypatch) -> None:
    """Interrupted mid-epoch, the resumed run trains on the saved labels: it never clusters again."""
    options = dict(recipe="deepcluster", dataset="fashion_mnist", arch="resnet18", epochs=2, limit=64, workers=0,
                   overrides={"batch_size": "32", "clusters": "4", "pca_dim": "8", "save_every": "1"})
    seen = {"n": 0}

    def stop_after_three(iterable, **kwargs):
        for item in iterable:
            seen["n"] += 1
            if seen["n"] > 3:  # epoch 2's first step is done and saved
                raise Interrupted
            yield item

    with pytest.raises(Interrupted):
        pretrain(PretrainOptions(out=tmp_path, **options), progress_factory=stop_after_three)
    saved = torch.load(tmp_path / STATE_NAME, weights_only=True)
    assert saved["position"]["epoch"] == 1 and saved["position"]["batch"] == 1
    assert np.bincount(saved["model"]["labels"].numpy(), minlength=4).min() > 0

    def no_clustering(*args, **kwargs):
        raise AssertionError("a run resumed mid-epoch clustered again")

    monkeypatch.setattr(deepcluster, "cluster_features", no_clustering)
    done = torch.load(pretrain(PretrainOptions(out=tmp_path, resume=True, **options)), weights_only=True)
    assert done["ssl_bench"]["training"]["resumed_from_step"] == 3
    assert torch.equal(done["heads"]["labels"], saved["model"]["labels"])
    assert torch.equal(done["heads"]["weights"], saved["model"]["weights"])
