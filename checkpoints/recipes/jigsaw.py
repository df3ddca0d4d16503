"""Jigsaw (Noroozi & Favaro 2016), scaled as Goyal et al. 2019: which permutation of a maximal-Hamming set shuffled
the 3x3 tiles; each tile through the shared trunk (res5avg), the 9 features concatenated, an MLP classifier."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from torchvision import transforms

from benchmark.protocol import InputSpec
from benchmark.registry import RECIPES
from checkpoints.models import Backbone
from checkpoints.recipes.base import Recipe, RecipeModel, feature_dim
from checkpoints.recipes.pretext import StepScheduleConfig, classification
from checkpoints.recipes.tiles import TILES, TileGeometry, color_jitter, permutation_set, shuffle, stack, tile_features


@dataclasses.dataclass(frozen=True)
class JigsawConfig(StepScheduleConfig):
    """Goyal et al.'s ResNet-50 jigsaw (VISSL jigsaw_8gpu_resnet): 2000 permutations, batch 256, SGD lr 0.1 per
    256, momentum 0.9, wd 1e-4, 105 epochs (5 of linear warmup from lr/4), lr x0.1 after epochs 30, 60, 90, 100;
    grey-scale p=0.66 on the image, a 1000-d BN-ReLU layer per tile, then one linear layer over the 9000-d
    concatenation. Per-tile colour jitter (brightness, contrast, saturation 0.4, hue 0.1) is our addition."""

    epochs: int = 105
    batch_size: int = 256
    lr: float = 0.1
    weight_decay: float = 1e-4
    warmup_epochs: float = 5.0
    warmup_start_factor: float = 0.25
    milestones: tuple[float, ...] = (30 / 105, 60 / 105, 90 / 105, 100 / 105)
    gamma: float = 0.1
    num_permutations: int = 2000  # 100, 1000 (Noroozi & Favaro), 2000 (Goyal et al.'s scaled default), 10000
    permutation_seed: int = 0  # picks the greedy selection's first permutation
    tile_dim: int = 1000
    grey_probability: float = 0.66
    tile_jitter: float = 0.4  # 0 turns the per-tile colour jitter off

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 2 <= self.num_permutations <= 362880:
            raise ValueError(f"num_permutations: expected 2 to 9! = 362880, got {self.num_permutations!r}")
        if self.tile_dim < 1 or not 0 <= self.grey_probability <= 1 or not 0 <= self.tile_jitter <= 1:
            raise ValueError("tile_dim must be >= 1, grey_probability in [0, 1] and tile_jitter in [0, 1]")


class JigsawViews:
    """One image -> (its 9 tiles ordered by a random permutation of the set (9, C, t, t), that permutation's index)."""

    def __init__(self, config: JigsawConfig, input_spec: InputSpec) -> None:
        self.geometry = TileGeometry(input_spec.size)
        self.permutations = permutation_set(config.num_permutations, TILES, config.permutation_seed)
        self.puzzle = transforms.Compose([
            transforms.Resize(self.geometry.resize),
            transforms.RandomCrop(self.geometry.side),
            transforms.RandomHorizontalFlip(),
            transforms.RandomGrayscale(p=config.grey_probability),
        ])
        self.tile = transforms.Compose([
            color_jitter(config.tile_jitter, config.tile_jitter / 4),
            transforms.ToTensor(),
            transforms.Normalize(input_spec.mean, input_spec.std),
        ])

    def __call__(self, image: Any) -> tuple[torch.Tensor, torch.Tensor]:
        tiles = self.geometry.cut(self.puzzle(image))
        label = int(torch.randint(len(self.permutations), ()))
        return stack(shuffle(tiles, self.permutations[label]), self.tile), torch.tensor(label)

    def __repr__(self) -> str:
        return f"JigsawViews(permutations={len(self.permutations)}, puzzle={self.puzzle!r}, tile={self.tile!r})"


class JigsawModel(RecipeModel):
    def __init__(self, trunk: Backbone, config: JigsawConfig) -> None:
        super().__init__()
        self.trunk = trunk
        self.tile_head = nn.Sequential(nn.Linear(feature_dim(trunk), config.tile_dim, bias=False),
                                       nn.BatchNorm1d(config.tile_dim), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(TILES * config.tile_dim, config.num_permutations)
        permutations = permutation_set(config.num_permutations, TILES, config.permutation_seed)
        self.register_buffer("permutations", torch.tensor(permutations))  # saved with the heads: the labels' meaning

    def forward(self, views: tuple[torch.Tensor, torch.Tensor], index: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tiles, labels = views
        features = self.tile_head(tile_features(self.trunk, tiles).flatten(0, 1))
        return classification(self.classifier(features.view(len(tiles), -1)), labels)


@RECIPES.register("jigsaw")
class Jigsaw(Recipe):
    """Jigsaw: which permutation of a maximal-Hamming set shuffled 3x3 tiles (Noroozi & Favaro; Goyal et al. 2019)."""

    name = "jigsaw"
    paper = ("Noroozi, Favaro. Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles. ECCV 2016; "
             "Goyal, Mahajan, Gupta, Misra. Scaling and Benchmarking Self-Supervised Visual Representation "
             "Learning. ICCV 2019")
    Config = JigsawConfig
    test_settings = {"num_permutations": 10}

    def build(self, trunk: Backbone, config: JigsawConfig, dataset_size: int) -> JigsawModel:
        return JigsawModel(trunk, config)

    def views(self, config: JigsawConfig, input_spec: InputSpec, dataset: Any) -> JigsawViews:
        return JigsawViews(config, input_spec)
