"""What the classification pretext recipes (rotnet, jigsaw, relative_position) share: the step schedule and the loss."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from benchmark.training import TrainSpec
from checkpoints.recipes.base import RecipeConfig


@dataclasses.dataclass(frozen=True)
class StepScheduleConfig(RecipeConfig):
    """RecipeConfig with the papers' step schedule: lr x gamma at each milestone, given as fractions of the epochs.

    Fractions keep the schedule's shape when --epochs shortens or lengthens
    a run (VISSL's "rescaled" intervals); 60/200 is the paper's 60th of 200
    epochs, and a milestone rounds to a whole epoch. Warmup is linear from
    lr x warmup_start_factor.
    """

    schedule: str = "step"
    milestones: tuple[float, ...] = (0.3, 0.6, 0.8)
    gamma: float = 0.1
    nesterov: bool = False
    warmup_start_factor: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if list(self.milestones) != sorted(self.milestones) or not all(0 < m <= 1 for m in self.milestones):
            raise ValueError(f"milestones: expected increasing fractions of the epochs in (0, 1], "
                             f"got {self.milestones!r}")
        if not 0 < self.gamma <= 1 or not 0 <= self.warmup_start_factor <= 1:
            raise ValueError("gamma must be in (0, 1] and warmup_start_factor in [0, 1]")

    def train_spec(self, seed: int, sync_bn: bool = True) -> TrainSpec:
        spec = super().train_spec(seed, sync_bn)
        optim = dataclasses.replace(spec.optim, gamma=self.gamma, nesterov=self.nesterov,
                                    warmup_start_factor=self.warmup_start_factor)
        milestones = tuple(max(1, round(m * self.epochs)) for m in self.milestones) if self.schedule == "step" else ()
        return dataclasses.replace(spec, optim=optim, milestone_epochs=milestones)


def classification(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy of the pretext labels, and the pretext top-1 (%) for the history."""
    logits = logits.float()
    top1 = (logits.detach().argmax(1) == labels).float().mean() * 100
    return F.cross_entropy(logits, labels), {"pretext_top1": top1}
