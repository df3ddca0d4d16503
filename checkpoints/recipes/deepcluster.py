"""DeepCluster v1 (Caron et al. 2018): cluster the trunk's features each epoch, train it to predict the clusters.

Before each epoch the model extracts res5avg of the whole training split with
the current trunk in eval mode, reduces it by PCA to 256 whitened, L2-normalised
dimensions, runs faiss k-means (rank 0; the labels go to every process), fills
any empty cluster by splitting a big one, stores the pseudo-labels in a buffer
and re-initialises the linear classifier on res5avg (for ResNets; the paper's
AlexNet classifies with its fc6-fc7 top). The paper samples images uniformly
over clusters; here the sampler is the engine's, and with `balance_clusters`
each image's loss is weighted by N / (k |its cluster|), the same objective in
expectation. The paper's code trains the fresh classifier with its own
momentum-free SGD made anew each epoch; here it shares the engine's optimiser,
so its momentum buffer carries over the re-initialisation (it fades at 0.9 a
step).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision import transforms

from benchmark.distributed import all_gather_objects, is_distributed, is_main_process
from benchmark.errors import SslBenchError
from benchmark.protocol import InputSpec
from benchmark.registry import RECIPES
from benchmark.training import TrainSpec
from checkpoints.models import Backbone
from checkpoints.recipes.augment import Views
from checkpoints.recipes.base import Recipe, RecipeConfig, RecipeModel, feature_dim, pooled


@dataclasses.dataclass(frozen=True)
class DeepclusterConfig(RecipeConfig):
    """The paper's settings (AlexNet, kept for ResNets): batch 256, SGD lr 0.05 per 256 held constant, momentum 0.9,
    wd 1e-5 on every parameter, 500 epochs; k-means (20 iterations) into 10000 clusters of PCA-256 features."""

    epochs: int = 500
    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.05
    weight_decay: float = 1e-5
    schedule: str = "constant"
    clusters: int = 10000
    pca_dim: int = 256
    kmeans_iterations: int = 20
    balance_clusters: bool = True  # weight the loss as uniform sampling over clusters would
    extract_batch_size: int = 256  # images per forward of the per-epoch feature extraction
    extract_workers: int = 0  # data-loading processes of that extraction

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("clusters", "pca_dim", "kmeans_iterations", "extract_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(self, name)!r}")
        if self.extract_workers < 0:
            raise ValueError(f"extract_workers: expected an integer >= 0, got {self.extract_workers!r}")

    def train_spec(self, seed: int, sync_bn: bool = True) -> TrainSpec:
        """Weight decay on BN and biases too, as the paper's code decays every parameter."""
        spec = super().train_spec(seed, sync_bn)
        return dataclasses.replace(spec, optim=dataclasses.replace(spec.optim, no_decay_norm_and_bias=False))


def pca_whiten(features: np.ndarray, dims: int) -> np.ndarray:
    """Project on the top `dims` principal components, whiten (unit variance each), L2-normalise rows (float32).

    dims is capped at the input's width and at N - 1 (the rank of centred data);
    eigenvalues are floored at 1e-9 of the largest so a rank-deficient
    covariance stays finite.
    """
    x = np.asarray(features, dtype=np.float32)
    dims = min(dims, x.shape[1], max(1, len(x) - 1))
    mean = x.mean(0, dtype=np.float64)
    covariance = np.zeros((x.shape[1], x.shape[1]))
    for start in range(0, len(x), 65536):
        chunk = x[start:start + 65536] - mean.astype(np.float32)
        covariance += chunk.T @ chunk
    values, vectors = np.linalg.eigh(covariance / len(x))
    values, vectors = values[::-1][:dims], vectors[:, ::-1][:, :dims]
    scale = 1 / np.sqrt(np.maximum(values, values[0] * 1e-9))
    projection = (vectors * scale).astype(np.float32)
    out = (x - mean.astype(np.float32)) @ projection
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(out, dtype=np.float32)


def fill_empty_clusters(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                        eps: float = 1 / 1024) -> np.ndarray:
    """Labels with no empty cluster: each empty one takes part of a big one, as the paper (and faiss) reassign.

    A cluster to split is drawn with probability proportional to its size - 1;
    its centroid c becomes c(1 + eps s) and the empty one's c(1 - eps s) (s
    alternating +-1 over dimensions) and its members go to the nearer of the
    two; should every member stay on one side, the half nearest the new centroid
    moves. Needs at least as many points as clusters.
    """
    labels, centroids = labels.copy(), centroids.copy()
    k = len(centroids)
    if len(x) < k:
        raise ValueError(f"{len(x)} points cannot fill {k} clusters")
    counts = np.bincount(labels, minlength=k)
    signs = np.where(np.arange(x.shape[1]) % 2 == 0, 1.0, -1.0)
    for empty in np.flatnonzero(counts == 0):
        splittable = np.maximum(counts - 1, 0).astype(np.float64)
        big = int(rng.choice(k, p=splittable / splittable.sum()))
        members = np.flatnonzero(labels == big)
        kept, moved = centroids[big] * (1 + eps * signs), centroids[big] * (1 - eps * signs)
        nearer_moved = ((x[members] - moved) ** 2).sum(1) - ((x[members] - kept) ** 2).sum(1)
        goes = nearer_moved < 0
        if goes.all() or not goes.any():
            goes = np.zeros(len(members), dtype=bool)
            goes[np.argsort(nearer_moved, kind="stable")[:len(members) // 2]] = True
        labels[members[goes]] = empty
        centroids[big], centroids[empty] = kept, moved
        counts[empty], counts[big] = goes.sum(), counts[big] - goes.sum()
    return labels


def cluster_features(features: np.ndarray, clusters: int, pca_dim: int, iterations: int, seed: int) -> np.ndarray:
    """DeepCluster's assignment: PCA-whitened, L2-normalised features, faiss k-means, no cluster left empty."""
    import faiss

    x = pca_whiten(features, pca_dim)
    kmeans = faiss.Kmeans(x.shape[1], clusters, niter=iterations, seed=seed, max_points_per_centroid=10_000_000,
                          min_points_per_centroid=1, verbose=False)
    kmeans.train(x)
    _, nearest = kmeans.index.search(x, 1)
    return fill_empty_clusters(x, kmeans.centroids, nearest[:, 0].astype(np.int64), np.random.default_rng(seed))


def cluster_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of weights[y] x cross-entropy(logits, y)."""
    losses = F.cross_entropy(logits.float(), targets, reduction="none")
    return (weights[targets] * losses).mean()


@dataclasses.dataclass
class ClusterSource:
    """What the model clusters each epoch: the training split under its eval transform (given by Recipe.views)."""

    dataset: Any = None
    transform: Any = None


class DeepclusterModel(RecipeModel):
    def __init__(self, trunk: Backbone, config: DeepclusterConfig, dataset_size: int, source: ClusterSource) -> None:
        super().__init__()
        if config.clusters > dataset_size:
            raise SslBenchError(f"deepcluster: {config.clusters} clusters for {dataset_size} training images; "
                                f"pass --set clusters=N with N <= {dataset_size}")
        self.trunk = trunk
        self.classifier = nn.Linear(feature_dim(trunk), config.clusters)
        self.config = config
        self.source = source
        self.register_buffer("labels", torch.zeros(dataset_size, dtype=torch.long))  # image -> its cluster
        self.register_buffer("weights", torch.ones(config.clusters))  # cluster -> loss weight
        # every process sets the same buffers in on_epoch_start: no broadcast of N labels before each forward
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, ["labels", "weights"])

    def forward(self, views: tuple[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        return cluster_loss(self.classifier(pooled(self.trunk, views[0])), self.labels[index], self.weights)

    def on_epoch_start(self, epoch: int) -> None:
        """Cluster the current features into pseudo-labels and start a fresh classifier."""
        features = self._features()
        if len(features) != len(self.labels):
            raise RuntimeError(f"deepcluster: {len(features)} features for a model built for {len(self.labels)} images")
        seed = int(torch.randint(1 << 31, ()))  # drawn on every process, so their global RNGs stay in step
        labels = None
        if is_main_process():
            labels = cluster_features(features, self.config.clusters, self.config.pca_dim,
                                      self.config.kmeans_iterations, seed)
        labels = all_gather_objects(labels)[0]
        self.labels.copy_(torch.from_numpy(labels))
        if self.config.balance_clusters:
            counts = np.bincount(labels, minlength=self.config.clusters)
            self.weights.copy_(torch.from_numpy(len(labels) / (self.config.clusters * counts)))
        with torch.no_grad():
            self.classifier.weight.normal_(0, 0.01)
            self.classifier.bias.zero_()
            if is_distributed():
                for tensor in (self.classifier.weight, self.classifier.bias):
                    dist.broadcast(tensor, src=0)

    def _features(self) -> np.ndarray:
        """res5avg of the whole training split with the current trunk (eval mode), sharded and gathered."""
        from benchmark.features import FeatureExtractor

        source = self.source
        if source.dataset is None:
            raise RuntimeError("deepcluster: call the recipe's views() before training, it names the data to cluster")
        amp = {"auto": None, "off": False}.get(self.config.amp, True)
        extractor = FeatureExtractor(self.trunk, "deepcluster", next(self.trunk.parameters()).device, cache_dir=None,
                                     batch_size=self.config.extract_batch_size,
                                     workers=self.config.extract_workers, amp=amp)
        found = extractor.extract(source.dataset, source.dataset.train_split, ["res5avg"], source.transform,
                                  "deepcluster")
        return found.features["res5avg"]


@RECIPES.register("deepcluster")
class Deepcluster(Recipe):
    """DeepCluster: k-means pseudo-labels of the trunk's own features, re-clustered each epoch (Caron et al., ECCV 2018)."""

    name = "deepcluster"
    paper = "Caron, Bojanowski, Joulin, Douze. Deep Clustering for Unsupervised Learning of Visual Features. ECCV 2018"
    Config = DeepclusterConfig
    test_settings = {"clusters": 4, "pca_dim": 16}  # 32-128 images on the CPU

    def __init__(self) -> None:
        self.source = ClusterSource()

    def build(self, trunk: Backbone, config: DeepclusterConfig, dataset_size: int) -> DeepclusterModel:
        return DeepclusterModel(trunk, config, dataset_size, self.source)

    def views(self, config: DeepclusterConfig, input_spec: InputSpec, dataset: Any) -> Views:
        """One view: RandomResizedCrop and flip (the paper's code); the model clusters under the eval transform."""
        self.source.dataset = dataset
        self.source.transform = input_spec.eval_transform(dataset)
        return Views(transforms.Compose([
            transforms.RandomResizedCrop(input_spec.size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(input_spec.mean, input_spec.std),
        ]))
