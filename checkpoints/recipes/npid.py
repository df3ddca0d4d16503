"""NPID (Wu et al. 2018): instance discrimination against a memory bank of every training image, by NCE.

The bank (N x 128, unit rows) and the NCE constant Z are buffers, so the engine
saves them with the weights. Negatives are drawn uniformly from the bank with
the global RNG; under torchrun every process draws the global batch's rows and
keeps its own, and every process applies the whole global batch's bank update,
so the banks stay equal (DDP is told not to broadcast them).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms

from benchmark.distributed import all_gather_with_grad, all_reduce_sum, get_rank, get_world_size
from benchmark.protocol import InputSpec
from benchmark.registry import RECIPES
from benchmark.training import TrainSpec
from checkpoints.models import Backbone
from checkpoints.recipes.augment import Views
from checkpoints.recipes.base import Recipe, RecipeConfig, RecipeModel, feature_dim, pooled


@dataclasses.dataclass(frozen=True)
class NpidConfig(RecipeConfig):
    """The paper's ImageNet settings: batch 256, SGD lr 0.03 per 256, momentum 0.9, 200 epochs with lr x0.1 at 120
    and 160; 128-d embedding, 4096 negatives, T=0.07, bank momentum 0.5. Weight decay 5e-4 on every parameter (the
    authors' CIFAR script; their ImageNet script defaults to 1e-4)."""

    epochs: int = 200
    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.03
    weight_decay: float = 5e-4
    schedule: str = "step"
    milestones: tuple[int, ...] = (120, 160)  # epochs where the lr drops x0.1 (schedule "step")
    embedding_dim: int = 128
    negatives: int = 4096
    temperature: float = 0.07
    bank_momentum: float = 0.5  # v <- normalize(bank_momentum v + (1 - bank_momentum) f)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.embedding_dim < 1 or self.negatives < 1 or not self.temperature > 0:
            raise ValueError("embedding_dim and negatives must be >= 1 and temperature > 0")
        if not 0 <= self.bank_momentum < 1:
            raise ValueError(f"bank_momentum: expected a number in [0, 1), got {self.bank_momentum!r}")
        if list(self.milestones) != sorted(set(self.milestones)) or any(m < 1 for m in self.milestones):
            raise ValueError(f"milestones: expected increasing epochs >= 1, got {self.milestones!r}")

    def train_spec(self, seed: int, sync_bn: bool = True) -> TrainSpec:
        """The step milestones in epochs; weight decay on BN and biases too (the paper's code decays everything)."""
        spec = super().train_spec(seed, sync_bn)
        return dataclasses.replace(spec, milestone_epochs=self.milestones,
                                   optim=dataclasses.replace(spec.optim, no_decay_norm_and_bias=False))


def nce_probabilities(features: torch.Tensor, bank: torch.Tensor, index: torch.Tensor, negatives: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """exp(v_j . f / T) for the positive j = index (column 0) and the sampled negatives (columns 1..m): (B, m+1).

    The unnormalised P(j | f); divided by Z it is the paper's non-parametric softmax
    with Z estimated rather than summed over the bank.
    """
    columns = torch.cat([index[:, None], negatives], dim=1)
    scores = torch.bmm(bank[columns], features[:, :, None]).squeeze(2)
    return torch.exp(scores / temperature)


def nce_loss(probabilities: torch.Tensor, bank_size: int) -> torch.Tensor:
    """The NCE loss of the paper (eq. 7): -log h(i, v_i) - sum over the m noise samples of log(1 - h(i, v')).

    h(i, v) = P(i|v) / (P(i|v) + m P_n), P_n = 1/N; `probabilities` are P(i|v)
    (already divided by Z), the positive in column 0; mean over the batch.
    """
    noise = (probabilities.shape[1] - 1) / bank_size
    positive = probabilities[:, 0]
    negative = probabilities[:, 1:]
    log_h = torch.log(positive / (positive + noise))
    log_not_h = torch.log(noise / (negative + noise)).sum(1)
    return -(log_h + log_not_h).mean()


@torch.no_grad()
def estimate_z(probabilities: torch.Tensor, bank_size: int) -> float:
    """Z = N x the mean of exp(v . f / T) over the global batch's positives and negatives (the paper's code)."""
    total, count = all_reduce_sum([float(probabilities.double().sum()), float(probabilities.numel())])
    return bank_size * total / count


def update_bank(bank: torch.Tensor, index: torch.Tensor, features: torch.Tensor, momentum: float) -> None:
    """bank[i] <- normalize(momentum bank[i] + (1 - momentum) f_i) at the batch's indices, in place."""
    bank[index] = F.normalize(momentum * bank[index] + (1 - momentum) * features.to(bank.dtype), dim=1)


class NpidModel(RecipeModel):
    def __init__(self, trunk: Backbone, config: NpidConfig, dataset_size: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(feature_dim(trunk), config.embedding_dim)
        self.negatives = config.negatives
        self.temperature = config.temperature
        self.bank_momentum = config.bank_momentum
        # random unit vectors from the (seeded) global RNG, as the paper initialises the bank
        self.register_buffer("bank", F.normalize(torch.randn(dataset_size, config.embedding_dim), dim=1))
        self.register_buffer("z", torch.zeros((), dtype=torch.float64))  # 0 until the first batch sets it
        # every process keeps an equal bank itself: no broadcast of N x 128 floats before each forward
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, ["bank"])

    def forward(self, views: tuple[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        features = F.normalize(self.head(pooled(self.trunk, views[0])).float(), dim=1)
        batch, world, rank = len(features), get_world_size(), get_rank()
        # the global batch's draw, this process's rows: negatives do not depend on the number of processes
        drawn = torch.randint(len(self.bank), (world * batch, self.negatives), device=self.bank.device)
        negatives = drawn[rank * batch:(rank + 1) * batch]
        with torch.autocast(features.device.type, enabled=False):
            probabilities = nce_probabilities(features, self.bank, index, negatives, self.temperature)
            if not self.z > 0:
                self.z.fill_(estimate_z(probabilities.detach(), len(self.bank)))
            loss = nce_loss(probabilities / self.z.to(probabilities.dtype), len(self.bank))
        if self.training:
            update_bank(self.bank, all_gather_with_grad(index), all_gather_with_grad(features.detach()),
                        self.bank_momentum)
        return loss



@RECIPES.register("npid")
class Npid(Recipe):
    """NPID: non-parametric instance discrimination with a memory bank and NCE (Wu et al., CVPR 2018, arXiv 1805.01978)."""

    name = "npid"
    paper = ("Wu, Xiong, Yu, Lin. Unsupervised Feature Learning via Non-Parametric Instance Discrimination. "
             "CVPR 2018")
    Config = NpidConfig
    # CPU tests: banks of 32-128 images. A slow bank keeps the one-batch test about the trunk's learning: with the
    # paper's 0.5 the bank turns from random vectors into the (at first all alike) features within a few steps,
    # which raises the loss whatever the trunk learns.
    test_settings = {"negatives": 64, "bank_momentum": 0.99}

    def build(self, trunk: Backbone, config: NpidConfig, dataset_size: int) -> NpidModel:
        return NpidModel(trunk, config, dataset_size)

    def views(self, config: NpidConfig, input_spec: InputSpec, dataset: Any) -> Views:
        """One view: RandomResizedCrop(0.2, 1), grey (p=0.2), colour jitter 0.4, flip (the paper's code)."""
        return Views(transforms.Compose([
            transforms.RandomResizedCrop(input_spec.size, scale=(0.2, 1.0)),
            transforms.RandomGrayscale(p=0.2),
            transforms.ColorJitter(0.4, 0.4, 0.4, 0.4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(input_spec.mean, input_spec.std),
        ]))
