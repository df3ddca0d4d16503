"""Barlow Twins (Zbontar et al. 2021): two views, a wide projector, the cross-correlation of the global batch driven to I.

Biases and BN parameters take their own lr (the paper's 0.0048 per 256 beside 0.2
for weights). The engine has one lr, so the model scales the gradients of those
parameters by bias_lr / lr: they take no weight decay and no LARS adaptation
(plain momentum steps), so that is exactly a separate lr under SGD and LARS.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from benchmark.distributed import all_gather_with_grad
from benchmark.protocol import InputSpec
from benchmark.registry import RECIPES
from benchmark.training import TrainSpec
from benchmark.training.optim import is_norm_or_bias
from checkpoints.models import Backbone
from checkpoints.recipes.augment import Views, simclr_augmentation
from checkpoints.recipes.base import Recipe, RecipeConfig, RecipeModel, feature_dim, mlp, pooled


@dataclasses.dataclass(frozen=True)
class BarlowTwinsConfig(RecipeConfig):
    """The paper's ImageNet defaults: batch 2048, LARS, lr 0.2 (weights) / 0.0048 (biases, BN) per 256, wd 1.5e-6,
    10 warmup epochs then cosine to 0.001 x lr, 1000 epochs, projector 8192-8192-8192, lambda 0.0051."""

    epochs: int = 1000
    batch_size: int = 2048
    optimizer: str = "lars"
    lr: float = 0.2  # per 256, for weights
    bias_lr: float = 0.0048  # per 256, for biases and BN parameters
    weight_decay: float = 1.5e-6
    warmup_epochs: float = 10.0
    final_lr_factor: float = 0.001  # the cosine ends at lr x this (the paper's code)
    lambd: float = 0.0051  # weight of the off-diagonal terms
    projector_dim: int = 8192  # width of the projector's three layers

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.bias_lr > 0 or not self.lambd >= 0 or self.projector_dim < 1:
            raise ValueError("bias_lr must be > 0, lambd >= 0 and projector_dim >= 1")
        if not 0 <= self.final_lr_factor <= 1:
            raise ValueError(f"final_lr_factor: expected a number in [0, 1], got {self.final_lr_factor!r}")
        if self.optimizer == "adamw" and self.bias_lr != self.lr:
            raise ValueError("bias_lr is applied by scaling gradients, which AdamW ignores; "
                             "with optimizer adamw set bias_lr equal to lr")

    def train_spec(self, seed: int, sync_bn: bool = True) -> TrainSpec:
        spec = super().train_spec(seed, sync_bn)
        return dataclasses.replace(spec, optim=dataclasses.replace(spec.optim, final_lr_factor=self.final_lr_factor))


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float, eps: float = 1e-5) -> torch.Tensor:
    """sum_i (1 - C_ii)^2 + lambd sum_{i != j} C_ij^2, C the cross-correlation over the global batch.

    z1[n] and z2[n] are the projections of two views of image n on this process.
    Each is normalised along the batch with the global batch's mean and (biased)
    variance, as a BatchNorm without affine parameters under SyncBN would, and
    C = z1n^T z2n / N. Every process computes the same loss; gradients reach
    each process's rows through the gather (DDP's average then gives the
    gradient of that one loss).
    """
    with torch.autocast(z1.device.type, enabled=False):
        a, b = all_gather_with_grad(z1.float()), all_gather_with_grad(z2.float())
        a = (a - a.mean(0)) / torch.sqrt(a.var(0, unbiased=False) + eps)
        b = (b - b.mean(0)) / torch.sqrt(b.var(0, unbiased=False) + eps)
        c = a.T @ b / len(a)
        diagonal = torch.diagonal(c)
        on_diagonal = (1 - diagonal).pow(2).sum()
        off_diagonal = c.pow(2).sum() - diagonal.pow(2).sum()
        return on_diagonal + lambd * off_diagonal


class BarlowTwinsModel(RecipeModel):
    def __init__(self, trunk: Backbone, config: BarlowTwinsConfig) -> None:
        super().__init__()
        self.trunk = trunk
        width = config.projector_dim
        # Linear-BN-ReLU twice, then a Linear without bias (the loss normalises its output)
        self.projector = mlp([feature_dim(trunk), width, width, width], last_bn=True)[:-1]
        self.lambd = config.lambd
        scale = config.bias_lr / config.lr
        if scale != 1:
            for module in self.modules():
                for name, parameter in module.named_parameters(recurse=False):
                    if is_norm_or_bias(module, name, parameter):
                        parameter.register_hook(lambda grad: grad * scale)

    def forward(self, views: tuple[torch.Tensor, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        first, second = views
        z = self.projector(pooled(self.trunk, torch.cat([first, second])))
        z1, z2 = z.chunk(2)
        return barlow_twins_loss(z1, z2, self.lambd)


@RECIPES.register("barlow_twins")
class BarlowTwins(Recipe):
    """Barlow Twins: redundancy reduction of two views' embeddings (Zbontar et al., ICML 2021, arXiv 2103.03230)."""

    name = "barlow_twins"
    paper = ("Zbontar, Jing, Misra, LeCun, Deny. Barlow Twins: Self-Supervised Learning via Redundancy Reduction. "
             "ICML 2021")
    Config = BarlowTwinsConfig
    test_settings = {"projector_dim": 64}  # a CPU-sized projector for the registry tests

    def build(self, trunk: Backbone, config: BarlowTwinsConfig, dataset_size: int) -> BarlowTwinsModel:
        return BarlowTwinsModel(trunk, config)

    def views(self, config: BarlowTwinsConfig, input_spec: InputSpec, dataset: Any) -> Views:
        """BYOL's asymmetric pair: blur p=1.0 and no solarisation; blur p=0.1 and solarisation p=0.2.

        From the shared SimCLR family at colour strength 0.5: jitter (0.4, 0.4, 0.4,
        0.1) where BYOL's saturation is 0.2, and blur only from 64 px up.
        """
        first = simclr_augmentation(input_spec, color_strength=0.5, blur_probability=1.0)
        second = simclr_augmentation(input_spec, color_strength=0.5, blur_probability=0.1, solarize=0.2)
        return Views(first, second)
