"""Representation quality per recipe on Fashion-MNIST: kNN and linear top-1 of a short pretraining vs random init.

    python perf/bench_quality.py [--recipes simclr,moco] [--minutes 20] [--arch resnet18_cifar] [--images 10000]

Each recipe pretrains for about --minutes on the first --images training
images (epochs chosen from a measured throughput), then kNN (top1 at K=20,
res5avg) and `linear` on cached features (augment=false) run on the full
Fashion-MNIST train/test splits for the pretrained trunk and for the same
arch at random init. Prints one line per recipe and the random-init line.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from benchmark.pretrain import PretrainOptions, pretrain
from benchmark.registry import RECIPES
from benchmark.runner import RunOptions, run


def evaluate(checkpoint: str, name: str, arch: str, results: Path, cache: Path, eval_images: int | None
             ) -> dict[str, float]:
    """kNN top1_k20 and linear (cached features) top-1 of res5avg."""
    common = dict(checkpoint=checkpoint, name=name, dataset="fashion_mnist", arch=arch, taps=("res5avg",),
                  results_dir=results,
                  cache_dir=cache, limit=eval_images, workers=2, batch_size=256)
    knn, _ = run(RunOptions(protocol="knn", overrides={"ks": "20"}, **common))
    linear, _ = run(RunOptions(protocol="linear", overrides={"augment": "false", "epochs": "20", "milestones": "15",
                                                             "batch_size": "256", "lr": "1.0"}, **common))
    return {"knn_top1_k20": knn["metrics"]["res5avg"]["top1_k20"], "linear_top1": linear["metrics"]["res5avg"]["top1"]}


def measured_images_per_second(recipe: str, arch: str, batch: int, folder: Path) -> float:
    started = time.perf_counter()
    pretrain(PretrainOptions(recipe=recipe, out=folder, arch=arch, epochs=1, batch_size=batch, limit=batch * 3,
                             overrides={"warmup_epochs": "0"}, workers=2))
    return batch * 3 / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="simclr,moco")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--arch", default="resnet18_cifar")
    parser.add_argument("--images", type=int, default=10000, help="training images used for pretraining")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--eval-images", type=int, default=None, help="limit evaluation splits (default: all)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="RECIPE:KEY=VALUE")
    args = parser.parse_args()
    extra: dict[str, dict[str, str]] = {}
    for item in args.overrides:
        name, _, pair = item.partition(":")
        key, _, value = pair.partition("=")
        extra.setdefault(name, {})[key] = value
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        baseline = evaluate(f"random:{args.arch}", "random", args.arch, root / "results", root / "cache", args.eval_images)
        print(f"random_init arch={args.arch} knn_top1_k20={baseline['knn_top1_k20']:.2f} "
              f"linear_top1={baseline['linear_top1']:.2f}", flush=True)
        for recipe in args.recipes.split(","):
            RECIPES.get(recipe)
            speed = measured_images_per_second(recipe, args.arch, args.batch_size, root / f"probe-{recipe}")
            epochs = max(1, math.floor(args.minutes * 60 * speed / args.images))
            started = time.perf_counter()
            checkpoint = pretrain(PretrainOptions(
                recipe=recipe, out=root / recipe, arch=args.arch, epochs=epochs, batch_size=args.batch_size,
                limit=args.images, overrides={"warmup_epochs": str(min(1, epochs)), **extra.get(recipe, {})},
                workers=2))
            minutes = (time.perf_counter() - started) / 60
            scores = evaluate(str(checkpoint), recipe, args.arch, root / "results", root / "cache", args.eval_images)
            print(f"{recipe} epochs={epochs} pretrain_minutes={minutes:.1f} "
                  f"knn_top1_k20={scores['knn_top1_k20']:.2f} ({scores['knn_top1_k20'] - baseline['knn_top1_k20']:+.2f}"
                  f" vs random init; target >= +2) linear_top1={scores['linear_top1']:.2f} "
                  f"({scores['linear_top1'] - baseline['linear_top1']:+.2f})", flush=True)


if __name__ == "__main__":
    main()
