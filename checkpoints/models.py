"""Backbones with named taps; architectures register in checkpoints/archs/ (one family per file)."""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from benchmark.errors import SslBenchError
from benchmark.registry import ARCHS


@dataclasses.dataclass(frozen=True)
class Tap:
    """A named feature layer: channels and stride w.r.t. the input (0 for globally pooled taps)."""

    name: str
    channels: int
    stride: int


class Backbone(nn.Module):
    """A trunk whose forward returns the requested taps, stopping after the deepest one."""

    arch: str
    taps: ClassVar[tuple[Tap, ...]]
    default_taps: ClassVar[tuple[str, ...]]
    input_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @abstractmethod
    def forward_taps(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Raw (unpooled) maps for `names`; globally pooled taps come back as (B, C)."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_taps(x, [t.name for t in self.taps])

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
