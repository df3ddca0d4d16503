"""Optimisers (SGD with Nesterov, LARS, AdamW), parameter groups and warmup-then-decay schedules."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import nn

OptimizerName = Literal["sgd", "lars", "adamw"]
ScheduleName = Literal["constant", "step", "cosine", "poly"]


@dataclasses.dataclass(frozen=True)
class OptimSpec:
    """The optimiser and its schedule; steps are optimiser steps, milestones are given in steps."""

    name: OptimizerName = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    no_decay_norm_and_bias: bool = True  # no weight decay (and no LARS adaptation) on BN/LN weights and biases
    betas: tuple[float, float] = (0.9, 0.999)
    lars_eta: float = 0.001
    schedule: ScheduleName = "step"
    warmup_steps: int = 0
    warmup_start_factor: float = 0.001
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    power: float = 0.9  # poly decay exponent
    final_lr_factor: float = 0.0  # cosine ends at lr * final_lr_factor

    def __post_init__(self) -> None:
        if self.name not in ("sgd", "lars", "adamw"):
            raise ValueError(f"optimizer: expected sgd, lars or adamw, got {self.name!r}")
        if self.schedule not in ("constant", "step", "cosine", "poly"):
            raise ValueError(f"schedule: expected constant, step, cosine or poly, got {self.schedule!r}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"lr: expected a finite number > 0, got {self.lr!r}")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("weight_decay and warmup_steps must be >= 0")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must increase, got {self.milestones!r}")


def is_norm_or_bias(module: nn.Module, name: str, parameter: nn.Parameter) -> bool:
    """True for biases and the affine weights of normalisation layers (1-D parameters)."""
    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    return name.endswith("bias") or isinstance(module, norms) or parameter.ndim <= 1


def parameter_groups(model: nn.Module, weight_decay: float, no_decay_norm_and_bias: bool) -> list[dict]:
    """Trainable parameters in two groups: decayed, and BN/bias without decay (when asked)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            exempt = no_decay_norm_and_bias and is_norm_or_bias(module, name, parameter)
            (no_decay if exempt else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay, "lars_exclude": False}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
    return [group for group in groups if group["params"]]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017), as SimCLR and BYOL use it.

    Groups flagged `lars_exclude` (BN and biases) take plain SGD steps.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta,
                                  "lars_exclude": False})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad.clone()
                if not group["lars_exclude"]:
                    weight_norm, update_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    trust = torch.where((weight_norm > 0) & (update_norm > 0),
                                        group["eta"] * weight_norm / update_norm, torch.ones_like(weight_norm))
                    update.mul_(trust)
                state = self.state[p]
                buffer = state.get("momentum_buffer")
                if buffer is None:
                    buffer = state["momentum_buffer"] = update
                else:
                    buffer.mul_(group["momentum"]).add_(update)
                p.add_(buffer, alpha=-group["lr"])
        return loss


def build_optimizer(groups: list[dict], spec: OptimSpec) -> torch.optim.Optimizer:
    """The optimiser named by spec over parameter groups from `parameter_groups`."""
    if spec.name == "sgd":
        plain = [{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups]
        return torch.optim.SGD(plain, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov and spec.momentum > 0)
    if spec.name == "adamw":
        plain = [{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups]
        return torch.optim.AdamW(plain, lr=spec.lr, betas=spec.betas)
    return LARS(groups, lr=spec.lr, momentum=spec.momentum, eta=spec.lars_eta)


def lr_factor(spec: OptimSpec, step: int, total_steps: int) -> float:
    """Multiplier of the base lr at optimiser step `step` (0-based) of `total_steps`: linear warmup, then decay."""
    if step < spec.warmup_steps:
        alpha = step / spec.warmup_steps
        return spec.warmup_start_factor * (1 - alpha) + alpha
    if spec.schedule == "step":
        return spec.gamma ** sum(step >= m for m in spec.milestones)
    span = max(1, total_steps - spec.warmup_steps)
    progress = min(1.0, (step - spec.warmup_steps) / span)
    if spec.schedule == "cosine":
        return spec.final_lr_factor + (1 - spec.final_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    if spec.schedule == "poly":
        return (1 - progress) ** spec.power
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, spec: OptimSpec, total_steps: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-optimiser-step LambdaLR following `lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(spec, step, total_steps))
