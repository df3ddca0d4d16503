"""The recipe interface: a method's model (trunk + its own heads), its views, its loss and its paper's defaults.

A recipe is one file under checkpoints/recipes/: a frozen Config dataclass
(subclass of RecipeConfig, the paper's defaults), `build` returning a
RecipeModel whose forward(views, index) returns the loss (so DDP sees the
whole computation), and `views` returning the augmentation that turns one
image into the tuple of views the model takes. `ssl-bench pretrain` trains it
on the training engine and writes the trunk as a native checkpoint.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from benchmark.config import is_int
from benchmark.protocol import InputSpec
from benchmark.training import OptimSpec, TrainSpec
from checkpoints.models import Backbone


@dataclasses.dataclass(frozen=True)
class RecipeConfig:
    """What every recipe sets: schedule and optimiser (lr per 256 images, scaled linearly with the batch)."""

    epochs: int = 100
    batch_size: int = 256  # global, over every process
    optimizer: Literal["sgd", "lars", "adamw"] = "sgd"
    lr: float = 0.3  # per 256 images
    momentum: float = 0.9
    weight_decay: float = 1e-6
    warmup_epochs: float = 0.0
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    amp: str = "auto"
    save_every: int = 200  # optimiser steps between training states
    view_size: int = 0  # side of the training views in pixels; 0: the evaluation's input size

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "save_every"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(self, name)!r}")
        if not is_int(self.view_size) or self.view_size < 0:
            raise ValueError(f"view_size: expected an integer >= 0 (0: the evaluation's size), got {self.view_size!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"lr: expected a number > 0, got {self.lr!r}")
        if self.optimizer not in ("sgd", "lars", "adamw"):
            raise ValueError(f"optimizer: expected sgd, lars or adamw, got {self.optimizer!r}")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"schedule: expected cosine, step or constant, got {self.schedule!r}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"amp: expected auto, bf16, fp16 or off, got {self.amp!r}")
        if self.weight_decay < 0 or self.warmup_epochs < 0 or not 0 <= self.momentum < 1:
            raise ValueError("weight_decay and warmup_epochs must be >= 0 and momentum in [0, 1)")

    def train_spec(self, seed: int, sync_bn: bool = True) -> TrainSpec:
        """The engine's spec: lr scaled by batch_size / 256, warmup then the schedule; no decay on BN and biases."""
        optim = OptimSpec(name=self.optimizer, lr=self.lr * self.batch_size / 256, momentum=self.momentum,
                          nesterov=False, weight_decay=self.weight_decay, no_decay_norm_and_bias=True,
                          schedule=self.schedule, warmup_start_factor=0.0)
        return TrainSpec(optim=optim, batch_size=self.batch_size, epochs=self.epochs, warmup_epochs=self.warmup_epochs,
                         amp=self.amp, sync_bn=sync_bn, save_every=self.save_every, seed=seed)


class RecipeModel(nn.Module):
    """A trunk plus the method's heads; forward(views, index) returns the loss (and optionally logged scalars)."""

    trunk: Backbone

    def trunk_state(self) -> dict[str, torch.Tensor]:
        """What the checkpoint keeps as the representation: the trunk's weights."""
        return self.trunk.state_dict()

    def head_state(self) -> dict[str, torch.Tensor]:
        """The method's own modules (projector, predictor, queue...), saved apart from the trunk."""
        return {key: value for key, value in self.state_dict().items() if not key.startswith("trunk.")}

    def on_epoch_start(self, epoch: int) -> None:
        """Work a method does once per epoch before training on it (DeepCluster's clustering); none by default."""

    def training_indices(self) -> torch.Tensor | None:
        """The images of the training split the method trains on (Exemplar-CNN's seed images); None: all of them."""
        return None


class Recipe(ABC):
    """Base class of every pretraining recipe; register it with `@RECIPES.register(name)`."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    paper: ClassVar[str]
    Config: ClassVar[type[RecipeConfig]]
    sync_bn: ClassVar[bool] = True  # SyncBatchNorm across GPUs (global BN statistics, as most methods use)

    @abstractmethod
    def build(self, trunk: Backbone, config: Any, dataset_size: int) -> RecipeModel:
        """The method's model around a freshly initialised trunk."""

    @abstractmethod
    def views(self, config: Any, input_spec: InputSpec, dataset: Any) -> Callable[[Any], tuple[torch.Tensor, ...]]:
        """The augmentation: one PIL image -> the tuple of tensors the model's forward takes as views."""


def feature_dim(trunk: Backbone) -> int:
    """Channels of the trunk's globally pooled output (res5avg)."""
    return trunk.tap("res5avg").channels


def pooled(trunk: Backbone, x: torch.Tensor) -> torch.Tensor:
    """The trunk's globally pooled representation (B, C)."""
    return trunk.forward_taps(x, ["res5avg"])["res5avg"]


def mlp(dims: list[int], batch_norm: bool = True, last_bn: bool = False) -> nn.Sequential:
    """Linear layers with BN and ReLU between them (and a BN after the last when asked), as the papers' heads."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(a, b, bias=not (batch_norm and (not last or last_bn))))
        if batch_norm and (not last or last_bn):
            layers.append(nn.BatchNorm1d(b, affine=not last))
        if not last:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)
