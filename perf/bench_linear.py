"""Linear probes on the CPU: all heads from one forward vs tap by tap, and the engine vs a bare training loop.

    python perf/bench_linear.py [--arch resnet18] [--images 256] [--size 64] [--batch-size 32]

Prints one `name=value (target ...)` line per figure; both runs of each pair are
measured in this process on the same images, so the ratios hold on any machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.utils.data
from PIL import Image
from torch import nn
from torchvision import transforms

from benchmark.features import pooling_for
from benchmark.training import OptimSpec, SeededAugmentation, Trainer, TrainSpec
from checkpoints.models import build_seeded
from protocols.classification import labelled_step
from protocols.finetune import Classifier
from protocols.linear import LinearHeads, _pooled_dims

TAPS = ("conv1", "res2", "res3", "res4", "res5", "res5avg")
CLASSES = 10


class NoiseImages(torch.utils.data.Dataset):
    """n seeded RGB noise images as PIL images (decoded once), item i is (image, i)."""

    def __init__(self, n: int, size: int) -> None:
        rng = np.random.default_rng(0)
        self.images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.images[index], index


def train_heads(arch: str, taps: tuple[str, ...], images: torch.utils.data.Dataset, labels: torch.Tensor,
                size: int, batch_size: int) -> float:
    """Seconds to train linear heads on `taps` for one epoch, through the engine."""
    trunk = build_seeded(arch, seed=0).eval()
    pooling = {tap: pooling_for(arch, size, trunk.tap(tap)) for tap in taps}
    model = LinearHeads(trunk, pooling, _pooled_dims(trunk, pooling, size, torch.device("cpu")), CLASSES, 0.01)
    spec = TrainSpec(optim=OptimSpec(lr=0.01), batch_size=batch_size, epochs=1, save_every=10**6, log_every=10**6)
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        Trainer(model, spec, torch.device("cpu"), Path(run_dir), {}).fit(images, labelled_step(labels, lambda m, x: m(x)))
        return time.perf_counter() - started


def bare_loop(model: nn.Module, images: torch.utils.data.Dataset, labels: torch.Tensor, batch_size: int) -> float:
    """Seconds for the same epoch written as the plainest loop: loader, forward, loss, backward, step."""
    step = labelled_step(labels, lambda m, x: m(x))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9,
                                nesterov=True)
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=True, drop_last=True)
    started = time.perf_counter()
    model.train()
    for batch in loader:
        loss = step(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def engine_loop(model: nn.Module, images: torch.utils.data.Dataset, labels: torch.Tensor, batch_size: int) -> float:
    spec = TrainSpec(optim=OptimSpec(lr=0.01, schedule="constant"), batch_size=batch_size, epochs=1,
                     save_every=10**6)
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        Trainer(model, spec, torch.device("cpu"), Path(run_dir), {}).fit(images, labelled_step(labels, lambda m, x: m(x)))
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the best time of each counts")
    args = parser.parse_args()
    torch.manual_seed(0)
    labels = torch.randint(0, CLASSES, (args.images,))
    augment = transforms.Compose([transforms.RandomResizedCrop(args.size), transforms.RandomHorizontalFlip(),
                                  transforms.ToTensor()])
    images = SeededAugmentation(NoiseImages(args.images, args.size), augment, seed=0)

    together, separate = [], []
    for _ in range(args.repeats):
        together.append(train_heads(args.arch, TAPS, images, labels, args.size, args.batch_size))
        separate.append(sum(train_heads(args.arch, (tap,), images, labels, args.size, args.batch_size)
                            for tap in TAPS))
    print(f"all_heads_one_forward_speedup={min(separate) / min(together):.2f}x (target >= 4x; {len(TAPS)} taps, "
          f"{args.arch} at {args.size} px, {args.images} images: {min(together):.2f} s vs {min(separate):.2f} s "
          "tap by tap)")

    trunk = build_seeded(args.arch, seed=0)
    net = Classifier(trunk, "res5avg", trunk.tap("res5avg").channels, CLASSES)
    bare, engine = [], []
    for _ in range(args.repeats):
        bare.append(bare_loop(net, images, labels, args.batch_size))
        engine.append(engine_loop(net, images, labels, args.batch_size))
    print(f"engine_vs_bare_loop={min(bare) / min(engine):.2f}x images/s (target >= 0.9x; full fine-tune of "
          f"{args.arch}: {args.images / min(engine):.0f} vs {args.images / min(bare):.0f} images/s)")


if __name__ == "__main__":
    main()
