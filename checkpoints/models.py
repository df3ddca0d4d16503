"""Backbones with named taps; architectures register in checkpoints/archs/ (one family per file)."""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from benchmark.errors import SslBenchError
from benchmark.registry import ARCHS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Stage = Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Tap:
    """A named feature layer: channels and stride w.r.t. the input (0 for globally pooled taps)."""

    name: str
    channels: int
    stride: int


class Backbone(nn.Module):
    """A trunk whose forward returns the requested taps, stopping after the deepest one.

    Subclasses set `taps` (in forward order) and `default_taps`, and either implement
    `stages()` (one callable per tap, each taking the previous stage's output) or,
    when taps do not form a chain (a ViT reads several from one block), override
    `forward_taps`.
    """

    arch: str
    taps: tuple[Tap, ...]
    default_taps: tuple[str, ...]
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @abstractmethod
    def stages(self) -> Sequence[Stage]:
        """One callable per entry of `taps`, in the same order, chained output to input."""

    def forward_taps(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Raw (unpooled) maps for `names`; globally pooled taps come back as (B, C)."""
        wanted = set(self.check_taps(names))
        order = [t.name for t in self.taps]
        if not wanted:
            return {}
        deepest = max(order.index(n) for n in wanted)
        out: dict[str, torch.Tensor] = {}
        for name, stage in zip(order[:deepest + 1], self.stages()):
            x = stage(x)
            if name in wanted:
                out[name] = x
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_taps(x, [t.name for t in self.taps])

    def adapt_input(self, size: int) -> dict[str, Any]:
        """Prepare for `size` px inputs; returns what changed, for the record (convolutional trunks: nothing)."""
        return {}

    def tap(self, name: str) -> Tap:
        for tap in self.taps:
            if tap.name == name:
                return tap
        names = [t.name for t in self.taps]
        raise SslBenchError(f"architecture '{self.arch}' has no tap '{name}'; its taps: {', '.join(names)}")

    def check_taps(self, names: Sequence[str]) -> tuple[str, ...]:
        """Validate tap names against this architecture; returns them as a tuple."""
        return tuple(self.tap(n).name for n in names)


def build_backbone(arch: str, **kwargs: Any) -> Backbone:
    """A freshly initialised backbone of a registered architecture."""
    builder = ARCHS.get(arch)
    model = builder(**kwargs)
    model.arch = arch
    return model


def build_seeded(arch: str, seed: int, **kwargs: Any) -> Backbone:
    """`build_backbone` with its random init drawn from `seed`, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_backbone(arch, **kwargs)
