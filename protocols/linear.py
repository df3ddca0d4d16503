"""Linear classifiers on a frozen trunk: one BatchNorm + Linear head per tap, all trained from one forward.

PROTOCOLS.md, places205_linear: the trunk stays in eval mode; every tap's pooled
map (the same ~9k-dim pooling as the feature cache) feeds its own head,
BatchNorm1d then Linear initialised N(0, 0.01); the heads train together with
SGD (Nesterov, momentum 0.9, no decay on BN and biases) on a step schedule,
lr given per 256 images. With `augment=false` the heads train on cached
features (no augmentation, one trunk pass in all): the fast variant.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.utils.data
from torch import nn

from benchmark.config import check_split_fields, is_int
from benchmark.features import PoolSpec, pooling_for
from benchmark.protocol import MetricSpec, Protocol, ProtocolResult, RunContext
from benchmark.registry import PROTOCOLS
from benchmark.training import OptimSpec, TrainSpec
from protocols.classification import (augmented_images, evaluate_topk, labelled_splits, labelled_step,
                                      topk_metrics, training_details)


@dataclasses.dataclass(frozen=True)
class LinearConfig:
    """Settings of the linear protocol (VISSL's ImageNet linear benchmark by default)."""

    epochs: int = 28
    milestones: tuple[int, ...] = (8, 16, 24)  # epochs where the lr is multiplied by 0.1
    lr: float = 0.01  # per 256 images: the lr used is lr * batch_size / 256
    batch_size: int = 256  # global, over every process
    weight_decay: float = 5e-4  # FAIR's option: 1e-4
    momentum: float = 0.9
    augment: bool = True  # false: heads on cached features (no augmentation; recorded as its own variant)
    head_init_std: float = 0.01
    amp: str = "auto"
    save_every: int = 200  # optimiser steps between training states (resume loses at most this many)
    train_split: str | None = None  # None: the dataset's train split
    test_split: str | None = None  # None: the dataset's test split

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(self.milestones))
        for name in ("epochs", "batch_size", "save_every"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(self, name)!r}")
        if not all(is_int(m) and 0 < m for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones: expected increasing positive epochs, got {self.milestones!r}")
        for name in ("lr", "head_init_std"):
            if not isinstance(getattr(self, name), (int, float)) or not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected a number > 0, got {getattr(self, name)!r}")
        if not 0 <= self.weight_decay or not 0 <= self.momentum < 1:
            raise ValueError("weight_decay must be >= 0 and momentum in [0, 1)")
        if not isinstance(self.augment, bool):
            raise ValueError(f"augment: expected true or false, got {self.augment!r}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"amp: expected auto, bf16, fp16 or off, got {self.amp!r}")
        check_split_fields(self)


@dataclasses.dataclass(frozen=True)
class Places205LinearConfig(LinearConfig):
    """PROTOCOLS.md's Places205 recipe: 14 epochs, x0.1 at 4, 8, 12."""

    epochs: int = 14
    milestones: tuple[int, ...] = (4, 8, 12)


class LinearHeads(nn.Module):
    """A frozen trunk (or none, for cached features) and one BatchNorm1d + Linear head per tap."""

    def __init__(self, trunk: nn.Module | None, pooling: dict[str, PoolSpec], dims: dict[str, int],
                 n_classes: int, init_std: float) -> None:
        super().__init__()
        self.trunk = trunk
        if trunk is not None:
            trunk.requires_grad_(False)
        self.pooling = pooling
        self.heads = nn.ModuleDict()
        for tap, dim in dims.items():
            linear = nn.Linear(dim, n_classes)
            nn.init.normal_(linear.weight, std=init_std)
            nn.init.zeros_(linear.bias)
            self.heads[tap] = nn.Sequential(nn.BatchNorm1d(dim), linear)

    def train(self, mode: bool = True) -> LinearHeads:
        super().train(mode)
        if self.trunk is not None:
            self.trunk.eval()  # BatchNorm statistics of the trunk stay frozen
        return self

    def pooled(self, x: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pooled features per tap: from the frozen trunk for images, as given for cached features."""
        if isinstance(x, dict):
            return x
        with torch.no_grad():
            maps = self.trunk.forward_taps(x, list(self.pooling))
            return {tap: spec.apply(maps[tap]) for tap, spec in self.pooling.items()}

    def forward(self, x: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {tap: self.heads[tap](features.float()) for tap, features in self.pooled(x).items()}


class CachedFeatures(torch.utils.data.Dataset):
    """Item i is ({tap: features[tap][i]}, i)."""

    def __init__(self, features: dict[str, np.ndarray]) -> None:
        self.features = {tap: torch.from_numpy(array) for tap, array in features.items()}
        self.length = len(next(iter(self.features.values())))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[dict[str, torch.Tensor], int]:
        return {tap: array[index] for tap, array in self.features.items()}, index


@PROTOCOLS.register("linear")
class LinearProtocol(Protocol):
    """Linear heads on a frozen trunk, one per tap from one forward: top-1/top-5 on val (any labelled dataset)."""

    name = "linear"
    version = "1"
    Config = LinearConfig
    default_dataset = "fashion_mnist"
    default_taps = None
    needs = ("class_labels",)

    def metrics(self, config: LinearConfig, dataset: Any) -> tuple[MetricSpec, ...]:
        return MetricSpec("top1", primary=True), MetricSpec("top5")

    def run(self, ctx: RunContext, config: LinearConfig) -> ProtocolResult:
        splits = labelled_splits(ctx, config)
        train_split, test_split = splits.train, splits.test
        if config.augment:
            trunk = ctx.trunk_copy().eval()
            pooling = {tap: pooling_for(trunk.arch, ctx.input.size, trunk.tap(tap)) for tap in ctx.taps}
            dims = _pooled_dims(trunk, pooling, ctx.input.size, ctx.device)
            train_data: torch.utils.data.Dataset = augmented_images(ctx, train_split)
            test_data: torch.utils.data.Dataset = ctx.dataset.open_split(test_split, ctx.input.test_transform(ctx.dataset))
        else:
            trunk, pooling = None, {}
            train_features, test_features = ctx.features(train_split), ctx.features(test_split)
            dims = {tap: train_features.features[tap].shape[1] for tap in ctx.taps}
            train_data, test_data = CachedFeatures(train_features.features), CachedFeatures(test_features.features)
        model = LinearHeads(trunk, pooling, dims, splits.n_classes, config.head_init_std)
        spec = train_spec(config, ctx.seed)
        trainer = ctx.trainer(model, spec)
        result = trainer.fit(train_data, labelled_step(torch.from_numpy(splits.train_labels), lambda m, x: m(x)))
        ranks = evaluate_topk(ctx, trainer.model, test_data, splits.test_labels, trainer.policy, ctx.batch_size,
                              desc=f"evaluate {test_split}")
        metrics = {tap: topk_metrics(ranks[tap]) for tap in ctx.taps}
        trainer.log_metrics({f"{test_split}/{tap}/{name}": value for tap, values in metrics.items()
                             for name, value in values.items()}, result.steps)
        return ProtocolResult(metrics=metrics, details={
            "training": training_details(spec, result, lr_used=spec.optim.lr,
                                         variant="augmented images" if config.augment else "cached features"),
            "heads": {tap: {"dim": dims[tap], "pooling": spec_of(pooling, tap)} for tap in ctx.taps},
            "splits": {"train": train_split, "test": test_split},
            "per_image": {tap: {"metric": "top1", "correct": (ranks[tap] < 1).astype(np.int8)} for tap in ctx.taps},
        })


@PROTOCOLS.register("places205_linear")
class Places205LinearProtocol(LinearProtocol):
    """The linear protocol with PROTOCOLS.md's Places205 recipe (14 epochs, steps at 4/8/12, wd 5e-4)."""

    name = "places205_linear"
    Config = Places205LinearConfig
    default_dataset = "places205"


def train_spec(config: LinearConfig, seed: int) -> TrainSpec:
    """The engine's spec: SGD Nesterov, lr scaled per 256 images, x0.1 at each milestone epoch."""
    optim = OptimSpec(name="sgd", lr=config.lr * config.batch_size / 256, momentum=config.momentum, nesterov=True,
                      weight_decay=config.weight_decay, no_decay_norm_and_bias=True, schedule="step", gamma=0.1)
    return TrainSpec(optim=optim, batch_size=config.batch_size, epochs=config.epochs,
                     milestone_epochs=config.milestones, amp=config.amp, save_every=config.save_every, seed=seed)


def spec_of(pooling: dict[str, PoolSpec], tap: str) -> str:
    return pooling[tap].describe() if tap in pooling else "as in the feature cache"


@torch.no_grad()
def _pooled_dims(trunk: nn.Module, pooling: dict[str, PoolSpec], size: int, device: torch.device) -> dict[str, int]:
    maps = trunk.forward_taps(torch.zeros(1, 3, size, size, device=device), list(pooling))
    return {tap: spec.apply(maps[tap]).shape[1] for tap, spec in pooling.items()}
