"""View augmentations the recipes share (SimCLR's family), at the size and normalisation the run resolved."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchvision import transforms

from benchmark.protocol import InputSpec


def simclr_augmentation(input_spec: InputSpec, color_strength: float = 1.0, scale: tuple[float, float] = (0.08, 1.0),
                        blur: bool | None = None, solarize: float = 0.0, blur_probability: float = 0.5) -> Any:
    """RandomResizedCrop, flip, colour jitter (p=0.8), grey (p=0.2), Gaussian blur, Normalize (Chen et al. 2020).

    Blur is on by default from 64 px up (SimCLR leaves it out on CIFAR-sized
    images); `solarize` > 0 adds BYOL's solarisation with that probability.
    """
    size = input_spec.size
    s = color_strength
    steps: list[Any] = [
        transforms.RandomResizedCrop(size, scale=scale),
        transforms.RandomHorizontalFlip(),
        transforms.RandomApply([transforms.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
    ]
    if blur if blur is not None else size >= 64:
        kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
        steps.append(transforms.RandomApply([transforms.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur_probability))
    if solarize > 0:
        steps.append(transforms.RandomSolarize(128, p=solarize))
    steps += [transforms.ToTensor(), transforms.Normalize(input_spec.mean, input_spec.std)]
    return transforms.Compose(steps)


class Views:
    """One image -> a tuple of independently augmented views, one per transform."""

    def __init__(self, *transforms_: Callable[[Any], torch.Tensor]) -> None:
        self.transforms = transforms_

    def __call__(self, image: Any) -> tuple[torch.Tensor, ...]:
        return tuple(transform(image) for transform in self.transforms)

    def __repr__(self) -> str:
        return f"Views({', '.join(repr(t) for t in self.transforms)})"
