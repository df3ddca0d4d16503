"""BYOL (Grill et al. 2020): an online network with a predictor regresses an EMA target network's projections."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from benchmark.protocol import InputSpec
from benchmark.registry import RECIPES
from checkpoints.models import Backbone
from checkpoints.recipes.augment import Views, simclr_augmentation
from checkpoints.recipes.base import Recipe, RecipeConfig, RecipeModel, feature_dim, mlp, pooled
from checkpoints.recipes.siamese import cosine_momentum, ema_update_, momentum_copy, normalized_mse


@dataclasses.dataclass(frozen=True)
class ByolConfig(RecipeConfig):
    """BYOL's ImageNet defaults: batch 4096, LARS, lr 0.2 per 256, wd 1.5e-6, 10 warmup epochs, cosine, 1000 epochs.

    1000 epochs is the paper's headline schedule (it also reports 300). The
    target's EMA rate rises from 0.996 to 1 by a cosine over training; projector
    and predictor are 4096-d hidden (BN, ReLU) -> 256. Views as the paper's,
    except colour jitter: simclr_augmentation at strength 0.5 gives saturation
    0.4 where BYOL uses 0.2 (brightness 0.4, contrast 0.4, hue 0.1 as the paper).
    """

    epochs: int = 1000
    batch_size: int = 4096
    optimizer: str = "lars"
    lr: float = 0.2
    weight_decay: float = 1.5e-6
    warmup_epochs: float = 10.0
    target_momentum: float = 0.996  # tau_base: the EMA rate at step 0
    hidden_dim: int = 4096
    projection_dim: int = 256
    color_strength: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.target_momentum <= 1 or min(self.hidden_dim, self.projection_dim) < 1:
            raise ValueError("target_momentum must be in [0, 1], hidden_dim and projection_dim >= 1")
        if not self.color_strength >= 0:
            raise ValueError(f"color_strength: expected a number >= 0, got {self.color_strength!r}")


class ByolModel(RecipeModel):
    def __init__(self, trunk: Backbone, config: ByolConfig, total_steps: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.projector = mlp([feature_dim(trunk), config.hidden_dim, config.projection_dim])
        self.predictor = mlp([config.projection_dim, config.hidden_dim, config.projection_dim])
        self.target_trunk = momentum_copy(trunk)
        self.target_projector = momentum_copy(self.projector)
        self.target_momentum, self.total_steps = config.target_momentum, total_steps
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # forwards so far: the EMA schedule's clock

    def forward(self, views: tuple[torch.Tensor, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        # each view through the networks on its own, so BN statistics stay per view as in BYOL's code
        predictions = [self.predictor(self.projector(pooled(self.trunk, view))) for view in views]
        with torch.no_grad():
            tau = cosine_momentum(self.target_momentum, int(self.step), self.total_steps)
            ema_update_(self.target_trunk, self.trunk, tau)
            ema_update_(self.target_projector, self.projector, tau)
            self.step.add_(1)
            targets = [self.target_projector(pooled(self.target_trunk, view)) for view in views]
        return normalized_mse(predictions[0], targets[1]) + normalized_mse(predictions[1], targets[0])


@RECIPES.register("byol")
class Byol(Recipe):
    """BYOL: predict an EMA target's projection of the other view (Grill et al. 2020, arXiv 2006.07733)."""

    name = "byol"
    paper = ("Grill, Strub, Altché, Tallec, Richemond et al. Bootstrap Your Own Latent: A New Approach to "
             "Self-Supervised Learning. NeurIPS 2020")
    Config = ByolConfig
    test_settings = {"hidden_dim": 512}  # CPU tests: narrower heads, a quarter of the weights to save and resume

    def build(self, trunk: Backbone, config: ByolConfig, dataset_size: int) -> ByolModel:
        steps_per_epoch = max(1, dataset_size // config.batch_size)  # the engine drops the last partial batch
        return ByolModel(trunk, config, total_steps=config.epochs * steps_per_epoch)

    def views(self, config: ByolConfig, input_spec: InputSpec, dataset: Any) -> Views:
        # BYOL's asymmetric pair: blur always and never solarise, then blur rarely and solarise sometimes
        first = simclr_augmentation(input_spec, color_strength=config.color_strength, blur_probability=1.0)
        second = simclr_augmentation(input_spec, color_strength=config.color_strength, blur_probability=0.1,
                                     solarize=0.2)
        return Views(first, second)
