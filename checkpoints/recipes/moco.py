"""MoCo v2 (Chen, Fan, Girshick, He 2020): a momentum key encoder, a queue of negatives, InfoNCE, shuffle BN."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.distributed as dist

from benchmark.distributed import all_gather_with_grad, get_rank, get_world_size, is_distributed
from benchmark.protocol import InputSpec
from benchmark.registry import RECIPES
from checkpoints.models import Backbone
from checkpoints.recipes.augment import Views
from checkpoints.recipes.base import Recipe, RecipeConfig, RecipeModel, feature_dim, mlp, pooled
from checkpoints.recipes.siamese import ema_update_, enqueue_, info_nce, momentum_copy, mocov2_views


@dataclasses.dataclass(frozen=True)
class MocoConfig(RecipeConfig):
    """MoCo v2's ImageNet defaults: batch 256, SGD lr 0.03 per 256, momentum 0.9, wd 1e-4, cosine, 200 epochs.

    K=65536 keys in the queue, key encoder momentum m=0.999, T=0.2, MLP head
    2048-d hidden -> 128; crops of scale (0.2, 1), colour jitter (0.4, 0.4, 0.4, 0.1).
    Deviation: BN weights and biases take no weight decay (the engine's policy;
    MoCo's code decays every parameter).
    """

    epochs: int = 200
    lr: float = 0.03
    weight_decay: float = 1e-4
    temperature: float = 0.2
    queue_size: int = 65536  # any size: the queue wraps around, it need not be a multiple of the batch
    key_momentum: float = 0.999
    hidden_dim: int = 2048
    projection_dim: int = 128
    color_strength: float = 0.5
    crop_min_scale: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.temperature > 0 or self.queue_size < 1 or not 0 <= self.key_momentum < 1:
            raise ValueError("temperature must be > 0, queue_size >= 1 and key_momentum in [0, 1)")
        if min(self.hidden_dim, self.projection_dim) < 1 or not self.color_strength >= 0:
            raise ValueError("hidden_dim and projection_dim must be >= 1 and color_strength >= 0")
        if not 0 < self.crop_min_scale <= 1:
            raise ValueError(f"crop_min_scale: expected a number in (0, 1], got {self.crop_min_scale!r}")


@torch.no_grad()
def shuffle_batch(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MoCo's shuffle BN: this process's share of the global batch in a random order, and the order's inverse.

    Every process draws the permutation from its global RNG and takes rank 0's
    (broadcast), so the keys' BN statistics come from other images than their
    queries'. In a single process it is a no-op (inverse None).
    """
    if not is_distributed():
        return images, None
    every = all_gather_with_grad(images)
    order = torch.randperm(len(every)).to(images.device)
    dist.broadcast(order, src=0)
    return every[order.view(get_world_size(), -1)[get_rank()]], torch.argsort(order)


@torch.no_grad()
def unshuffle_batch(keys: torch.Tensor, inverse: torch.Tensor | None) -> torch.Tensor:
    """Undo `shuffle_batch`: the keys of this process's own images, in their order."""
    if inverse is None:
        return keys
    return all_gather_with_grad(keys)[inverse.view(get_world_size(), -1)[get_rank()]]


class MocoModel(RecipeModel):
    def __init__(self, trunk: Backbone, config: MocoConfig) -> None:
        super().__init__()
        self.trunk = trunk
        self.projector = mlp([feature_dim(trunk), config.hidden_dim, config.projection_dim], batch_norm=False)
        self.key_trunk = momentum_copy(trunk)
        self.key_projector = momentum_copy(self.projector)
        self.temperature, self.key_momentum = config.temperature, config.key_momentum
        queue = torch.nn.functional.normalize(torch.randn(config.queue_size, config.projection_dim), dim=1)
        self.register_buffer("queue", queue)
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))

    def forward(self, views: tuple[torch.Tensor, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        query_view, key_view = views
        query = self.projector(pooled(self.trunk, query_view))
        with torch.no_grad():
            ema_update_(self.key_trunk, self.trunk, self.key_momentum)
            ema_update_(self.key_projector, self.projector, self.key_momentum)
            shuffled, inverse = shuffle_batch(key_view)
            key = unshuffle_batch(self.key_projector(pooled(self.key_trunk, shuffled)), inverse)
            key = torch.nn.functional.normalize(key.float(), dim=1)
        loss = info_nce(query, key, self.queue, self.temperature)
        enqueue_(self.queue, self.queue_pointer, all_gather_with_grad(key))
        return loss


@RECIPES.register("moco")
class Moco(Recipe):
    """MoCo v2: momentum key encoder, queue of negatives, InfoNCE (Chen et al. 2020, arXiv 2003.04297)."""

    name = "moco"
    paper = "Chen, Fan, Girshick, He. Improved Baselines with Momentum Contrastive Learning. arXiv 2003.04297, 2020"
    Config = MocoConfig
    # Shuffle BN instead of SyncBatchNorm: with per-process BN, a key's statistics come from other images
    # than its query's, so the loss cannot be lowered through BN's intra-batch leak (He et al. 2020)
    sync_bn = False

    def build(self, trunk: Backbone, config: MocoConfig, dataset_size: int) -> MocoModel:
        return MocoModel(trunk, config)

    def views(self, config: MocoConfig, input_spec: InputSpec, dataset: Any) -> Views:
        return mocov2_views(input_spec, config.color_strength, config.crop_min_scale)
