"""SimSiam (Chen & He 2021): a projector and a predictor, negative cosine with a stop-gradient, no negatives, no EMA."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from benchmark.protocol import InputSpec
from benchmark.registry import RECIPES
from checkpoints.models import Backbone
from checkpoints.recipes.augment import Views
from checkpoints.recipes.base import Recipe, RecipeConfig, RecipeModel, feature_dim, mlp, pooled
from checkpoints.recipes.siamese import mocov2_views, negative_cosine


@dataclasses.dataclass(frozen=True)
class SimsiamConfig(RecipeConfig):
    """SimSiam's ImageNet defaults: batch 512, SGD lr 0.05 per 256, momentum 0.9, wd 1e-4, cosine, 100 epochs.

    Projector: 3 layers of 2048 with BN on every output (the last without
    affine); predictor 2048 -> 512 -> 2048; MoCo v2's views (crops of scale
    (0.2, 1), colour jitter (0.4, 0.4, 0.4, 0.1)).
    Deviations: the predictor's lr decays by the cosine with everything else
    (the paper keeps it fixed, slightly better by its Table 1; the engine has one
    schedule for all parameter groups), and BN weights and biases take no weight
    decay (the engine's policy; SimSiam's code decays every parameter).
    """

    epochs: int = 100
    batch_size: int = 512
    lr: float = 0.05
    weight_decay: float = 1e-4
    projection_dim: int = 2048
    predictor_dim: int = 512  # the predictor's bottleneck
    color_strength: float = 0.5
    crop_min_scale: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.projection_dim, self.predictor_dim) < 1 or not self.color_strength >= 0:
            raise ValueError("projection_dim and predictor_dim must be >= 1 and color_strength >= 0")
        if not 0 < self.crop_min_scale <= 1:
            raise ValueError(f"crop_min_scale: expected a number in (0, 1], got {self.crop_min_scale!r}")


class SimsiamModel(RecipeModel):
    def __init__(self, trunk: Backbone, config: SimsiamConfig) -> None:
        super().__init__()
        self.trunk = trunk
        dim = config.projection_dim
        self.projector = mlp([feature_dim(trunk), dim, dim, dim], last_bn=True)
        self.predictor = mlp([dim, config.predictor_dim, dim])

    def forward(self, views: tuple[torch.Tensor, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        # each view through the network on its own, so BN statistics stay per view as in SimSiam's code
        z1, z2 = (self.projector(pooled(self.trunk, view)) for view in views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2


@RECIPES.register("simsiam")
class Simsiam(Recipe):
    """SimSiam: Siamese views, predictor and stop-gradient, no negatives (Chen & He, CVPR 2021, arXiv 2011.10566)."""

    name = "simsiam"
    paper = "Chen, He. Exploring Simple Siamese Representation Learning. CVPR 2021"
    Config = SimsiamConfig
    test_settings = {"projection_dim": 512, "predictor_dim": 128}  # CPU tests: narrower heads, less to save

    def build(self, trunk: Backbone, config: SimsiamConfig, dataset_size: int) -> SimsiamModel:
        return SimsiamModel(trunk, config)

    def views(self, config: SimsiamConfig, input_spec: InputSpec, dataset: Any) -> Views:
        return mocov2_views(input_spec, config.color_strength, config.crop_min_scale)
