"""RotNet (Gidaris et al. 2018): predict which of 0/90/180/270 degrees an image was rotated by, 4-way, on res5avg."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from benchmark.protocol import InputSpec
from benchmark.registry import RECIPES
from checkpoints.models import Backbone
from checkpoints.recipes.base import Recipe, RecipeModel, feature_dim, pooled
from checkpoints.recipes.pretext import StepScheduleConfig, classification

ROTATIONS = 4


@dataclasses.dataclass(frozen=True)
class RotnetConfig(StepScheduleConfig):
    """Gidaris et al.'s CIFAR-10 settings: batch 128 images (x4 rotations), SGD lr 0.1 per 128 (0.2 per 256),
    Nesterov momentum 0.9, wd 5e-4, 100 epochs, lr x0.2 after 30%, 60% and 80% of them (their released config
    runs 200 epochs with drops at 60, 120, 160: the same shape). Augmentation: the dataset's training transform
    (RandomResizedCrop and flip, as VISSL's rotnet config), then the four rotations."""

    epochs: int = 100
    batch_size: int = 128  # images; each brings its 4 rotations into the batch
    lr: float = 0.2  # per 256 images: 0.1 per 128
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (0.3, 0.6, 0.8)
    gamma: float = 0.2


def rotations(image: torch.Tensor) -> torch.Tensor:
    """(C, H, W) -> (4, C, H, W): the image turned counter-clockwise by label x 90 degrees, label = 0..3."""
    return torch.stack([torch.rot90(image, k, dims=(-2, -1)) for k in range(ROTATIONS)])


def rotation_labels(batch: int, device: torch.device | None = None) -> torch.Tensor:
    """The labels of `batch` stacks of rotations flattened image-major: 0, 1, 2, 3, 0, 1, ..."""
    return torch.arange(ROTATIONS, device=device).repeat(batch)


class Rotations:
    """One image -> (its 4 rotations,) after the dataset's training augmentation (crop and flip)."""

    def __init__(self, augment: Any) -> None:
        self.augment = augment

    def __call__(self, image: Any) -> tuple[torch.Tensor]:
        return (rotations(self.augment(image)),)

    def __repr__(self) -> str:
        return f"Rotations({self.augment!r})"


class RotnetModel(RecipeModel):
    def __init__(self, trunk: Backbone) -> None:
        super().__init__()
        self.trunk = trunk
        self.classifier = nn.Linear(feature_dim(trunk), ROTATIONS)

    def forward(self, views: tuple[torch.Tensor], index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        (stacks,) = views  # (B, 4, C, H, W)
        logits = self.classifier(pooled(self.trunk, stacks.flatten(0, 1)))
        return classification(logits, rotation_labels(len(stacks), logits.device))


@RECIPES.register("rotnet")
class Rotnet(Recipe):
    """RotNet: 4-way rotation prediction, each image's four rotations in the batch (Gidaris et al., ICLR 2018)."""

    name = "rotnet"
    paper = ("Gidaris, Singh, Komodakis. Unsupervised Representation Learning by Predicting Image Rotations. "
             "ICLR 2018")
    Config = RotnetConfig

    def build(self, trunk: Backbone, config: RotnetConfig, dataset_size: int) -> RotnetModel:
        return RotnetModel(trunk)

    def views(self, config: RotnetConfig, input_spec: InputSpec, dataset: Any) -> Rotations:
        return Rotations(input_spec.train_transform(dataset))
