"""SimCLR (Chen et al. 2020): two views, an MLP projector, NT-Xent over the global batch."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from benchmark.distributed import all_gather_with_grad, get_rank
from benchmark.protocol import InputSpec
from benchmark.registry import RECIPES
from checkpoints.models import Backbone
from checkpoints.recipes.augment import CROPS, Views, bind_boxes, crop_boxes, simclr_augmentation
from checkpoints.recipes.base import Recipe, RecipeConfig, RecipeModel, feature_dim, mlp, pooled


@dataclasses.dataclass(frozen=True)
class SimclrConfig(RecipeConfig):
    """SimCLR's ImageNet defaults: batch 4096, LARS, lr 0.3 per 256, wd 1e-6, 10 warmup epochs, cosine, T=0.1."""

    batch_size: int = 4096
    optimizer: str = "lars"
    lr: float = 0.3
    weight_decay: float = 1e-6
    warmup_epochs: float = 10.0
    temperature: float = 0.1
    projection_dim: int = 128
    color_strength: float = 1.0  # 0.5 on CIFAR in the paper
    crop_min_scale: float = 0.08  # RandomResizedCrop's smallest area fraction
    crop: str = "random"  # or "contrastive": ContrastiveCrop (Peng et al. 2022) in place of RandomResizedCrop

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.temperature > 0 or self.projection_dim < 1 or not self.color_strength >= 0:
            raise ValueError("temperature must be > 0, projection_dim >= 1 and color_strength >= 0")
        if not 0 < self.crop_min_scale <= 1:
            raise ValueError(f"crop_min_scale: expected a number in (0, 1], got {self.crop_min_scale!r}")
        if self.crop not in CROPS:
            raise ValueError(f"crop: expected one of {', '.join(CROPS)}, got {self.crop!r}")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent of the local anchors against every view of the global batch (negatives from all processes).

    z1[i] and z2[i] are the projections of two views of image i on this process. Computed in float32
    even under autocast: bf16 similarities divided by a small temperature lose the ranking.
    """
    with torch.autocast(z1.device.type, enabled=False):
        return _nt_xent_float32(z1.float(), z2.float(), temperature)


def _nt_xent_float32(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    every = torch.cat([all_gather_with_grad(z1), all_gather_with_grad(z2)])
    batch, total = len(z1), len(every) // 2
    offset = get_rank() * batch
    local = torch.arange(batch, device=z1.device) + offset
    anchors = torch.cat([z1, z2])
    logits = anchors @ every.T / temperature
    own = torch.cat([local, local + total])
    logits[torch.arange(2 * batch, device=z1.device), own] = float("-inf")
    targets = torch.cat([local + total, local])
    return F.cross_entropy(logits, targets)


class SimclrModel(RecipeModel):
    def __init__(self, trunk: Backbone, config: SimclrConfig, dataset_size: int) -> None:
        super().__init__()
        self.trunk = trunk
        dim = feature_dim(trunk)
        self.projector = mlp([dim, dim, config.projection_dim])
        self.temperature = config.temperature
        self.crop_boxes = crop_boxes(config.crop, dataset_size, config.epochs)

    def on_epoch_start(self, epoch: int) -> None:
        if self.crop_boxes is not None:
            self.crop_boxes.on_epoch_start(epoch, self.trunk)

    def forward(self, views: tuple[torch.Tensor, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        first, second = views
        z = self.projector(pooled(self.trunk, torch.cat([first, second])))
        z1, z2 = z.chunk(2)
        return nt_xent(z1, z2, self.temperature)


@RECIPES.register("simclr")
class Simclr(Recipe):
    """SimCLR: contrastive views with NT-Xent (Chen et al., ICML 2020, arXiv 2002.05709)."""

    name = "simclr"
    paper = "Chen, Kornblith, Norouzi, Hinton. A Simple Framework for Contrastive Learning of Visual Representations. ICML 2020"
    Config = SimclrConfig

    def build(self, trunk: Backbone, config: SimclrConfig, dataset_size: int) -> SimclrModel:
        model = SimclrModel(trunk, config, dataset_size)
        self.crop_boxes = model.crop_boxes  # what `views` crops by
        return model

    def views(self, config: SimclrConfig, input_spec: InputSpec, dataset: Any) -> Views:
        boxes = bind_boxes(getattr(self, "crop_boxes", None), config.crop, input_spec, dataset)
        augment = simclr_augmentation(input_spec, color_strength=config.color_strength,
                                      scale=(config.crop_min_scale, 1.0), boxes=boxes)
        return Views(augment, augment)
