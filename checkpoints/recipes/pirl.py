"""PIRL (Misra & van der Maaten 2020): a representation invariant to the jigsaw transformation.

The image's embedding f(I) (res5avg -> linear to 128) and the embedding of its
shuffled jigsaw tiles g(I^t) (each tile through the shared trunk, res5avg ->
linear to 128 per tile, the 9 concatenated in their shuffled order -> linear to
128) are both pulled towards the image's memory-bank entry m_I and pushed from
other entries, sampled from the bank: loss = lambda * NCE(m_I, g(I^t)) +
(1 - lambda) * NCE(m_I, f(I)). The bank follows f(I) with momentum 0.5.

The bank, its NCE (Z set once from the first batch) and its update are NPID's
(checkpoints/recipes/npid.py): the bank and Z are buffers, every process draws
the global batch's negatives and keeps its rows, and applies the global batch's
bank update, so the banks stay equal without DDP broadcasting them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms

from benchmark.distributed import all_gather_with_grad, get_rank, get_world_size
from benchmark.protocol import InputSpec
from benchmark.registry import RECIPES
from benchmark.training import TrainSpec
from checkpoints.models import Backbone
from checkpoints.recipes.base import Recipe, RecipeConfig, RecipeModel, feature_dim, pooled
from checkpoints.recipes.npid import estimate_z, nce_loss, nce_probabilities, update_bank
from checkpoints.recipes.tiles import TILES, TileGeometry, color_jitter, shuffle, stack, tile_features


@dataclasses.dataclass(frozen=True)
class PirlConfig(RecipeConfig):
    """PIRL's ImageNet settings (VISSL pirl_jigsaw_4node_resnet50): batch 1024, SGD lr 0.03 per 256 (0.12),
    momentum 0.9, wd 1e-4, 800 epochs, cosine to lr/1000; 128-d embeddings, T=0.07, lambda=0.5, 32000 negatives,
    bank momentum 0.5. Image: RandomResizedCrop (0.08-1); tiles from a RandomResizedCrop (0.6-1) of the 255-px
    puzzle, shuffled; both with colour jitter (0.4, 0.4, 0.4, hue 0.2), grey p=0.2, flip."""

    epochs: int = 800
    batch_size: int = 1024
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    final_lr_factor: float = 0.001
    embedding_dim: int = 128
    temperature: float = 0.07
    jigsaw_weight: float = 0.5  # lambda
    num_negatives: int = 32000
    bank_momentum: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.embedding_dim < 1 or self.num_negatives < 1 or not self.temperature > 0:
            raise ValueError("embedding_dim and num_negatives must be >= 1 and temperature > 0")
        if not 0 <= self.jigsaw_weight <= 1 or not 0 <= self.bank_momentum < 1 or not 0 <= self.final_lr_factor <= 1:
            raise ValueError("jigsaw_weight and final_lr_factor must be in [0, 1] and bank_momentum in [0, 1)")

    def train_spec(self, seed: int, sync_bn: bool = True) -> TrainSpec:
        spec = super().train_spec(seed, sync_bn)
        return dataclasses.replace(spec, optim=dataclasses.replace(spec.optim, final_lr_factor=self.final_lr_factor))


def photometric(input_spec: InputSpec) -> Any:
    """PIRL's per-image and per-tile photometric augmentation, then the tensor."""
    return transforms.Compose([
        color_jitter(0.4, 0.2),
        transforms.RandomGrayscale(p=0.2),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(input_spec.mean, input_spec.std),
    ])


class PirlViews:
    """One image -> (an augmented crop (C, S, S), its 9 jigsaw tiles in a uniformly random order (9, C, t, t))."""

    def __init__(self, input_spec: InputSpec) -> None:
        self.geometry = TileGeometry(input_spec.size)
        self.image = transforms.Compose([transforms.RandomResizedCrop(input_spec.size, scale=(0.08, 1.0)),
                                         photometric(input_spec)])
        self.puzzle = transforms.RandomResizedCrop(self.geometry.side, scale=(0.6, 1.0))
        self.tile = photometric(input_spec)

    def __call__(self, image: Any) -> tuple[torch.Tensor, torch.Tensor]:
        crop = self.image(image)
        tiles = self.geometry.cut(self.puzzle(image))
        return crop, stack(shuffle(tiles, torch.randperm(TILES).tolist()), self.tile)

    def __repr__(self) -> str:
        return f"PirlViews(image={self.image!r}, puzzle={self.puzzle!r}, tile={self.tile!r})"


class PirlModel(RecipeModel):
    def __init__(self, trunk: Backbone, config: PirlConfig, dataset_size: int) -> None:
        super().__init__()
        self.trunk = trunk
        dim, width = config.embedding_dim, feature_dim(trunk)
        self.image_head = nn.Linear(width, dim)
        self.tile_head = nn.Linear(width, dim)
        self.jigsaw_head = nn.Linear(TILES * dim, dim)
        self.config = config
        self.register_buffer("bank", F.normalize(torch.randn(dataset_size, dim), dim=1))  # random unit rows
        self.register_buffer("z", torch.zeros((), dtype=torch.float64))  # 0 until the first batch sets it
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, ["bank"])

    def forward(self, views: tuple[torch.Tensor, torch.Tensor], index: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, tiles = views
        config = self.config
        f = F.normalize(self.image_head(pooled(self.trunk, image)).float(), dim=1)
        g = F.normalize(self.jigsaw_head(self.tile_head(tile_features(self.trunk, tiles)).flatten(1)).float(), dim=1)
        negatives = self.draw_negatives(len(f))  # one set of m per image, for both terms
        with torch.autocast(f.device.type, enabled=False):
            jigsaw_p = nce_probabilities(g, self.bank, index, negatives, config.temperature)
            image_p = nce_probabilities(f, self.bank, index, negatives, config.temperature)
            if not self.z > 0:  # from the patches' term, as VISSL's loss sees it first
                self.z.fill_(estimate_z(jigsaw_p.detach(), len(self.bank)))
            jigsaw = nce_loss(jigsaw_p / self.z.float(), len(self.bank))
            plain = nce_loss(image_p / self.z.float(), len(self.bank))
        if self.training:
            update_bank(self.bank, all_gather_with_grad(index), all_gather_with_grad(f.detach()),
                        config.bank_momentum)
        loss = config.jigsaw_weight * jigsaw + (1 - config.jigsaw_weight) * plain
        return loss, {"nce_jigsaw": jigsaw.detach(), "nce_image": plain.detach()}

    def draw_negatives(self, batch: int) -> torch.Tensor:
        """(batch, m) bank rows drawn uniformly: the global batch's draw, this process's rows."""
        world, rank = get_world_size(), get_rank()
        drawn = torch.randint(len(self.bank), (world * batch, self.config.num_negatives), device=self.bank.device)
        return drawn[rank * batch:(rank + 1) * batch]


@RECIPES.register("pirl")
class Pirl(Recipe):
    """PIRL: image and jigsaw-tile embeddings pulled to the image's memory-bank entry (Misra & van der Maaten 2020)."""

    name = "pirl"
    paper = ("Misra, van der Maaten. Self-Supervised Learning of Pretext-Invariant Representations. CVPR 2020")
    Config = PirlConfig
    test_settings = {"num_negatives": 64, "bank_momentum": 0.99}  # a bank of 32 all updated each step

    def build(self, trunk: Backbone, config: PirlConfig, dataset_size: int) -> PirlModel:
        return PirlModel(trunk, config, dataset_size)

    def views(self, config: PirlConfig, input_spec: InputSpec, dataset: Any) -> PirlViews:
        return PirlViews(input_spec)
