"""One trunk forward -> every requested tap, pooled to about 9k dims, with a content-addressed disk cache."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.data

from benchmark import distributed
from benchmark.accel import AmpPolicy, eval_loader, eval_mode, worker_errors
from benchmark.atomic import replacing
from benchmark.errors import SslBenchError
from benchmark.protocol import FeatureSet

if TYPE_CHECKING:
    from benchmark.data.base import ImageDataset
    from checkpoints.models import Backbone, Tap

EXTRACTOR_VERSION = "1"
TARGET_DIMS = 9216

# PROTOCOLS.md: FAIR's average-pooling (kernel, stride, padding) per tap, for one architecture and input size.
FAIR_POOLING: dict[tuple[str, int], dict[str, tuple[int, int, int]]] = {
    ("resnet50", 224): {"conv1": (10, 10, 4), "res2": (16, 8, 0), "res3": (13, 5, 0),
                        "res4": (8, 3, 0), "res5": (6, 1, 0)},
    ("alexnet", 227): {"conv1": (19, 4, 0), "conv2": (12, 3, 0), "conv3": (9, 1, 0),
                       "conv4": (9, 1, 0), "conv5": (8, 1, 0)},
}


@dataclasses.dataclass(frozen=True)
class PoolSpec:
    """How one tap's map becomes a vector: fixed average pooling, adaptive to a grid, or none."""

    kind: Literal["avg", "adaptive", "none"]
    kernel: int = 0
    stride: int = 0
    padding: int = 0
    grid: int = 0

    def describe(self) -> str:
        """A stable text form, written into results and cache keys."""
        if self.kind == "avg":
            return f"avg_pool2d(kernel={self.kernel}, stride={self.stride}, padding={self.padding})"
        if self.kind == "adaptive":
            return f"adaptive_avg_pool2d({self.grid}x{self.grid})"
        return "none"

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Pool a (B, C, H, W) map (or pass a (B, C) vector) and flatten to float32 (B, D)."""
        x = x.float()
        if self.kind == "avg":
            x = F.avg_pool2d(x, self.kernel, self.stride, self.padding)
        elif self.kind == "adaptive":
            x = F.adaptive_avg_pool2d(x, self.grid)
        return x.flatten(1)


def pooling_for(arch: str, input_size: int, tap: Tap) -> PoolSpec:
    """FAIR's kernels for resnet50 at 224 px and alexnet at 227 px; otherwise adaptive pooling to ~9k dims.

    The adaptive grid is g = max(1, floor(sqrt(9216 / C))), capped at the map size
    ceil(input_size / stride) so that a small map is never upsampled. Taps of
    stride 0 are already pooled.
    """
    if tap.stride == 0:
        return PoolSpec("none")
    fixed = FAIR_POOLING.get((arch, input_size), {}).get(tap.name)
    if fixed is not None:
        kernel, stride, padding = fixed
        return PoolSpec("avg", kernel=kernel, stride=stride, padding=padding)
    grid = max(1, math.isqrt(TARGET_DIMS // tap.channels))
    if input_size > 0:
        grid = min(grid, math.ceil(input_size / tap.stride))
    return PoolSpec("adaptive", grid=grid)


def cache_key(checkpoint_digest: str, dataset_digest: str, split: str, tap: str, transform_id: str,
              pooling: str, limit: int | None) -> str:
    """sha256 naming one cached (N, D) feature matrix."""
    payload = {"checkpoint": checkpoint_digest, "dataset": dataset_digest, "split": split, "tap": tap,
               "transform": transform_id, "pooling": pooling, "extractor": EXTRACTOR_VERSION, "limit": limit}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def check_features(X: np.ndarray, y: np.ndarray, tap: str | None = None, split: str | None = None) -> None:
    """SslBenchError unless X is a finite 2-D matrix with one row per label."""
    where = "".join([f" of tap '{tap}'" if tap else "", f" on split '{split}'" if split else ""])
    X = np.asarray(X)
    if X.ndim != 2:
        raise SslBenchError(f"features{where} have shape {X.shape}, expected (N, D); "
                            "pool or flatten them before evaluation")
    if len(X) != len(y):
        raise SslBenchError(f"features{where} have {len(X)} rows but there are {len(y)} labels; "
                            "clear the feature cache and extract again")
    finite = np.isfinite(X).all(axis=1)
    if not finite.all():
        raise SslBenchError(f"features{where} are NaN/Inf for {int((~finite).sum())} of {len(X)} images; "
                            "check the checkpoint weights and the input normalisation")


class FeatureExtractor:
    """Extracts pooled taps of a backbone, one forward per batch for all taps, cached on disk."""

    def __init__(self, backbone: Backbone, checkpoint_digest: str, device: torch.device,
                 cache_dir: Path | None, batch_size: int = 64, workers: int = 0, amp: bool | None = None,
                 progress: Callable[..., Any] | None = None) -> None:
        self.backbone = backbone
        self.checkpoint_digest = checkpoint_digest
        self.device = torch.device(device)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.batch_size = batch_size
        self.workers = workers
        self.policy = AmpPolicy.for_device(self.device, "auto" if amp is None else "bf16" if amp else "off")
        self.progress = progress
        self.input_size = backbone.input_size
        self.arch = getattr(backbone, "arch", type(backbone).__name__)

    def pooling(self, tap: str, input_size: int | None = None) -> PoolSpec:
        """The pooling of `tap` at `input_size` (default: the size of the last extracted images)."""
        return pooling_for(self.arch, self.input_size if input_size is None else input_size,
                           self.backbone.tap(tap))

    def extract(self, dataset: ImageDataset, split: str, taps: Sequence[str], transform: Any,
                transform_id: str) -> FeatureSet:
        """Pooled float32 features of every tap on `split`, computing only what the cache lacks."""
        taps = tuple(dict.fromkeys(taps))
        images = dataset.open_split(split, transform)
        ids = dataset.ids(split)
        labels = dataset.labels(split)
        if len(images) == 0:
            raise SslBenchError(f"split '{split}' of dataset '{dataset.name}' is empty; "
                                "check --data-root and --limit")
        if len(images) != len(ids) or len(labels) != len(ids):
            raise RuntimeError(f"dataset '{dataset.name}' split '{split}': {len(images)} images, "
                               f"{len(ids)} ids, {len(labels)} labels")
        self.input_size = _input_size(images)
        specs, keys = self._specs_and_keys(dataset, split, taps, transform_id)
        paths = {tap: self._cache_path(keys[tap]) for tap in taps}
        features = {tap: array for tap in taps
                    if (array := _load(paths[tap], len(ids))) is not None}
        local_missing = [tap for tap in taps if tap not in features]
        missing_anywhere = set().union(*distributed.all_gather_objects(local_missing))
        missing = [tap for tap in taps if tap in missing_anywhere]
        if missing:
            computed = self._compute(images, split, missing, specs)
            features.update(computed)
            if distributed.is_main_process():
                for tap, array in computed.items():
                    _save(paths[tap], array)
        return FeatureSet(features={tap: features[tap] for tap in taps}, labels=labels, ids=list(ids))

    def extract_rows(self, dataset: ImageDataset, split: str, taps: Sequence[str], transform: Any,
                     transform_id: str, rows: Sequence[int]) -> FeatureSet:
        """Pooled float32 features of the images at positions `rows` of `split` only, in that order: the rows
        a full extraction would give there. Cached per image (one file per image and tap), so that other
        subsets of the split reuse them; only images missing for some tap go through the network."""
        taps = tuple(dict.fromkeys(taps))
        images = dataset.open_split(split, transform)
        ids, labels = dataset.ids(split), np.asarray(dataset.labels(split))
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1 or len(rows) == 0 or rows.min() < 0 or rows.max() >= len(ids):
            raise SslBenchError(f"features of split '{split}' of dataset '{dataset.name}': expected a non-empty "
                                f"list of image positions in 0..{len(ids) - 1}, got {len(rows)} positions")
        self.input_size = _input_size(images)
        specs, keys = self._specs_and_keys(dataset, split, taps, transform_id)
        folders = {tap: self._row_folder(keys[tap]) for tap in taps}
        cached = {tap: [_load_row(folders[tap], int(row)) for row in rows] for tap in taps}
        local_missing = sorted({i for tap in taps for i, row in enumerate(cached[tap]) if row is None})
        missing = sorted(set().union(*distributed.all_gather_objects(local_missing)))
        if missing:
            computed = self._compute(_Subset(images, rows[missing]), split, list(taps), specs)
            for tap, array in computed.items():
                for i, row in zip(missing, array):
                    cached[tap][i] = row
                    if distributed.is_main_process():
                        _save(_row_path(folders[tap], int(rows[i])), row[None])
        return FeatureSet(features={tap: np.stack([row.reshape(-1) for row in cached[tap]]) for tap in taps},
                          labels=labels[rows], ids=[ids[row] for row in rows])

    def _specs_and_keys(self, dataset: ImageDataset, split: str, taps: Sequence[str],
                        transform_id: str) -> tuple[dict[str, PoolSpec], dict[str, str]]:
        """Every tap's pooling (at the current input size) and the cache key of its features on `split`."""
        specs = {tap: self.pooling(tap) for tap in taps}
        digest = dataset.digest()
        return specs, {tap: cache_key(self.checkpoint_digest, digest, split, tap, transform_id, specs[tap].describe(),
                                      dataset.limit) for tap in taps}

    def _row_folder(self, key: str) -> Path | None:
        return self.cache_dir / "rows" / key if self.cache_dir is not None else None

    def _cache_path(self, key: str) -> Path | None:
        return self.cache_dir / f"{key}.npy" if self.cache_dir is not None else None

    def _compute(self, images: torch.utils.data.Dataset, split: str, taps: list[str],
                 specs: dict[str, PoolSpec]) -> dict[str, np.ndarray]:
        total = len(images)
        loader, rows = eval_loader(images, self.batch_size, self.workers, self.device)
        indices = np.empty(rows, dtype=np.int64)
        out: dict[str, np.ndarray] = {}
        batches: Any = loader
        if self.progress is not None and distributed.is_main_process():
            batches = self.progress(loader, desc=f"features {split} [{', '.join(taps)}]", total=len(loader))
        position = 0
        self.policy.prepare_model(self.backbone)
        with eval_mode(self.backbone), torch.inference_mode(), worker_errors():
            for x, index in batches:
                x = self.policy.prepare_input(x, self.device)
                with self.policy.autocast():
                    maps = self.backbone.forward_taps(x, taps)
                end = position + len(x)
                for tap in taps:
                    pooled = specs[tap].apply(maps[tap]).cpu().numpy()
                    if tap not in out:
                        out[tap] = np.empty((rows, pooled.shape[1]), dtype=np.float32)
                    out[tap][position:end] = pooled
                del maps
                indices[position:end] = index.numpy()
                position = end
        if position != rows:
            raise RuntimeError(f"the loader gave {position} images for {rows} expected")
        return {tap: distributed.gather_rows(array, indices, total) for tap, array in out.items()}


class _Subset(torch.utils.data.Dataset):
    """Items rows[j] of a split as item j: (image, j), the layout _compute expects."""

    def __init__(self, images: torch.utils.data.Dataset, rows: np.ndarray) -> None:
        self.images, self.rows = images, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j: int) -> tuple[Any, int]:
        return self.images[int(self.rows[j])][0], j


def _row_path(folder: Path | None, row: int) -> Path | None:
    """Where image `row`'s cached feature row lives: a thousand files per subfolder."""
    return folder / f"{row // 1000:04d}" / f"{row}.npy" if folder is not None else None


def _load_row(folder: Path | None, row: int) -> np.ndarray | None:
    """A cached (1, D) row of one image, or None."""
    return _load(_row_path(folder, row), 1)


def _input_size(images: torch.utils.data.Dataset) -> int:
    """Side of the (square) transformed images, from the first item; 0 when they are not square."""
    first = images[0][0]
    height, width = first.shape[-2:]
    return int(height) if height == width else 0


def _load(path: Path | None, rows: int) -> np.ndarray | None:
    """A cached matrix with `rows` rows, or None when absent or unreadable (it is then recomputed)."""
    if path is None or not path.is_file():
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if array.ndim != 2 or array.shape[0] != rows or array.dtype != np.float32:
        return None
    return array


def _save(path: Path | None, array: np.ndarray) -> None:
    """Write atomically (a temporary file in the same folder, then a rename), with the umask's permissions."""
    if path is None:
        return
    with replacing(path) as tmp, tmp.open("wb") as handle:
        np.save(handle, array, allow_pickle=False)
