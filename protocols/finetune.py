"""Semi-supervised fine-tuning: the whole network plus a linear classifier on a labelled fraction.

SimCLR's and BYOL's protocol (Chen et al. 2020, appendix B.5): a class-stratified,
seeded fraction of the training labels (`fraction=0.01|0.1|...`), or the image
list a paper publishes (`subset_file=`); SGD with Nesterov momentum 0.9, lr 0.05
per 256 images, no weight decay, cosine decay without warmup, random crops and
flips only; top-1/top-5 of the fine-tuned network on the full test split,
reported under the metrics key `network`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmark.config import check_split_fields, is_int
from benchmark.errors import SslBenchError
from benchmark.protocol import WHOLE_NETWORK, MetricSpec, Protocol, ProtocolResult, RunContext
from benchmark.registry import PROTOCOLS
from benchmark.training import OptimSpec, TrainSpec
from protocols.classification import (augmented_images, check_class_coverage, evaluate_topk, labelled_splits,
                                      labelled_step, topk_metrics, training_details)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Settings of the finetune protocol (SimCLR's semi-supervised recipe, 10% of the labels by default)."""

    fraction: float = 0.1  # of each class's training images, seeded; ignored when subset_file is set
    subset_file: str | None = None  # image ids (or file names), one per line, as SimCLR publishes 1%/10% lists
    epochs: int = 30  # SimCLR: 30 for 10% of the labels, 60 for 1%
    lr: float = 0.05  # per 256 images
    batch_size: int = 256  # global
    weight_decay: float = 0.0
    momentum: float = 0.9
    classifier_tap: str = "res5avg"  # the trunk output the linear classifier reads
    sync_bn: bool = True  # SyncBatchNorm across GPUs (global BN, as SimCLR); per process on the CPU
    amp: str = "auto"
    save_every: int = 200
    train_split: str | None = None
    test_split: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) or not 0 < self.fraction <= 1:
            raise ValueError(f"fraction: expected a number in (0, 1], got {self.fraction!r}")
        for name in ("epochs", "batch_size", "save_every"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"lr: expected a number > 0, got {self.lr!r}")
        if not 0 <= self.weight_decay or not 0 <= self.momentum < 1:
            raise ValueError("weight_decay must be >= 0 and momentum in [0, 1)")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"amp: expected auto, bf16, fp16 or off, got {self.amp!r}")
        check_split_fields(self)


class Classifier(nn.Module):
    """Trunk (trainable) -> one globally pooled tap -> Linear."""

    def __init__(self, trunk: nn.Module, tap: str, dim: int, n_classes: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.tap = tap
        self.fc = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.trunk.forward_taps(x, [self.tap])[self.tap]
        if features.ndim == 4:
            features = features.mean((2, 3))
        return {WHOLE_NETWORK: self.fc(features.float())}


def stratified_fraction(labels: np.ndarray, fraction: float, seed: int, n_classes: int) -> np.ndarray:
    """Sorted indices: round(fraction * n_c) images of each class c, drawn without replacement from (seed, c)."""
    chosen = []
    for c in range(n_classes):
        members = np.flatnonzero(labels == c)
        take = int(round(fraction * len(members)))
        chosen.append(np.random.default_rng([seed, c]).choice(members, size=take, replace=False))
    return np.sort(np.concatenate(chosen))


def read_subset(path: Path, ids: list[str]) -> np.ndarray:
    """Sorted indices of the images a subset file names (by id, or by file name when that is unique)."""
    try:
        names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as error:
        raise SslBenchError(f"cannot read subset file {path} ({error.strerror}); pass subset_file=PATH") from None
    by_id = {image_id: i for i, image_id in enumerate(ids)}
    by_name: dict[str, int] = {}
    for i, image_id in enumerate(ids):
        by_name.setdefault(Path(image_id).name, i)
    missing = [name for name in names if name not in by_id and name not in by_name]
    if missing:
        raise SslBenchError(f"subset file {path} names {len(missing)} images that the training split lacks "
                            f"(first: '{missing[0]}'); check the file and --data-root")
    if not names:
        raise SslBenchError(f"subset file {path} names no images")
    return np.unique([by_id.get(name, by_name.get(name)) for name in names])


@PROTOCOLS.register("finetune")
class FinetuneProtocol(Protocol):
    """Fine-tune the whole network with a linear classifier on a labelled fraction: top-1/top-5 on val."""

    name = "finetune"
    version = "1"
    Config = FinetuneConfig
    default_dataset = "fashion_mnist"
    needs = ("class_labels",)
    per_tap = False

    def metrics(self, config: FinetuneConfig, dataset: Any) -> tuple[MetricSpec, ...]:
        return MetricSpec("top1", primary=True), MetricSpec("top5")

    def run(self, ctx: RunContext, config: FinetuneConfig) -> ProtocolResult:
        splits = labelled_splits(ctx, config)
        train_split, test_split, train_labels, n_classes = splits.train, splits.test, splits.train_labels, \
            splits.n_classes
        if config.subset_file:
            chosen, how = read_subset(Path(config.subset_file), ctx.dataset.ids(train_split)), "subset file"
        else:
            chosen, how = stratified_fraction(train_labels, config.fraction, ctx.seed, n_classes), "fraction"
        check_class_coverage(ctx, train_labels[chosen], splits.test_labels, train_split, test_split,
                             selected=f" after selecting the labelled {how}")
        trunk = ctx.trunk_copy()
        tap = trunk.tap(config.classifier_tap)
        model = Classifier(trunk.requires_grad_(True).train(), tap.name, tap.channels, n_classes)
        optim = OptimSpec(name="sgd", lr=config.lr * config.batch_size / 256, momentum=config.momentum,
                          nesterov=True, weight_decay=config.weight_decay, schedule="cosine")
        batch = min(config.batch_size, len(chosen))
        spec = TrainSpec(optim=optim, batch_size=batch, epochs=config.epochs, amp=config.amp,
                         sync_bn=config.sync_bn, save_every=config.save_every, seed=ctx.seed)
        trainer = ctx.trainer(model, spec)
        labels = torch.from_numpy(train_labels)
        result = trainer.fit(augmented_images(ctx, train_split, chosen), labelled_step(labels, lambda m, x: m(x)))
        test_data = ctx.dataset.open_split(test_split, ctx.input.test_transform(ctx.dataset))
        rank = evaluate_topk(ctx, trainer.model, test_data, splits.test_labels, trainer.policy, ctx.batch_size,
                             desc=f"evaluate {test_split}")[WHOLE_NETWORK]
        metrics = topk_metrics(rank)
        trainer.log_metrics({f"{test_split}/{name}": value for name, value in metrics.items()}, result.steps)
        return ProtocolResult(metrics={WHOLE_NETWORK: metrics}, details={
            "training": training_details(spec, result),
            "labelled": {"how": how, "images": int(len(chosen)), "of": int(len(train_labels)),
                         "per_class": np.bincount(train_labels[chosen], minlength=n_classes).tolist()},
            "splits": {"train": train_split, "test": test_split},
            "per_image": {WHOLE_NETWORK: {"metric": "top1", "correct": (rank < 1).astype(np.int8)}},
        })
