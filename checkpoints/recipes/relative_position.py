"""Relative position (Doersch, Gupta & Efros 2015): where, of the 8 places around a centre patch, a second patch lies.

Both patches go through the shared trunk (res5avg); the two features,
concatenated, go through an MLP to 8 logits. Against trivial shortcuts the
patches are apart by a gap of half a patch and each is jittered by up to
7/96 of a patch; against chromatic aberration (colour fringes that tell where
a patch sat in the lens) each patch either keeps one random colour channel
and has the other two replaced by faint noise ("drop"), or has its
green-magenta component projected out ("project"); the paper tried both.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import torch
from torchvision import transforms
from torchvision.transforms import functional as TF

from benchmark.protocol import InputSpec
from benchmark.registry import RECIPES
from checkpoints.models import Backbone
from checkpoints.recipes.base import Recipe, RecipeModel, feature_dim, mlp, pooled
from checkpoints.recipes.pretext import StepScheduleConfig, classification

# (row, column) steps of the second patch from the centre one; the label is the index (Doersch et al.'s 1..8 - 1)
OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
GREEN_MAGENTA = torch.tensor([-1.0, 2.0, -1.0]) / math.sqrt(6.0)
DROP_NOISE = 0.01  # std of the noise in a dropped channel, in normalised units (about 1/100 of a channel's std)


@dataclasses.dataclass(frozen=True)
class RelativePositionConfig(StepScheduleConfig):
    """Doersch et al.'s patch geometry at 224 px input (96-px patches, 48-px gap, jitter up to 7 px, images
    scaled so the layout covers 1 to 1.5 of the shorter side), colour dropping, a 4096-d hidden layer as fc7.
    Optimisation: the paper's AlexNet schedule does not carry over to ResNets, so Goyal et al.'s ResNet-50
    pretext schedule (as jigsaw): batch 256 pairs, SGD lr 0.1 per 256, momentum 0.9, wd 1e-4, 105 epochs,
    lr x0.1 after epochs 30, 60, 90, 100."""

    epochs: int = 105
    batch_size: int = 256
    lr: float = 0.1
    weight_decay: float = 1e-4
    milestones: tuple[float, ...] = (30 / 105, 60 / 105, 90 / 105, 100 / 105)
    gamma: float = 0.1
    chromatic: Literal["drop", "project", "none"] = "drop"
    hidden_dim: int = 4096
    max_scale: float = 1.5  # the shorter image side is resized to the layout's side x U(1, max_scale)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chromatic not in ("drop", "project", "none"):
            raise ValueError(f"chromatic: expected drop, project or none, got {self.chromatic!r}")
        if self.hidden_dim < 1 or not self.max_scale >= 1:
            raise ValueError("hidden_dim must be >= 1 and max_scale >= 1")


class PatchLayout:
    """Patch side, gap and jitter for an input size: Doersch et al.'s 96 / 48 / 7 at 224, scaled by size / 224."""

    def __init__(self, size: int) -> None:
        self.patch = max(8, round(96 * size / 224))
        self.gap = max(1, round(self.patch / 2))
        self.jitter = max(1, round(self.patch * 7 / 96))
        self.stride = self.patch + self.gap
        self.side = 3 * self.patch + 2 * self.gap + 2 * self.jitter  # the 3x3 layout with room to jitter

    def boxes(self, width: int, height: int, label: int) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
        """(left, top, right, bottom) of the centre patch and of the patch at OFFSETS[label], at a random place."""
        left = int(torch.randint(width - self.side + 1, ()))
        top = int(torch.randint(height - self.side + 1, ()))
        centre = (left + self.jitter + self.stride, top + self.jitter + self.stride)
        row, col = OFFSETS[label]
        second = (centre[0] + col * self.stride, centre[1] + row * self.stride)
        boxes = []
        for x, y in (centre, second):
            dx, dy = torch.randint(-self.jitter, self.jitter + 1, (2,)).tolist()
            boxes.append((x + dx, y + dy, x + dx + self.patch, y + dy + self.patch))
        return boxes[0], boxes[1]


def drop_colours(patch: torch.Tensor) -> torch.Tensor:
    """Keep one random channel of a normalised (3, H, W) patch; the others become N(0, DROP_NOISE) noise."""
    keep = int(torch.randint(3, ()))
    out = torch.randn_like(patch) * DROP_NOISE
    out[keep] = patch[keep]
    return out


def project_colours(patch: torch.Tensor) -> torch.Tensor:
    """Remove the green-magenta component of an unnormalised RGB (3, H, W) patch (Doersch et al.'s projection)."""
    axis = GREEN_MAGENTA.to(patch)
    return patch - axis[:, None, None] * torch.einsum("c,chw->hw", axis, patch)


class PatchPairs:
    """One image -> (centre patch, second patch, label): the pair of Doersch et al. at a random label of 8."""

    def __init__(self, config: RelativePositionConfig, input_spec: InputSpec) -> None:
        self.layout = PatchLayout(input_spec.size)
        self.chromatic = config.chromatic
        self.max_scale = config.max_scale
        self.normalize = transforms.Normalize(input_spec.mean, input_spec.std)

    def __call__(self, image: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = 1 + float(torch.rand(())) * (self.max_scale - 1)
        image = TF.resize(image, round(self.layout.side * scale))
        label = int(torch.randint(len(OFFSETS), ()))
        patches = [self.patch(image.crop(box)) for box in self.layout.boxes(*image.size, label)]
        return patches[0], patches[1], torch.tensor(label)

    def patch(self, crop: Any) -> torch.Tensor:
        tensor = TF.to_tensor(crop)
        if self.chromatic == "project":
            tensor = project_colours(tensor)
        tensor = self.normalize(tensor)
        return drop_colours(tensor) if self.chromatic == "drop" else tensor

    def __repr__(self) -> str:
        layout = self.layout
        return (f"PatchPairs(patch={layout.patch}, gap={layout.gap}, jitter={layout.jitter}, "
                f"chromatic={self.chromatic!r}, max_scale={self.max_scale})")


class RelativePositionModel(RecipeModel):
    def __init__(self, trunk: Backbone, config: RelativePositionConfig) -> None:
        super().__init__()
        self.trunk = trunk
        self.classifier = mlp([2 * feature_dim(trunk), config.hidden_dim, len(OFFSETS)])

    def forward(self, views: tuple[torch.Tensor, torch.Tensor, torch.Tensor], index: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        centre, second, labels = views
        first_features, second_features = pooled(self.trunk, torch.cat([centre, second])).chunk(2)
        return classification(self.classifier(torch.cat([first_features, second_features], dim=1)), labels)


@RECIPES.register("relative_position")
class RelativePosition(Recipe):
    """Relative position: where of 8 places a patch lies around a centre patch (Doersch et al., ICCV 2015)."""

    name = "relative_position"
    paper = ("Doersch, Gupta, Efros. Unsupervised Visual Representation Learning by Context Prediction. "
             "ICCV 2015")
    Config = RelativePositionConfig

    def build(self, trunk: Backbone, config: RelativePositionConfig, dataset_size: int) -> RelativePositionModel:
        return RelativePositionModel(trunk, config)

    def views(self, config: RelativePositionConfig, input_spec: InputSpec, dataset: Any) -> PatchPairs:
        return PatchPairs(config, input_spec)
