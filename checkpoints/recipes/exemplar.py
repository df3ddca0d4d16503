"""Exemplar-CNN (Dosovitskiy et al. 2014): every seed image is its own class; classify heavy augmentations of them.

Seeds. At build, `classes` training images (at most the split's size) are
drawn from the global RNG (seeded by the run) and kept, sorted, in the buffer
`seeds` of dataset indices; seed k is surrogate class k. The model's
`training_indices()` names them, so `ssl-bench pretrain` trains on those
images only: an epoch is one pass over the seeds, each seed giving `samples`
augmentations (the engine draws them afresh each epoch), so every class gets
the same number of samples per epoch. Called with an image that is not a seed,
the model leaves it out of the loss.

Augmentation (the paper's list, at the run's input size): the whole image is
the seed "patch" (the paper: a 32 px patch where the gradient is strong);
translation up to 0.2 of the side, scale 0.7-1.4, rotation up to 20 degrees
(the border filled with the mean colour); contrast 1: each principal
component of the dataset's pixel colours scaled by 0.5-2; contrast 2:
saturation and value raised to a power in 0.25-4, multiplied by 0.7-1.4 and
shifted by -0.1..0.1; colour: hue shifted by -0.1..0.1. Factors that multiply
(0.5-2, 0.25-4) are drawn log-uniformly, the others uniformly.

Head: a linear classifier over the classes on res5avg (the paper: a fully
connected layer with dropout before the softmax).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms

from benchmark.errors import SslBenchError
from benchmark.protocol import InputSpec
from benchmark.registry import RECIPES
from checkpoints.models import Backbone
from checkpoints.recipes.augment import Views
from checkpoints.recipes.base import Recipe, RecipeConfig, RecipeModel, feature_dim, pooled


@dataclasses.dataclass(frozen=True)
class ExemplarConfig(RecipeConfig):
    """Dosovitskiy et al.: 8000 surrogate classes, SGD lr 0.01 at batch 128 (0.02 per 256), momentum 0.9."""

    epochs: int = 100  # passes over the seeds (the paper stops when surrogate validation error stops falling)
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.02
    weight_decay: float = 5e-4  # not given in the paper
    schedule: str = "cosine"  # the paper: lr / 10 on plateaus of a surrogate validation error
    classes: int = 8000  # surrogate classes (seed images), capped at the training split's size
    samples: int = 2  # augmentations of a seed per epoch (in one batch)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.classes < 2 or self.samples < 1:
            raise ValueError(f"classes must be >= 2 and samples >= 1, got {self.classes} and {self.samples}")


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] (3, H, W) -> HSV in [0, 1] (hue in turns), as colorsys."""
    r, g, b = rgb.unbind(-3)
    high, low = rgb.amax(-3), rgb.amin(-3)
    spread = high - low
    safe = spread.clamp_min(1e-12)
    red, green, blue = ((high - c) / safe for c in (r, g, b))
    hue = torch.where(high == r, blue - green, torch.where(high == g, 2 + red - blue, 4 + green - red))
    hue = torch.where(spread > 0, (hue / 6) % 1, torch.zeros_like(hue))
    saturation = torch.where(high > 0, spread / high.clamp_min(1e-12), torch.zeros_like(high))
    return torch.stack([hue, saturation, high], -3)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """HSV in [0, 1] (3, H, W) -> RGB in [0, 1], as colorsys."""
    h, s, v = hsv.unbind(-3)
    sector = torch.floor(h * 6)
    f = h * 6 - sector
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = torch.stack([torch.stack(c) for c in ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))])
    index = (sector.long() % 6).expand(3, 1, *h.shape)
    return choices.gather(1, index).squeeze(1)


def _uniform(low: float, high: float, n: int = 1) -> torch.Tensor:
    return low + (high - low) * torch.rand(n)


def _log_uniform(low: float, high: float, n: int = 1) -> torch.Tensor:
    return torch.exp(_uniform(math.log(low), math.log(high), n))


class SurrogateAugmentation:
    """Dosovitskiy et al.'s transformations of a seed image; randomness from torch's (seeded) global RNG."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...], pixel_mean: torch.Tensor,
                 components: torch.Tensor) -> None:
        fill = [round(255 * float(c)) for c in pixel_mean]
        self.geometry = transforms.Compose([
            transforms.Resize(size), transforms.CenterCrop(size),
            transforms.RandomAffine(20, translate=(0.2, 0.2), scale=(0.7, 1.4),
                                    interpolation=transforms.InterpolationMode.BILINEAR, fill=fill),
            transforms.ToTensor()])
        self.pixel_mean, self.components = pixel_mean, components  # (3,), (3, 3) eigenvectors as columns
        self.normalize = transforms.Normalize(mean, std)

    def __call__(self, image: Any) -> torch.Tensor:
        x = self.geometry(image)
        # contrast 1: scale the colours' projections on the dataset's principal components
        centred = x.permute(1, 2, 0) - self.pixel_mean
        scaled = (centred @ self.components) * _log_uniform(0.5, 2.0, 3)
        x = (scaled @ self.components.T + self.pixel_mean).permute(2, 0, 1).clamp(0, 1)
        # contrast 2 and colour: saturation and value to a power, times a factor, plus a shift; hue shifted
        h, s, v = rgb_to_hsv(x).unbind(0)
        s, v = ((c ** _log_uniform(0.25, 4.0) * _uniform(0.7, 1.4) + _uniform(-0.1, 0.1)).clamp(0, 1) for c in (s, v))
        h = (h + _uniform(-0.1, 0.1)) % 1
        return self.normalize(hsv_to_rgb(torch.stack([h, s, v])))

    def __repr__(self) -> str:
        return f"SurrogateAugmentation({self.geometry!r}, {self.normalize!r})"


def pixel_statistics(images: Any, size: int, sample: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean colour (3,) and principal directions (3, 3, as columns) of the pixels of evenly spaced images."""
    to_tensor = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()])
    picks = torch.linspace(0, len(images) - 1, min(sample, len(images))).round().long().unique().tolist()
    pixels = torch.cat([to_tensor(images[i][0]).reshape(3, -1) for i in picks], 1).double()
    _, vectors = torch.linalg.eigh(torch.cov(pixels))
    return pixels.mean(1).float(), vectors.float()


class ExemplarModel(RecipeModel):
    def __init__(self, trunk: Backbone, config: ExemplarConfig, dataset_size: int) -> None:
        super().__init__()
        classes = min(config.classes, dataset_size)
        if classes < config.batch_size:
            raise SslBenchError(f"exemplar: {classes} surrogate classes (seed images) make no batch of "
                                f"{config.batch_size}; pass a smaller --batch-size or more images")
        self.trunk = trunk
        self.register_buffer("seeds", torch.randperm(dataset_size)[:classes].sort().values)  # class k: seeds[k]
        self.classifier = nn.Linear(feature_dim(trunk), classes)

    def surrogate_labels(self, index: torch.Tensor) -> torch.Tensor:
        """Each dataset index's surrogate class (its position among the sorted seeds); -1 for other images."""
        position = torch.searchsorted(self.seeds, index).clamp_max(len(self.seeds) - 1)
        return torch.where(self.seeds[position] == index, position, torch.full_like(position, -1))

    def training_indices(self) -> torch.Tensor:
        return self.seeds

    def forward(self, views: tuple[torch.Tensor, ...], index: torch.Tensor) -> torch.Tensor:
        labels = self.surrogate_labels(index).repeat(len(views))
        logits = self.classifier(pooled(self.trunk, torch.cat(views)))
        seed = labels >= 0
        losses = F.cross_entropy(logits.float(), labels.clamp_min(0), reduction="none")
        return (losses * seed).sum() / seed.sum().clamp_min(1)


@RECIPES.register("exemplar")
class Exemplar(Recipe):
    """Exemplar-CNN: classify heavy augmentations of seed images, one class per seed (Dosovitskiy et al., NIPS 2014)."""

    name = "exemplar"
    paper = ("Dosovitskiy, Springenberg, Riedmiller, Brox. Discriminative Unsupervised Feature Learning with "
             "Convolutional Neural Networks. NIPS 2014")
    Config = ExemplarConfig

    def build(self, trunk: Backbone, config: ExemplarConfig, dataset_size: int) -> ExemplarModel:
        return ExemplarModel(trunk, config, dataset_size)

    def views(self, config: ExemplarConfig, input_spec: InputSpec, dataset: Any) -> Views:
        """`samples` surrogate augmentations of the image, their contrast-1 directions from the training split."""
        mean, components = pixel_statistics(dataset.open_split(dataset.train_split, None), input_spec.size)
        augment = SurrogateAugmentation(input_spec.size, input_spec.mean, input_spec.std, mean, components)
        return Views(*[augment] * config.samples)
