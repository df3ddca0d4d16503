"""Pretraining recipes on the CPU: images/s of one training step per recipe vs the bare backbone on the same views.

    python perf/bench_pretrain.py [--recipes simclr,cpc] [--arch resnet18] [--batch-size 16] [--steps 3]
                                  [--threads N] [--paper-settings]

For each recipe, one batch of Fashion-MNIST images (32 px) goes through the
recipe's views once; then, interleaved and best of --steps each:
- the recipe's step: forward (the loss), backward and an SGD step over all of
  its parameters (trunk and heads);
- the bare step: forward (res5avg, summed), backward and an SGD step of a lone
  trunk of the same architecture on the RGB view tensors the recipe's step
  consumed, one batch per image size (two views of each image for SimCLR,
  G x G patches for CPC; a recipe whose trunk sees only part of its views,
  such as colorization's lightness with colour as the target, scores above 1).
Recipes run with their test_settings (CPU-sized heads and cluster counts; CPC
a 4x4 grid); --paper-settings runs their defaults. images/s counts source
images. The ratio bare time / recipe time is what a method costs beyond its
trunk passes: heads, losses, queues, momentum encoders (a second trunk forward
counts against the method). Prints one `name=value (target ...)` line per
recipe; both sides run in this process on the same tensors, so the ratio
holds on any machine.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
import torch.utils.data

from benchmark.config import build_config
from benchmark.data.fashion_mnist import FashionMnist
from benchmark.protocol import InputSpec
from benchmark.registry import RECIPES
from checkpoints.models import build_seeded
from checkpoints.recipes.augment import takes_index
from checkpoints.recipes.base import pooled

TARGETS = {"simclr": 0.6}  # bare/recipe time ratio a recipe must reach


def make_views(name: str, arch: str, batch: int, small: bool) -> tuple[torch.nn.Module, tuple[Any, ...], torch.Tensor]:
    """The recipe's model on a seeded trunk and one collated batch of its views of `batch` Fashion-MNIST images.

    With `small`, the recipe's test_settings (CPU-sized heads, cluster counts, queues) apply.
    """
    recipe = RECIPES.get(name)()
    settings = {**(getattr(recipe, "test_settings", {}) if small else {}), "batch_size": batch}
    config = build_config(recipe.Config, settings, owner=name)
    data = FashionMnist(None, limit=batch)
    torch.manual_seed(0)
    model = recipe.build(build_seeded(arch, seed=0), config, dataset_size=batch)
    views = recipe.views(config, InputSpec(data.native_size, *data.normalization), data)
    images = data.open_split(data.train_split, None)
    samples = [views(images[i][0], i) if takes_index(views) else views(images[i][0]) for i in range(batch)]
    model.train()
    model.on_epoch_start(0)
    return model, tuple(torch.utils.data.default_collate(samples)), torch.arange(batch)


def image_tensors(views: Any) -> list[torch.Tensor]:
    """Every RGB image tensor in the views as (N, 3, H, W): (B, P, 3, H, W) patches become (B * P, 3, H, W).

    Other tensors (masks, targets) are left out.
    """
    if isinstance(views, torch.Tensor):
        return [views.flatten(0, views.ndim - 4)] if views.ndim >= 4 and views.shape[-3] == 3 else []
    if isinstance(views, (list, tuple)):
        return [tensor for item in views for tensor in image_tensors(item)]
    return []


def image_batches(views: Any) -> list[torch.Tensor]:
    """The views' images in one batch per image shape, as a recipe batches its views for one trunk pass."""
    shapes: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for tensor in image_tensors(views):
        shapes.setdefault(tuple(tensor.shape[1:]), []).append(tensor)
    return [torch.cat(group) for group in shapes.values()]


def timed(step: Any) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def bench(name: str, arch: str, batch: int, steps: int, small: bool) -> tuple[float, float, list[torch.Tensor]]:
    """Best seconds of the recipe's step and of the bare trunk step on the same views."""
    model, views, index = make_views(name, arch, batch, small)
    trunk = build_seeded(arch, seed=0).train()
    tensors = image_batches(views)
    model_optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    trunk_optimizer = torch.optim.SGD(trunk.parameters(), lr=1e-3, momentum=0.9)

    def recipe_step() -> None:
        out = model(views, index)
        (out[0] if isinstance(out, tuple) else out).backward()
        model_optimizer.step()
        model_optimizer.zero_grad(set_to_none=True)

    def bare_step() -> None:
        sum(pooled(trunk, x).sum() for x in tensors).backward()
        trunk_optimizer.step()
        trunk_optimizer.zero_grad(set_to_none=True)

    recipe_step(), bare_step()  # warm-up: allocations, lazy initialisation
    recipe, bare = [], []
    for _ in range(steps):
        recipe.append(timed(recipe_step))
        bare.append(timed(bare_step))
    return min(recipe), min(bare), tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="", help="comma-separated names (default: every registered recipe)")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each kind; the best counts")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--paper-settings", action="store_true",
                        help="the recipes' own defaults instead of their CPU-sized test_settings")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in args.recipes.split(",") if n] or RECIPES.names()
    for name in names:
        target = TARGETS.get(name)
        wanted = f"target >= {target}x" if target else "no target"
        try:
            recipe, bare, tensors = bench(name, args.arch, args.batch_size, args.steps, not args.paper_settings)
        except Exception as error:  # noqa: BLE001 - one broken recipe must not hide the others' figures
            print(f"{name}_vs_bare_backbone=failed ({wanted}; {type(error).__name__}: {error})")
            continue
        shapes = " + ".join(f"{len(x)}x{x.shape[-1]}px" for x in tensors)
        print(f"{name}_vs_bare_backbone={bare / recipe:.2f}x ({wanted}; {args.batch_size / recipe:.1f} vs "
              f"{args.batch_size / bare:.1f} images/s, {args.arch} on {shapes} per {args.batch_size} images)",
              flush=True)


if __name__ == "__main__":
    main()
