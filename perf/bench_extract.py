"""Feature extraction on the CPU: throughput vs a bare forward, cache speed-up, peak memory vs image count.

    python perf/bench_extract.py [--arch resnet18] [--images 512] [--batch-size 32] [--size 112]

Prints one `name=value (target ...)` line per figure.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.data.base import ImageDataset
from benchmark.features import FeatureExtractor
from checkpoints.models import Backbone, build_backbone

SPLIT = "bench"


class RandomImages(ImageDataset):
    """Seeded noise images: held in memory (no decoding cost), or drawn per item so they take no memory."""

    name = "bench_random"
    task = "multiclass"
    splits = (SPLIT,)
    train_split = test_split = SPLIT

    def __init__(self, n: int, size: int, in_memory: bool = True) -> None:
        super().__init__(None)
        self.n, self.size = n, size
        self.images = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0)) if in_memory else None

    @property
    def classes(self) -> list[str]:
        return ["noise"]

    def ids(self, split: str) -> list[str]:
        return [str(i) for i in range(self.n)]

    def labels(self, split: str) -> np.ndarray:
        return np.zeros(self.n, dtype=np.int64)

    def open_split(self, split: str, transform: Any) -> torch.utils.data.Dataset:
        if self.images is not None:
            return torch.utils.data.TensorDataset(self.images, torch.arange(self.n))
        return _DrawnImages(self.n, self.size)

    def digest(self) -> str:
        return hashlib.sha256(f"{self.n}/{self.size}".encode()).hexdigest()


class _DrawnImages(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.randn(3, self.size, self.size, generator=torch.Generator().manual_seed(i)), i


def strided_taps(net: Backbone) -> tuple[str, ...]:
    """The spatial taps (conv1, res2..res5 or conv1..conv5), shallow to deep."""
    return tuple(t.name for t in net.taps if t.stride > 0)


def bare_forward_seconds(net: Backbone, images: torch.utils.data.Dataset, batch_size: int, deepest: str) -> float:
    """One pass of the trunk up to `deepest` over the same loader, no pooling, no copies."""
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False)
    net.eval()
    started = time.perf_counter()
    with torch.inference_mode():
        for x, _ in loader:
            net.forward_taps(x, [deepest])
    return time.perf_counter() - started


def extract_seconds(net: Backbone, data: RandomImages, taps: tuple[str, ...], batch_size: int,
                    cache_dir: Path | None) -> float:
    extractor = FeatureExtractor(net, "bench", torch.device("cpu"), cache_dir, batch_size=batch_size)
    started = time.perf_counter()
    extractor.extract(data, SPLIT, taps, None, "bench")
    return time.perf_counter() - started


def feature_dims(net: Backbone, taps: tuple[str, ...], size: int, batch_size: int) -> int:
    fs = FeatureExtractor(net, "bench", torch.device("cpu"), None, batch_size=batch_size).extract(
        RandomImages(batch_size, size), SPLIT, taps, None, "bench")
    return sum(a.shape[1] for a in fs.features.values())


def memory_probe(args: argparse.Namespace) -> None:
    """Child process: peak RSS growth (MB) of extracting --memory-probe drawn images after a one-batch warm-up.

    Linux: the peak is VmHWM of /proc/self/status (ru_maxrss would carry the parent's
    peak across fork+exec), reset through /proc/self/clear_refs after the warm-up.
    """
    torch.manual_seed(0)
    net = build_backbone(args.arch)
    taps = strided_taps(net)
    feature_dims(net, taps, args.size, args.batch_size)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_mb("VmRSS")
    extract_seconds(net, RandomImages(args.memory_probe, args.size, in_memory=False), taps, args.batch_size, None)
    print(_status_mb("VmHWM") - before)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_growth_mb(args: argparse.Namespace, images: int) -> float:
    command = [sys.executable, __file__, "--arch", args.arch, "--size", str(args.size),
               "--batch-size", str(args.batch_size), "--memory-probe", str(images)]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the fastest counts")
    parser.add_argument("--memory-probe", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        memory_probe(args)
        return

    torch.manual_seed(0)
    net = build_backbone(args.arch)
    taps = strided_taps(net)
    data = RandomImages(args.images, args.size)
    images = data.open_split(SPLIT, None)
    dims = feature_dims(net, taps, args.size, args.batch_size)  # also the warm-up
    print(f"arch={args.arch} size={args.size} images={args.images} batch={args.batch_size} "
          f"threads={torch.get_num_threads()} taps={','.join(taps)} feature_dims={dims}")

    forward_times, extract_times = [], []
    for _ in range(args.repeats):  # interleaved, so load from other processes hits both alike
        forward_times.append(bare_forward_seconds(net, images, args.batch_size, taps[-1]))
        extract_times.append(extract_seconds(net, data, taps, args.batch_size, None))
    forward, extract = min(forward_times), min(extract_times)
    print(f"forward_images_per_s={args.images / forward:.1f}")
    print(f"extract_images_per_s={args.images / extract:.1f}")
    print(f"extract_vs_forward_ratio={forward / extract:.2f} (target >= 0.85)")

    with tempfile.TemporaryDirectory() as cache:
        first = extract_seconds(net, data, taps, args.batch_size, Path(cache))
        second = extract_seconds(net, data, taps, args.batch_size, Path(cache))
    print(f"cached_seconds={second:.3f} uncached_seconds={first:.3f}")
    print(f"cached_speedup={first / second:.0f}x (target >= 20x)")

    small, large = args.images // 2, args.images * 2
    growth_small, growth_large = peak_growth_mb(args, small), peak_growth_mb(args, large)
    per_1k = (growth_large - growth_small) / (large - small) * 1000
    feature_per_1k = dims * 4 * 1000 / 2**20
    image_per_1k = 3 * args.size ** 2 * 4 * 1000 / 2**20
    print(f"peak_rss_growth_mb={growth_small:.0f} at {small} images, {growth_large:.0f} at {large} images")
    print(f"memory_per_1k_images_mb={per_1k:.0f} (feature matrix {feature_per_1k:.0f}, "
          f"images would add {image_per_1k:.0f})")
    print(f"memory_vs_feature_bytes={per_1k / feature_per_1k:.2f} (target ~1.0; "
          f"{(feature_per_1k + image_per_1k) / feature_per_1k:.2f} if images were kept)")


if __name__ == "__main__":
    main()
