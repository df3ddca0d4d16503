"""Weighted k-nearest-neighbour classification on frozen features (DINO / VISSL style).

Every test image takes its top-K train neighbours by inner product (cosine
similarity after L2 normalisation); each neighbour votes for its class with
weight exp(sim / T). faiss does the exact search, chunked over the queries so
memory stays bounded; the search runs once at max(ks) and smaller K reuse its
prefix.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import faiss
import numpy as np

from benchmark.config import check_split_fields, is_int
from benchmark.errors import SslBenchError, did_you_mean
from benchmark.features import check_features
from benchmark.protocol import FeatureSet, MetricSpec, Protocol, ProtocolResult, RunContext
from benchmark.registry import PROTOCOLS

GPU_MAX_K = 2048  # faiss GPU flat search selects at most this many neighbours


@dataclasses.dataclass(frozen=True)
class KnnConfig:
    """Settings of the kNN protocol; see PROTOCOLS.md, section knn."""

    ks: tuple[int, ...] = (10, 20, 100, 200)
    temperature: float = 0.07  # DINO; VISSL uses 0.1
    normalize: bool = True  # cosine similarity; VISSL's default searches raw features
    train_split: str | None = None  # None: the dataset's train split
    test_split: str | None = None  # None: the dataset's test split
    chunk_size: int = 1024  # queries per search chunk: bounds memory
    use_gpu: bool = True  # faiss GPU index when faiss has GPUs and CUDA is available

    def __post_init__(self) -> None:
        ks = tuple(self.ks) if isinstance(self.ks, list) else self.ks
        object.__setattr__(self, "ks", ks)
        if (not isinstance(ks, tuple) or not ks
                or not all(is_int(k) and k >= 1 for k in ks)
                or any(a >= b for a, b in zip(ks, ks[1:]))):
            raise ValueError(
                f"ks: expected positive integers in increasing order without repeats, got {self.ks!r}")
        if (not isinstance(self.temperature, (int, float)) or isinstance(self.temperature, bool)
                or not np.isfinite(self.temperature) or self.temperature <= 0):
            raise ValueError(f"temperature: expected a finite number > 0, got {self.temperature!r}")
        if not is_int(self.chunk_size) or self.chunk_size < 1:
            raise ValueError(f"chunk_size: expected an integer >= 1, got {self.chunk_size!r}")
        for name in ("normalize", "use_gpu"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        check_split_fields(self)


def primary_k(config: KnnConfig) -> int:
    """The K whose top-1 is the headline: 20 (DINO's) when asked for, else the smallest."""
    return 20 if 20 in config.ks else config.ks[0]


def gpu_search_available() -> bool:
    """True when this faiss build sees a GPU and torch sees CUDA."""
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return False
    import torch
    return torch.cuda.is_available()


def true_class_rank(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """0-based rank of each true class among the class scores (ties: lower class index first).

    A label outside [0, n_classes) gets rank n_classes, so it is never correct.
    top-n is correct where rank < n; with n >= n_classes every known class is.
    """
    n_classes = scores.shape[1]
    known = (y >= 0) & (y < n_classes)
    safe = np.where(known, y, 0)
    true = scores[np.arange(len(y)), safe][:, None]
    before = np.arange(n_classes)[None, :] < safe[:, None]
    rank = (scores > true).sum(1) + ((scores == true) & before).sum(1)
    return np.where(known, rank, n_classes)


class WeightedKnn:
    """Temperature-weighted kNN vote over a faiss inner-product index (fit/predict, sklearn style)."""

    def __init__(self, k_max: int = 200, temperature: float = 0.07, normalize: bool = True,
                 chunk_size: int = 1024, use_gpu: bool = True) -> None:
        self.k_max = k_max
        self.temperature = temperature
        self.normalize = normalize
        self.chunk_size = chunk_size
        self.use_gpu = use_gpu

    def _prepare(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2:
            raise ValueError(f"expected a 2-D feature array, got shape {X.shape}")
        if self.normalize:
            norms = np.linalg.norm(X, axis=1, keepdims=True)
            X = X / np.maximum(norms, np.float32(1e-12))
        return X

    def fit(self, X: np.ndarray, y: np.ndarray) -> WeightedKnn:
        """Index the train features X (N, D) with int class labels y (N,)."""
        X = self._prepare(X)
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(X) or len(X) == 0:
            raise ValueError(f"expected {len(X)} > 0 labels in a 1-D array, got shape {y.shape}")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise ValueError("labels must be non-negative integer class indices")
        self.k_ = min(self.k_max, len(X))
        index = faiss.IndexFlatIP(X.shape[1])
        index.add(X)
        self.device_ = "cpu"
        if self.use_gpu and self.k_ <= GPU_MAX_K and gpu_search_available():
            self._gpu_resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)
            self.device_ = "gpu"
        self.bank_ = index
        self.labels_ = y.astype(np.int64)
        self.n_classes_ = int(y.max()) + 1
        return self

    def kneighbors(self, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-k_ similarities (N, k_) float32, descending, and train indices (N, k_) int64."""
        Q = self._prepare(Q)
        sims = np.empty((len(Q), self.k_), dtype=np.float32)
        idx = np.empty((len(Q), self.k_), dtype=np.int64)
        for start in range(0, len(Q), self.chunk_size):
            stop = start + self.chunk_size
            sims[start:stop], idx[start:stop] = self.bank_.search(Q[start:stop], self.k_)
        return sims, idx

    def vote(self, sims: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
        """(N, n_classes) float64 scores: the first k neighbours vote with weight exp(sim / T).

        Each row is scaled by exp(-max sim / T) against overflow; rankings are unchanged.
        """
        if not 1 <= k <= self.k_max:
            raise ValueError(f"k: expected 1..{self.k_max}, got {k}")
        k = min(k, sims.shape[1])
        s = sims[:, :k].astype(np.float64)
        weights = np.exp((s - s[:, :1]) / self.temperature)
        n = len(s)
        cells = np.arange(n)[:, None] * self.n_classes_ + self.labels_[idx[:, :k]]
        return np.bincount(cells.ravel(), weights.ravel(),
                           minlength=n * self.n_classes_).reshape(n, self.n_classes_)

    def predict_scores(self, Q: np.ndarray, k: int) -> np.ndarray:
        """Vote scores (N, n_classes) of the queries Q with k neighbours."""
        return self.vote(*self.kneighbors(Q), k)

    def predict(self, Q: np.ndarray, k: int) -> np.ndarray:
        """Predicted class per query (ties: lower class index)."""
        return self.predict_scores(Q, k).argmax(1)


@PROTOCOLS.register("knn")
class KnnProtocol(Protocol):
    """Weighted kNN top-1/top-5 per tap and per K."""

    name = "knn"
    version = "1"
    Config = KnnConfig
    default_dataset = "fashion_mnist"
    default_taps = "last"  # the arch's pooled global feature: res5avg on a ResNet, conv5 on AlexNet
    needs = ("class_labels",)

    def metrics(self, config: KnnConfig, dataset: Any) -> tuple[MetricSpec, ...]:
        """top-1 and top-5 per K; top-1 at K=20 (DINO's headline) is primary when asked for, else the smallest K."""
        primary = primary_k(config)
        return tuple(MetricSpec(f"top{n}_k{k}", primary=n == 1 and k == primary) for k in config.ks for n in (1, 5))

    def run(self, ctx: RunContext, config: KnnConfig) -> ProtocolResult:
        train_split = config.train_split or ctx.dataset.train_split
        test_split = config.test_split or ctx.dataset.test_split
        splits = getattr(ctx.dataset, "splits", None)
        for split in (train_split, test_split):
            if splits is not None and split not in splits:
                raise SslBenchError(
                    f"knn: dataset has no split '{split}'.{did_you_mean(split, splits)} "
                    f"Available: {', '.join(splits)}")
        for tap in ctx.taps:
            if f"tap:{tap}" in ctx.state:
                ctx.log(f"knn: tap {tap} done in an earlier run; reusing it")
        pending = [tap for tap in ctx.taps if f"tap:{tap}" not in ctx.state]
        if pending:  # one trunk forward per split serves every pending tap
            train_set, test_set = ctx.features(train_split, pending), ctx.features(test_split, pending)
        for tap in pending:
            train = _checked(train_set, tap, train_split)
            test = _checked(test_set, tap, test_split)
            ctx.state.put(f"tap:{tap}", self._run_tap(ctx, config, tap, train, test))
        per_tap = {tap: ctx.state.get(f"tap:{tap}") for tap in ctx.taps}
        details: dict[str, Any] = {
            "normalize": config.normalize,
            "similarity": "cosine" if config.normalize else "inner product",
            "temperature": config.temperature,
            "splits": {"train": train_split, "test": test_split},
            "ks_clipped": {t: r["ks_clipped"] for t, r in per_tap.items() if r["ks_clipped"]},
            "search": {t: r["search"] for t, r in per_tap.items()},
            "per_image": {t: block for t, r in per_tap.items() if (block := _per_image_arrays(r["per_image"]))},
        }
        return ProtocolResult({t: r["metrics"] for t, r in per_tap.items()}, details)

    def _run_tap(self, ctx: RunContext, config: KnnConfig, tap: str,
                 train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
                 ) -> dict[str, Any]:
        """Metrics and details of one tap, JSON-ready (this is what resume stores)."""
        (X, y), (Q, q_labels) = train, test
        if X.shape[1] != Q.shape[1]:
            raise SslBenchError(
                f"knn: tap '{tap}' has {X.shape[1]} dims on the train split but {Q.shape[1]} "
                "on the test split; clear the feature cache and rerun")
        knn = WeightedKnn(max(config.ks), config.temperature, config.normalize,
                          config.chunk_size, config.use_gpu).fit(X, y)
        ranks = {k: np.empty(len(Q), dtype=np.int64) for k in config.ks}
        starts = range(0, len(Q), config.chunk_size)
        for start in ctx.progress(starts, desc=f"knn {tap}", total=len(starts)):
            stop = start + config.chunk_size
            sims, idx = knn.kneighbors(Q[start:stop])
            for k in config.ks:
                ranks[k][start:stop] = true_class_rank(knn.vote(sims, idx, k), q_labels[start:stop])
        correct = {f"top{n}_k{k}": ranks[k] < n for k in config.ks for n in (1, 5)}
        return {
            "metrics": {name: 100.0 * float(np.mean(hits)) for name, hits in correct.items()},
            "ks_clipped": {str(k): knn.k_ for k in config.ks if k > knn.k_},
            "search": {"index": "IndexFlatIP", "device": knn.device_,
                       "n_train": len(X), "n_test": len(Q)},
            "per_image": {"n_images": len(Q),
                          "correct_bits": {name: np.packbits(hits).tolist() for name, hits in correct.items()}},
        }


def _per_image_arrays(per_image: dict[str, Any] | None) -> dict[str, Any] | None:
    """A tap's per-image block as the record keeps it: every metric's correctness packed in uint8 bits.

    None for a partial state of an older release (no packed bits): that tap gets no intervals.
    """
    if not per_image or "correct_bits" not in per_image:
        return None
    return {"n_images": per_image["n_images"],
            "correct_bits": {name: np.asarray(bits, dtype=np.uint8)
                             for name, bits in per_image["correct_bits"].items()}}


def _checked(fs: FeatureSet, tap: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of one tap and split, or SslBenchError when they cannot be used."""
    X = np.asarray(fs.features[tap])
    y = np.asarray(fs.labels)
    if len(X) == 0:
        raise SslBenchError(f"knn: split '{split}' has no images; check --data-root and the split lists")
    check_features(X, y, tap=tap, split=split)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise SslBenchError(
            f"knn: split '{split}' needs one class index >= 0 per image (got labels of shape "
            f"{y.shape}, dtype {y.dtype}); knn supports multiclass datasets only")
    return X, y
